"""The node around the hypervisor: its services (from /proc) and nova-compute's errors.

Services are found by process, not through their keeper, so the same code answers under
systemd, supervisord or an operator's own runit: a process is the service when its
executable's base name, or that of the script its Python runs, is one of the names the
config lists. "Since when" is the process's start time (``/proc/PID/stat`` field 22, in
clock ticks after boot).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable
from pathlib import Path

from novaconsole.agentbus.messages import ServiceStatus
from novaconsole_agent.config import ServiceConfig

_PROC = Path("/proc")


def _boot_time(proc: Path) -> float:
    try:
        for line in (proc / "stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def _start_time(proc: Path, pid: int, boot: float) -> float | None:
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        ticks = int(fields[19])
    except (IndexError, ValueError):
        return None
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _argv(proc: Path, pid: int) -> list[str]:
    try:
        raw = (proc / str(pid) / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def _is_service(argv: list[str], names: Iterable[str]) -> bool:
    if not argv:
        return False
    wanted = set(names)
    if os.path.basename(argv[0]) in wanted:
        return True
    # python .../bin/nova-compute --config-file ...: the script is the first non-option.
    if os.path.basename(argv[0]).startswith("python"):
        script = next((a for a in argv[1:] if not a.startswith("-")), "")
        return os.path.basename(script) in wanted
    return False


def service_states(services: Iterable[ServiceConfig], proc: Path = _PROC) -> list[ServiceStatus]:
    """Each configured service: running (the oldest matching process) or not."""
    services = list(services)
    boot = _boot_time(proc)
    found: dict[str, list[tuple[float, int]]] = {s.name: [] for s in services}
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == me:
            continue
        argv = _argv(proc, pid)
        for service in services:
            if _is_service(argv, service.match):
                since = _start_time(proc, pid, boot)
                if since is not None:
                    found[service.name].append((since, pid))
    out = []
    for service in services:
        procs = sorted(found[service.name])
        if procs:
            since, pid = procs[0]
            out.append(ServiceStatus(service.name, True, pid, round(since, 2)))
        else:
            out.append(ServiceStatus(service.name, False))
    return out


def tail_lines(path: Path, count: int, *, max_bytes: int = 512 * 1024) -> list[str]:
    """The last ``count`` lines of a file (reads at most its last ``max_bytes``)."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - max_bytes))
        data = fh.read()
    lines = data.decode("utf-8", "replace").splitlines()
    if size > max_bytes and lines:
        lines = lines[1:]  # the first one is cut
    return lines[-count:] if count > 0 else []


def recent_errors(path: Path | None, count: int = 10) -> list[str]:
    """The last ``count`` ERROR lines of an oslo.log file (none if it is missing)."""
    if path is None:
        return []
    try:
        lines = tail_lines(path, 5000)
    except OSError:
        return []
    errors: deque[str] = deque(maxlen=count)
    for line in lines:
        # oslo.log: "2026-12-01 10:00:00.123 4242 ERROR nova.compute.manager [...] ..."
        parts = line.split(None, 4)
        if len(parts) >= 4 and parts[3] in ("ERROR", "CRITICAL"):
            errors.append(line[:500])
    return list(errors)
