"""The compute agent's footprint on the lab: RSS, unique memory and CPU while idle.

Runs the real daemon (``novaconsole --plugin compute-agent``) on the lab's libvirtd
(``qemu:///system``, read-only, with whatever guests the lab runs) and the real RabbitMQ
(a throw-away vhost), waits for its start inventory, then measures for ``--duration``
seconds: RSS (``VmRSS``) and unique memory (USS: private clean + dirty pages of
``/proc/PID/smaps_rollup``) at the start and the end, and CPU time (utime + stime) over
the window as a share of one core. Goals (issue 7): RSS <= 50 MiB, <= 0.5% of a core idle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from bench._common import machine_facts, write_section

RSS_GOAL_MIB = 50.0
CPU_GOAL_PERCENT = 0.5


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=True)


def memory_kib(pid: int) -> tuple[int, int]:
    """(RSS, USS) of ``pid`` in KiB."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    uss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            uss += int(line.split()[1])
    return rss, uss


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure; print the table; ``--write`` records it in bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench agent_footprint")
    parser.add_argument("--duration", type=float, default=60.0, help="idle window (s)")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="heartbeat interval (s)")
    parser.add_argument("--uri", default="qemu:///system", help="libvirt URI")
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(list(argv) if argv is not None else None)

    from novaconsole.agentbus.keys import generate_key_files

    vhost = f"novaconsole-bench-agent-{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    _rabbitmqctl("add_vhost", vhost)
    proc: subprocess.Popen[str] | None = None
    try:
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        generate_key_files(tmp / "agent", "bench")
        generate_key_files(tmp / "console", "console")
        (tmp / "trusted").mkdir()
        shutil.copy(tmp / "console" / "console.pub", tmp / "trusted" / "console.pub")
        config = tmp / "agent.toml"
        config.write_text(
            f'host = "bench"\nlibvirt_uri = "{args.uri}"\n'
            f"heartbeat_interval = {args.heartbeat}\n"
            f'[bus]\nvhost = "{vhost}"\n'
            f'[keys]\nsigning_key = "{tmp / "agent" / "bench.key"}"\n'
            f'trusted = "{tmp / "trusted"}"\n'
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "novaconsole",
                "--plugin",
                "compute-agent",
                "--config",
                str(config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[str] = []
        started = threading.Event()

        def read() -> None:
            assert proc is not None
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line.rstrip())
                if "inventory (start)" in line:
                    started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(60):
            print(
                "agent did not send its start inventory:\n" + "\n".join(lines[-10:]),
                file=sys.stderr,
            )
            return 1
        domains = next(line for line in lines if "inventory (start)" in line).split(": ", 1)[1]
        time.sleep(3.0)  # settle after start-up
        rss0, uss0 = memory_kib(proc.pid)
        cpu0, t0 = cpu_seconds(proc.pid), time.monotonic()
        time.sleep(args.duration)
        cpu1, t1 = cpu_seconds(proc.pid), time.monotonic()
        rss1, uss1 = memory_kib(proc.pid)
        threads = len(os.listdir(f"/proc/{proc.pid}/task"))
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _rabbitmqctl("delete_vhost", vhost)
        shutil.rmtree(tmp, ignore_errors=True)

    cpu_percent = 100.0 * (cpu1 - cpu0) / (t1 - t0)
    rss_mib = max(rss0, rss1) / 1024
    rows = [
        ("RSS at start of window (MiB)", f"{rss0 / 1024:.1f}"),
        ("RSS at end of window (MiB)", f"{rss1 / 1024:.1f}"),
        ("USS at start of window (MiB)", f"{uss0 / 1024:.1f}"),
        ("USS at end of window (MiB)", f"{uss1 / 1024:.1f}"),
        (f"CPU over {t1 - t0:.0f} s idle (% of one core)", f"{cpu_percent:.2f}"),
        ("threads", str(threads)),
    ]
    table = "| what | value |\n|---|---:|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)
    verdict = (
        f"RSS {rss_mib:.1f} MiB (goal <= {RSS_GOAL_MIB:g}: {'met' if rss_mib <= RSS_GOAL_MIB else 'not met'}); "
        f"CPU {cpu_percent:.2f}% (goal <= {CPU_GOAL_PERCENT:g}%: "
        f"{'met' if cpu_percent <= CPU_GOAL_PERCENT else 'not met'})."
    )
    text = "\n".join(
        [
            "## Compute agent footprint",
            "",
            "Command: `python -m bench agent_footprint"
            + (f" --duration {args.duration:g}" if args.duration != 60.0 else "")
            + (" --write" if args.write else "")
            + "`  ",
            machine_facts() + "  ",
            f"The daemon on `{args.uri}` (read-only; {domains}), heartbeat every "
            f"{args.heartbeat:g} s, on the real RabbitMQ (a throw-away vhost); measured after "
            "its start inventory and 3 s to settle.",
            "",
            table,
            verdict,
        ]
    )
    print(text)
    if args.write:
        write_section("Compute agent footprint", text)
    return 0
