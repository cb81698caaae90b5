"""The compute agent's footprint on the lab: RSS, unique memory and CPU while idle.

Runs the real daemon (``novaconsole --plugin compute-agent``) on the lab's libvirtd
(``qemu:///system``, read-only, with whatever guests the lab runs) and the real RabbitMQ
(a throw-away vhost), waits for its start inventory, then measures for ``--duration``
seconds: RSS (``VmRSS``) and unique memory (USS: private clean + dirty pages of
``/proc/PID/smaps_rollup``) at the start and the end, and CPU time (utime + stime) over
the window as a share of one core. Goals (issue 7): RSS <= 50 MiB, <= 0.5% of a core idle.

The daemon runs with the environment its service gets (``AGENT_ENV`` of the agent's
provisioning) and may cache bytecode, after one warm-up import, as on a hypervisor:
PYTHONDONTWRITEBYTECODE (set in some sandboxes) would have it compile libvirt.py's
400 KB of source at every start, and the compiler's memory stays in the RSS.
``--python`` runs it with another interpreter (e.g. the lab's agent venv) on this
checkout's sources.
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


def _daemon_env(python: str) -> dict[str, str]:
    from novaconsole_agent.provision import AGENT_ENV

    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(AGENT_ENV)
    if python != sys.executable:
        root = Path(__file__).resolve().parent.parent
        env["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "plugins")])
    return env


#: What the daemon imports: one warm-up import lets Python cache their bytecode.
WARM_UP = (
    "import novaconsole.cli, novaconsole_agent.daemon, novaconsole_agent.commands, "
    "novaconsole.agentbus.bus"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure; print the table; ``--write`` records it in bench/RESULTS.md."""
    parser = argparse.ArgumentParser(prog="python -m bench agent_footprint")
    parser.add_argument("--duration", type=float, default=60.0, help="idle window (s)")
    parser.add_argument("--heartbeat", type=float, default=10.0, help="heartbeat interval (s)")
    parser.add_argument("--uri", default="qemu:///system", help="libvirt URI")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the daemon")
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
        env = _daemon_env(args.python)
        subprocess.run([args.python, "-P", "-c", WARM_UP], env=env, check=True)
        proc = subprocess.Popen(
            [
                args.python,
                "-P",
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
            env=env,
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

    from novaconsole_agent.provision import AGENT_ENV

    env_note = dict(AGENT_ENV)
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
            + (f" --python {args.python}" if args.python != sys.executable else "")
            + (" --write" if args.write else "")
            + "`  ",
            machine_facts() + "  ",
            f"The daemon on `{args.uri}` (read-only; {domains}), heartbeat every "
            f"{args.heartbeat:g} s, on the real RabbitMQ (a throw-away vhost); measured after "
            "its start inventory and 3 s to settle. Interpreter "
            f"`{args.python}`; environment {' '.join(f'{k}={v}' for k, v in env_note.items())}, "
            "bytecode cached after one warm-up import.",
            "",
            table,
            verdict,
        ]
    )
    print(text)
    if args.write:
        write_section("Compute agent footprint", text)
    return 0
