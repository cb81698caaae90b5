"""Keeping services running: supervisord (from PyPI) where systemd does not run.

A :class:`ServiceSpec` says how to run one service; :class:`Supervisor` writes a
supervisord configuration for a set of them (one log file per service), starts
supervisord if needed and applies changes with ``reread``/``update`` so that re-running
restarts only what changed. Stopping sends each program its stop signal and SIGKILL
after a grace period (nova-compute with libvirt ignores SIGTERM), then checks by pid
that nothing is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from novaconsole.errors import NovaconsoleError
from novaconsole.fileutil import atomic_write


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one long-lived service."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    #: TCP port the service listens on (for health and "port taken" checks), if any.
    port: int | None = None
    #: Signal that asks it to stop, and how long to wait before SIGKILL.
    stop_signal: str = "TERM"
    stop_wait: int = 10
    directory: str | None = None
    #: Files whose change needs a restart (besides configuration the caller watches).
    watch: tuple[Path, ...] = ()


@dataclass(frozen=True)
class ServiceState:
    """What supervisord says of one program."""

    name: str
    state: str  # RUNNING, STARTING, BACKOFF, FATAL, STOPPED, EXITED, ...
    pid: int | None


_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_STATUS = re.compile(r"^(?P<name>\S+)\s+(?P<state>[A-Z]+)\s*(?:pid (?P<pid>\d+))?")


def _quote(value: str) -> str:
    # supervisord's config uses %-interpolation and its own quoting for environment values.
    return '"' + value.replace("%", "%%").replace('"', '\\"') + '"'


def render_program(spec: ServiceSpec, log_dir: Path) -> str:
    """The ``[program:NAME]`` section for one service."""
    if not _NAME.match(spec.name):
        raise NovaconsoleError(f"invalid service name {spec.name!r}")
    command = " ".join(
        _quote(a) if (" " in a or '"' in a) else a.replace("%", "%%") for a in spec.argv
    )
    lines = [
        f"[program:{spec.name}]",
        f"command={command}",
        "autostart=true",
        "autorestart=true",
        "startsecs=3",
        "startretries=3",
        f"stopsignal={spec.stop_signal}",
        f"stopwaitsecs={spec.stop_wait}",
        "stopasgroup=true",
        "killasgroup=true",
        "redirect_stderr=true",
        f"stdout_logfile={log_dir / (spec.name + '.log')}",
        "stdout_logfile_maxbytes=20MB",
        "stdout_logfile_backups=2",
    ]
    if spec.directory:
        lines.append(f"directory={spec.directory}")
    if spec.env:
        env = ",".join(f"{k}={_quote(v)}" for k, v in sorted(spec.env.items()))
        lines.append(f"environment={env}")
    return "\n".join(lines) + "\n"


class Supervisor:
    """A supervisord instance that owns a set of services under ``state_dir``."""

    def __init__(self, state_dir: Path, bin_dir: Path) -> None:
        self.state_dir = state_dir
        self.bin_dir = bin_dir
        self.conf = state_dir / "supervisord.conf"
        self.socket = state_dir / "supervisor.sock"
        self.pidfile = state_dir / "supervisord.pid"
        self.log_dir = state_dir / "logs"

    # -- configuration ---------------------------------------------------------------

    @property
    def programs_dir(self) -> Path:
        """One ``NAME.conf`` per program, so several owners can add services independently."""
        return self.state_dir / "programs.d"

    def render_main(self) -> str:
        return (
            "; written by novaconsole: programs live in programs.d/, one log file each\n"
            "[unix_http_server]\n"
            f"file={self.socket}\n"
            "chmod=0700\n\n"
            "[supervisord]\n"
            f"logfile={self.log_dir / 'supervisord.log'}\n"
            f"pidfile={self.pidfile}\n"
            f"childlogdir={self.log_dir}\n"
            "nodaemon=false\n"
            "minfds=4096\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            "[supervisorctl]\n"
            f"serverurl=unix://{self.socket}\n\n"
            "[include]\n"
            f"files = {self.programs_dir}/*.conf\n"
        )

    def pending(self, specs: Iterable[ServiceSpec]) -> list[str]:
        """Names of programs whose configuration differs from ``specs`` (or is missing)."""
        changed = []
        for spec in specs:
            path = self.programs_dir / f"{spec.name}.conf"
            try:
                current = path.read_text()
            except FileNotFoundError:
                current = None
            if current != render_program(spec, self.log_dir):
                changed.append(spec.name)
        return changed

    def install(self, specs: Iterable[ServiceSpec]) -> list[str]:
        """Write the main configuration and each program's file; return changed programs."""
        specs = list(specs)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.programs_dir.mkdir(parents=True, exist_ok=True)
        main = self.render_main()
        try:
            same = self.conf.read_text() == main
        except FileNotFoundError:
            same = False
        if not same:
            atomic_write(self.conf, main, mode=0o600)
        changed = self.pending(specs)
        for spec in specs:
            if spec.name in changed:
                atomic_write(
                    self.programs_dir / f"{spec.name}.conf",
                    render_program(spec, self.log_dir),
                    mode=0o600,
                )
        return changed

    # -- control ---------------------------------------------------------------------

    def daemon_pid(self) -> int | None:
        """supervisord's pid if it is alive."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def ctl(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            [str(self.bin_dir / "supervisorctl"), "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            check=False,
        )
        # supervisorctl exits 3 when some program is not running; that is data, not failure.
        if check and proc.returncode not in (0, 3):
            raise NovaconsoleError(
                f"supervisorctl {' '.join(args)} failed (exit {proc.returncode}) for {self.conf}: "
                f"{' '.join((proc.stdout + proc.stderr).split())[:200]}"
            )
        return proc.stdout

    def start_daemon(self) -> None:
        if self.daemon_pid() is not None:
            return
        self.log_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(
            [str(self.bin_dir / "supervisord"), "-c", str(self.conf)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise NovaconsoleError(
                f"supervisord failed to start with {self.conf}: "
                f"{' '.join((proc.stdout + proc.stderr).split())[:200]}"
            )
        deadline = time.monotonic() + 10
        while not self.socket.exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def apply(self, restart: Iterable[str] = ()) -> None:
        """Start supervisord, or make a running one pick up configuration changes.

        ``update`` restarts programs whose own file changed; ``restart`` names programs to
        restart besides (their configuration files changed, not their command line).
        """
        if self.daemon_pid() is None:
            self.start_daemon()
            return
        self.ctl("reread")
        self.ctl("update")
        names = list(restart)
        if names:
            self.ctl("restart", *names)

    def status(self) -> dict[str, ServiceState]:
        if self.daemon_pid() is None:
            return {}
        states: dict[str, ServiceState] = {}
        for line in self.ctl("status", check=False).splitlines():
            m = _STATUS.match(line)
            if m:
                pid = int(m["pid"]) if m["pid"] else None
                states[m["name"]] = ServiceState(m["name"], m["state"], pid)
        return states

    def wait_running(self, names: Iterable[str], timeout: float) -> dict[str, ServiceState]:
        """Wait until every named program is RUNNING; raise naming the first that is not."""
        wanted = list(names)
        deadline = time.monotonic() + timeout
        while True:
            states = self.status()
            bad = [n for n in wanted if states.get(n) is None or states[n].state != "RUNNING"]
            if not bad:
                return states
            fatal = [n for n in bad if n in states and states[n].state in ("FATAL", "EXITED")]
            if fatal or time.monotonic() > deadline:
                name = (fatal or bad)[0]
                state = states[name].state if name in states else "missing"
                raise NovaconsoleError(
                    f"service {name} is {state}, not RUNNING; see {self.log_dir / (name + '.log')}"
                )
            time.sleep(0.5)

    def stop_all(self, timeout: float = 60.0) -> list[int]:
        """Stop every program and supervisord; SIGKILL leftovers. Returns pids still alive."""
        pids = [s.pid for s in self.status().values() if s.pid]
        daemon = self.daemon_pid()
        if daemon is not None:
            self.ctl("stop", "all", check=False)
            self.ctl("shutdown", check=False)
            pids.append(daemon)
        deadline = time.monotonic() + timeout
        alive = pids
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if _alive(p)]
            if alive:
                time.sleep(0.2)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        return [p for p in alive if _alive(p)]


WSGI_SHIM = """\
# Written by novaconsole. oslo.config parses sys.argv, so the WSGI server's own arguments
# would crash the app ("unrecognized arguments"): hide them before the app is imported.
import sys

sys.argv = sys.argv[:1]
{prelude}from {module} import application  # noqa: E402,F401
"""


def wsgi_service(
    name: str,
    *,
    module: str,
    port: int,
    bin_dir: Path,
    shim_dir: Path,
    env: Mapping[str, str],
    host: str = "127.0.0.1",
    workers: int = 1,
    threads: int = 4,
    timeout: int = 120,
    prelude: tuple[str, ...] = (),
) -> ServiceSpec:
    """A gunicorn-served WSGI API (``module`` exposes ``application``).

    Writes a small shim module into ``shim_dir`` that resets ``sys.argv`` before importing
    the application (after the ``prelude`` statements); gunicorn runs with
    ``--no-control-socket`` so several can share a host.
    """
    shim_name = "wsgi_" + name.replace("-", "_")
    shim = shim_dir / f"{shim_name}.py"
    text = WSGI_SHIM.format(
        module=module, prelude="".join(f"{line}  # noqa: E402\n" for line in prelude)
    )
    try:
        current = shim.read_text()
    except FileNotFoundError:
        current = None
    if current != text:
        atomic_write(shim, text, mode=0o644)
    argv = (
        str(bin_dir / "gunicorn"),
        "--no-control-socket",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--timeout",
        str(timeout),
        "--chdir",
        str(shim_dir),
        "--name",
        name,
        f"{shim_name}:application",
    )
    return ServiceSpec(name=name, argv=argv, env=dict(env), port=port, stop_wait=15, watch=(shim,))


def port_owner(host: str, port: int) -> bool:
    """True when something already accepts TCP connections on ``host:port``."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ")[-1][:1] != "Z"
    except OSError:
        return False
