"""Launch to four panes populated against the lab, vs the four ``openstack`` commands.

    python -m bench console_launch [--os-cloud novaconsole-lab] [--repeat 5] [--write]

Each round starts a fresh Python process that builds the console exactly as
``novaconsole`` does (``prefetching_connect``, then ``make_app``), runs it headless, and
reports as soon as the Services, Catalog, Images and Hypervisors panes all show rows; the
time counted is from spawning that process to its report (interpreter start, imports,
authentication and the API calls included). The peer is ``openstack --os-cloud CLOUD``
``compute service list``, ``catalog list``, ``image list``, ``hypervisor list`` run one
after another. One untimed warm-up round first. Goal: the console < 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench._common import CLI_COMMANDS, LAB_OPENSTACK

GOAL_S = 1.0
#: Kept with every rewrite: the figure moves with the machine's load.
HISTORY = (
    "History: 1.48 s (NOT met) on 2026-11-24 02:04, recorded while the machine was loaded "
    "(1-min load about 3: another lab's tests were running); 0.75 s at 04:10 the same day "
    "on an idle machine, with bytecode cached for both tools. The only start-up change in "
    "between is the compute plugin loading its step modules lazily (~10 ms), so most of the "
    "difference is load: read both figures as the range."
)
PANES = ("services", "catalog", "images", "hypervisors")


def child(cloud: str) -> None:
    """Run the console headless; print pane timings (s since process start) when populated."""
    started = time.perf_counter()
    from novaconsole.console import prefetching_connect
    from novaconsole.plugins import get_plugin_manager

    connect = prefetching_connect(cloud, 10.0)  # what `novaconsole` does first

    from novaconsole.ui.app import make_app
    from novaconsole.ui.settings import ConsoleSettings

    app = make_app(
        connect=connect,
        cloud=cloud,
        settings=ConsoleSettings(refresh=0),
        plugin_manager=get_plugin_manager(),
        remember_theme=False,
    )
    seen: dict[str, float] = {}

    async def watch(pilot: Any) -> None:
        while True:
            now = time.perf_counter() - started
            for name in PANES:
                pane = app.pane(name)
                if name not in seen and (pane.table.data.rows or pane.error):
                    seen[name] = now
                if pane.error:
                    seen[f"{name}-error"] = 1.0
            if "catalog-probed" not in seen and app.pane("catalog").loaded_at is not None:
                seen["catalog-probed"] = now
            if all(name in seen for name in PANES):
                print(json.dumps(seen), flush=True)
                os._exit(0)
            await asyncio.sleep(0.002)

    app.run(headless=True, size=(160, 40), auto_pilot=watch)


def _cli_round(openstack: str, cloud: str) -> list[float]:
    times = []
    for cmd in CLI_COMMANDS:
        start = time.perf_counter()
        proc = subprocess.run(
            [openstack, "--os-cloud", cloud, *cmd, "-f", "json"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"openstack {' '.join(cmd)} failed: {proc.stderr.strip()[-300:]}")
    return times


def _console_round(cloud: str) -> tuple[float, dict[str, float]]:
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", "--os-cloud", cloud],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    proc.wait(timeout=30)
    if not line:
        stderr = proc.stderr.read() if proc.stderr is not None else ""
        raise SystemExit(f"the console did not populate its panes: {stderr[-500:]}")
    timings: dict[str, float] = json.loads(line)
    errors = [k for k in timings if k.endswith("-error")]
    if errors:
        raise SystemExit(f"panes failed: {errors}")
    return elapsed, timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench console_launch", description=__doc__)
    parser.add_argument("--os-cloud", default="novaconsole-lab")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(argv)
    if args.child:
        child(args.os_cloud)
        return 0
    openstack = str(LAB_OPENSTACK) if LAB_OPENSTACK.exists() else shutil.which("openstack")
    if openstack is None:
        raise SystemExit("no openstack client found (lab venv or PATH)")
    _console_round(args.os_cloud)  # warm-up: page cache, token cache
    _cli_round(openstack, args.os_cloud)
    console, cli, inside = [], [], []
    for _ in range(args.repeat):
        elapsed, timings = _console_round(args.os_cloud)
        console.append(elapsed)
        inside.append(timings)
        cli.append(_cli_round(openstack, args.os_cloud))

    from bench.console_results import machine_line, write_subsection

    med = statistics.median
    cli_totals = [sum(r) for r in cli]
    command = ["python", "-m", "bench", "console_launch", *(argv or [])]
    verdict = "met" if med(console) < GOAL_S else "NOT met"
    lines = [
        *machine_line(command),
        f"Cloud `{args.os_cloud}` (the real lab); {args.repeat} rounds after one warm-up; "
        f"openstack: `{openstack}`.",
        "",
        "| what | median (s) | min (s) | max (s) |",
        "|---|---:|---:|---:|",
        f"| console: spawn to four panes populated | {med(console):.2f} | {min(console):.2f} | {max(console):.2f} |",
        f"| openstack, the 4 commands in total | {med(cli_totals):.2f} | {min(cli_totals):.2f} | {max(cli_totals):.2f} |",
    ]  # fmt: skip
    for i, cmd in enumerate(CLI_COMMANDS):
        values = [r[i] for r in cli]
        lines.append(
            f"| openstack {' '.join(cmd)} | {med(values):.2f} | {min(values):.2f} | {max(values):.2f} |"
        )
    lines += [
        "",
        "Inside the console process (median s since its start): "
        + ", ".join(f"{k} {med(t[k] for t in inside):.2f}" for k in (*PANES, "catalog-probed")),
        "",
        f"Goal < {GOAL_S:.0f} s: **{verdict}** (median {med(console):.2f} s vs "
        f"{med(cli_totals):.2f} s for the four CLI commands, {med(cli_totals) / med(console):.1f}x).",
        "",
        HISTORY,
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_subsection("Launch to four panes populated (lab)", text)
    return 0


if __name__ == "__main__":
    if "--child" not in sys.argv:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main(sys.argv[1:]))
