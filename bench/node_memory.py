"""Extra memory per compute node of the lab (``lab up --computes N``), against node 1.

Measures the running lab as it is: for each extra node, every process in the node's
namespaces (its supervisord, virtlogd, libvirtd, nova-compute with its privsep helpers;
no guests counted: ``qemu-system`` processes are left out), as RSS and as USS (private
pages, ``/proc/PID/smaps_rollup``). The peer in the same run is node 1's own compute
processes (virtlogd, libvirtd, nova-compute and privsep helpers, guests left out) under
the lab's supervisord. Needs a lab with ``--computes 2`` or more.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

from bench._common import machine_facts, write_section


def _memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, USS) in KiB of ``pid`` (0, 0 when it is gone)."""
    rss = uss = 0
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, value = line.partition(":")
            if key == "Rss":
                rss = int(value.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                uss += int(value.split()[0])
    except (OSError, ValueError):
        return 0, 0
    return rss, uss


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(") ", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo += parents.get(current, [])
    return found


def _total(pids: Sequence[int]) -> tuple[float, float, int]:
    rss = uss = 0
    counted = 0
    for pid in pids:
        if "qemu-system" in _cmdline(pid):
            continue
        r, u = _memory_kib(pid)
        rss, uss, counted = rss + r, uss + u, counted + (1 if r else 0)
    return rss / 1024, uss / 1024, counted


def main(argv: Sequence[str] | None = None) -> int:
    """Measure; print the table; ``--write`` records it in bench/RESULTS.md."""
    from novaconsole.lab.nodes import existing_nodes
    from novaconsole.lab.runner import default_config, keeper_for
    from novaconsole.lab.venvs import lab_venvs

    parser = argparse.ArgumentParser(prog="python -m bench node_memory")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(argv)
    config = default_config(None)
    nodes = existing_nodes(config)
    if not nodes:
        print("the lab has no extra compute node: lab up --computes 2 first")
        return 2
    bin_dir = lab_venvs(config.venvs_dir)["openstack"].bin
    rows = []
    states = keeper_for(config).status()
    peer: list[int] = []
    for name in ("virtlogd", "libvirtd", "nova-compute"):
        state = states.get(name)
        if state is not None and state.pid:
            peer += _children(state.pid)
    rss, uss, count = _total(peer)
    rows.append(("node 1 (machine's own): virtlogd, libvirtd, nova-compute", rss, uss, count))
    extra = []
    for node in nodes:
        daemon = node.keeper(bin_dir).manager_pid()
        if daemon is None:
            continue
        rss, uss, count = _total(_children(daemon))
        extra.append((rss, uss))
        rows.append((f"{node.name}: supervisord and everything it runs", rss, uss, count))
    lines = [
        "## compute node memory",
        "",
        "Command: `python -m bench node_memory --write`  ",
        machine_facts() + "  ",
        f"Lab with {1 + len(nodes)} compute nodes, measured as it runs (guests' QEMU left out; "
        "each extra node idle with no guest).",
        "",
        "| processes | RSS (MiB) | USS (MiB) | processes |",
        "|---|---:|---:|---:|",
        *(f"| {what} | {r:.0f} | {u:.0f} | {n} |" for what, r, u, n in rows),
        "",
    ]
    if extra:
        mean_rss = sum(r for r, _ in extra) / len(extra)
        mean_uss = sum(u for _, u in extra) / len(extra)
        lines.append(
            f"Extra memory per compute node: **{mean_rss:.0f} MiB RSS, {mean_uss:.0f} MiB "
            f"USS** (ratio to node 1's compute processes: {mean_rss / rows[0][1]:.2f}x RSS; "
            "the node adds its own supervisord)."
        )
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("compute node memory", text)
    return 0 if os.geteuid() == 0 else 1
