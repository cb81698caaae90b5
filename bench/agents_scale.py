"""N simulated compute agents heartbeating to one console: its CPU, memory, filter keystrokes.

    python -m bench agents_scale [--agents 1000] [--seconds 60] [--events 20] [--write]

Real pieces: RabbitMQ on 127.0.0.1 (a vhost of the run's own), one Ed25519 key per agent
enrolled in the console's keyring, every message sealed with its agent's key, and the
console's real feed (``open_agent_feed``: ConsoleBus, verification, AgentDirectory) under
the real app, headless, on the Agents pane. Simulated: the agents themselves, one process
(a subprocess of this one, so its CPU is not the console's) that publishes each agent's
inventory once, a heartbeat every ``--interval`` seconds (10) and ``--events`` lifecycle
events per second across all agents, straight to the agents' exchange as the AgentBus
would (same envelopes and routing keys; one connection instead of N).

Measured in the console process while they run: CPU (user+system over the window, as a
share of one core), resident memory, how many messages were verified and folded, and the
Agents-pane filter keystroke (key sent to painted frame, as ``console_synthetic``).
The broker's CPU over the same window is read from /proc for ``beam.smp``.

Goal: filter keystroke p95 < 50 ms with 1,000 agents.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GOAL_MS = 50.0
#: Kept with every rewrite: on this shared machine the figures move with the load.
HISTORY = (
    "History (2026-12-02, load average 5-8 throughout: four other engineers' tests were "
    "running): p95 with agents reporting / floor = 1613/163 ms before live rebuilds were "
    "single-flight (they piled up and starved the UI of the GIL), then 633/176, 519/334, "
    "142/286 and 663/118 ms. A py-spy profile of the console during a run: the bus's I/O "
    "thread ~29% of samples (Ed25519 verification ~13%), live row rebuilds ~21% (the "
    "directory snapshot half of it, since cut by keeping each agent's sorted domains), "
    "Textual's compositor ~20%; after that change 305/154 ms. "
    "2026-12-02 afternoon (load 2-5, other helpers' suites running): the floor itself was "
    "the pane's frames, not the bus. py-spy over the floor: the table asked Textual for "
    "rich_style and its content region once per line (65-85% of its line rendering), "
    "repainted itself on keystrokes that left the visible lines unchanged, and Textual's "
    "ScrollView repainted the vertical scrollbar on every layout pass (the prompt's Input "
    "asks for one per keystroke), the dearest lines of a frame; the 1 s tick re-posted "
    "1,000 identical rows. Fixed those (UI CPU per keystroke 38 -> 11 ms) and live "
    "rebuilds now re-format only changed cells and post nothing when nothing shown "
    "changed: p95 live/floor 84/54 ms (py-spy attached), 48/53, 110/37, 127/58 "
    "(py-spy --gil), 76/40 and 83/40 (the run above); four runs at load 5-14 comparing "
    "sys.setswitchinterval 1 ms with 5 ms gave 142-235/92-219 with no difference beyond the "
    "noise (not kept). Under py-spy --gil in "
    "the live window the GIL went ~40% to the UI, ~35% to the bus thread (pika's framing, "
    "envelope parsing; Ed25519 itself runs in OpenSSL without the GIL), ~20% to live "
    "rebuilds (directory snapshot and update_table, two full rebuilds a second). The "
    "goal is met by the floor, not yet with agents reporting."
)
TYPED = "host-01"
PASSWORD_ENV = "NOVACONSOLE_BENCH_BUS_PASSWORD"


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def beam_cpu_seconds() -> float | None:
    """User+system CPU seconds of the RabbitMQ node (``beam.smp``), or None if not found."""
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() != "beam.smp":
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / ticks
    return None


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, timeout=60, check=True)


def make_keys(root: Path, agents: int) -> list[str]:
    from novaconsole.agentbus.keys import generate_key_files

    hosts = [f"host-{n:04d}" for n in range(agents)]
    generate_key_files(root / "console", "console")
    trusted = root / "agent-keys"
    trusted.mkdir()
    for host in hosts:
        generate_key_files(root / "agents", host)
        (trusted / f"{host}.pub").write_bytes((root / "agents" / f"{host}.pub").read_bytes())
    return hosts


def write_config(root: Path, vhost: str) -> Path:
    path = root / "agents.toml"
    path.write_text(
        "[bus]\n"
        'urls = ["amqp://127.0.0.1:5672"]\n'
        f'vhost = "{vhost}"\nuser = "guest"\npassword_env = "{PASSWORD_ENV}"\n'
        'console_name = "bench"\n'
        "[keys]\n"
        f'signing_key = "{root / "console" / "console.key"}"\n'
        f'trusted = "{root / "agent-keys"}"\n'
    )
    return path


# -- the simulator (a subprocess) ------------------------------------------------------


def simulate(
    root: Path, vhost: str, agents: int, seconds: float, interval: float, events: float
) -> int:
    """Publish as ``agents`` agents for ``seconds``; prints how many messages it sent."""
    import pika

    from novaconsole.agentbus import (
        Domain,
        DomainEvent,
        Heartbeat,
        HostFacts,
        Inventory,
        ServiceStatus,
        SigningKey,
        seal,
    )
    from novaconsole.agentbus.bus import EXCHANGE_AGENTS

    hosts = [f"host-{n:04d}" for n in range(agents)]
    keys = {h: SigningKey.load(root / "agents" / f"{h}.key") for h in hosts}
    boot = {h: uuid.uuid4().hex for h in hosts}
    seq = dict.fromkeys(hosts, 0)
    domains = {h: [f"{n:08d}-0000-4000-8000-{h[-4:]:0>12}" for n in range(4)] for h in hosts}
    params = pika.ConnectionParameters(
        "127.0.0.1", 5672, vhost, pika.PlainCredentials("guest", os.environ[PASSWORD_ENV])
    )
    conn = pika.BlockingConnection(params)
    channel = conn.channel()
    channel.exchange_declare(EXCHANGE_AGENTS, exchange_type="topic", durable=True)
    sent = 0

    def publish(host: str, kind: str, body: dict[str, Any]) -> None:
        nonlocal sent
        if kind != "heartbeat":
            seq[host] += 1
        data, _ = seal(keys[host], kind, host, body, seq=seq[host], boot=boot[host])
        channel.basic_publish(EXCHANGE_AGENTS, f"{kind}.{host}", data)
        sent += 1

    services = [ServiceStatus("nova-compute", True, 1, 0.0)]
    for host in hosts:
        inventory = Inventory(
            host=HostFacts(hostname=host, nova_host=host),
            domains=[Domain(u, f"instance-{i}", "running") for i, u in enumerate(domains[host])],
            services=services,
        )
        publish(host, "inventory", inventory.to_dict())
    start = time.monotonic()
    next_beat = dict.fromkeys(hosts, start)
    event_gap = 1.0 / events if events > 0 else float("inf")
    next_event = start
    turn = 0
    while (now := time.monotonic()) - start < seconds:
        for n, host in enumerate(hosts):
            if next_beat[host] <= now:
                # Spread the agents over the interval, as independent daemons would be.
                next_beat[host] = (
                    now + interval
                    if next_beat[host] != start
                    else start + interval * n / len(hosts)
                )
                beat = Heartbeat("bench", start, interval, True, "qemu:///system", 4, services)
                publish(host, "heartbeat", beat.to_dict())
        while next_event <= now:
            host = hosts[turn % len(hosts)]
            turn += 1
            state = "shut off" if turn % 2 else "running"
            event = DomainEvent(
                domains[host][0],
                "instance-0",
                "lifecycle",
                "stopped" if turn % 2 else "started",
                "",
                now,
                state,
            )
            publish(host, "event", event.to_dict())
            next_event += event_gap
        conn.process_data_events(time_limit=0.02)
    conn.close()
    print(sent)
    return 0


# -- the console -----------------------------------------------------------------------


def _stats(values: Sequence[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, round(0.95 * len(ordered)) - 1)]
    return f"{statistics.median(values):.1f} | {p95:.1f} | {max(values):.1f} | {len(values)}"


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


async def _typing(pilot: Any, pane: Any, rounds: int, res: dict[str, Any]) -> list[float]:
    """Per keystroke: key sent to the first painted frame showing the filtered table."""
    from textual import events

    app = pilot.app
    screen = app.screen
    frames: list[tuple[float, str]] = []
    original = screen._compositor_refresh

    def painted() -> None:
        original()
        frames.append((time.perf_counter(), pane.filter_text))

    screen._compositor_refresh = painted
    press_ms: list[float] = []
    try:
        for _ in range(rounds):
            await pilot.press("slash", "ctrl+u")
            for count in range(1, len(TYPED) + 1):
                expected = TYPED[:count]
                frames.clear()
                start = time.perf_counter()
                app.post_message(events.Key(TYPED[count - 1], TYPED[count - 1]))
                while not any(text == expected for _, text in frames):
                    await asyncio.sleep(0.0005)
                    if time.perf_counter() - start > 10:
                        raise RuntimeError(f"no frame showed the filter {expected!r}")
                done = next(t for t, text in frames if text == expected)
                press_ms.append((done - start) * 1000)
            res["matches"] = len(pane.table.shown)
            await pilot.press("enter", "escape")
            await asyncio.sleep(1.0)  # let live updates run between rounds
    finally:
        screen._compositor_refresh = original
    return press_ms


async def _console(
    agents: int, command: list[str], env: dict[str, str], rounds: int
) -> dict[str, Any]:
    from bench.console_results import tests_ui_on_path

    tests_ui_on_path()
    from console_helpers import frozen_clock, settle
    from fake_source import FakeCloudSource

    from novaconsole.agents.feed import open_agent_feed
    from novaconsole.ui.app import make_app
    from novaconsole.ui.settings import ConsoleSettings

    res: dict[str, Any] = {"rss_before": rss_mib()}
    feed = open_agent_feed()
    source = FakeCloudSource(name="bench")
    app = make_app(connect=lambda name: source, settings=ConsoleSettings(refresh=0),
                   clock=frozen_clock, remember_theme=False, agent_feed=feed)  # fmt: skip
    try:
        async with app.run_test(size=(160, 50)) as pilot:
            await settle(pilot)
            await pilot.press("6")
            await settle(pilot)
            pane = app.pane("agents")
            # The floor: the same typing over the same rows (every enrolled agent, all
            # stale) before any agent reports.
            res["floor"] = await _typing(pilot, pane, rounds, res)
            simulator = subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE)
            res["simulator"] = simulator
            deadline = time.monotonic() + 120
            while sum(s.inventories > 0 for s in feed.states()) < agents:
                if time.monotonic() > deadline or simulator.poll() is not None:
                    raise RuntimeError("the agents' inventories did not all arrive")
                await asyncio.sleep(0.2)
            while len(pane.table.data.rows) < agents:
                await asyncio.sleep(0.1)
            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            wall0, beam0 = time.monotonic(), beam_cpu_seconds()
            folded0 = sum(s.messages for s in feed.states())
            res["press"] = await _typing(pilot, pane, rounds, res)
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            wall1, beam1 = time.monotonic(), beam_cpu_seconds()
            res["window_s"] = wall1 - wall0
            res["cpu_pct"] = (
                100
                * ((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime))
                / (wall1 - wall0)
            )
            res["beam_pct"] = (
                None if beam0 is None or beam1 is None else 100 * (beam1 - beam0) / (wall1 - wall0)
            )
            res["folded"] = sum(s.messages for s in feed.states()) - folded0
            res["rss_loaded"] = rss_mib()
            res["stale"] = sum(s.stale for s in feed.states())
    finally:
        feed.stop()
    return res


def report(res: dict[str, Any], argv: Sequence[str], args: argparse.Namespace) -> str:
    from bench.console_results import machine_line

    verdict = "met" if _p95(res["press"]) < GOAL_MS else "NOT met"
    beam = "not found" if res["beam_pct"] is None else f"{res['beam_pct']:.0f}% of one core"
    rate = res["folded"] / res["window_s"]
    return "\n".join(
        [
            *machine_line(argv),
            "",
            f"{args.agents} simulated agents (one process, real Ed25519 signatures, the real "
            f"broker): a heartbeat each every {args.interval:g} s and {args.events:g} lifecycle "
            f"events/s across them; the console on the Agents pane with all {args.agents} rows. "
            f"Typing `{TYPED}` into its filter ({len(TYPED)} keystrokes x {args.rounds} rounds; "
            f"the last keeps {res['matches']} rows).",
            "",
            "| Agents-pane filter keystroke (ms) | median | p95 | max | n |",
            "|---|---:|---:|---:|---:|",
            f"| key sent to painted frame, agents reporting | {_stats(res['press'])} |",
            f"| same rows, before any agent reported (floor) | {_stats(res['floor'])} |",
            "",
            f"Goal p95 < {GOAL_MS:.0f} ms: **{verdict}**. Load average when done: "
            f"{os.getloadavg()[0]:.1f} (a shared 2-core machine: compare with the floor).",
            "",
            f"Over the {res['window_s']:.0f} s window the console verified and folded "
            f"{res['folded']} messages ({rate:.0f}/s); console CPU {res['cpu_pct']:.0f}% of one "
            f"core (bus threads, directory, live redraws and the typing together); broker "
            f"(beam.smp) {beam}. Memory (VmRSS): {res['rss_before']:.0f} MiB before the console "
            f"started, {res['rss_loaded']:.0f} MiB with {args.agents} agents in the directory "
            f"and pane. Stale agents at the end: {res['stale']}.",
            "",
            HISTORY,
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench agents_scale", description=__doc__)
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=90.0, help="how long agents report")
    parser.add_argument("--interval", type=float, default=10.0, help="heartbeat interval (s)")
    parser.add_argument("--events", type=float, default=20.0, help="events/s, all agents")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    parser.add_argument("--simulate", nargs=2, metavar=("ROOT", "VHOST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.simulate:
        root, vhost = args.simulate
        return simulate(Path(root), vhost, args.agents, args.seconds, args.interval, args.events)
    vhost = f"novaconsole-bench-agents-{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="novaconsole-bench-agents-") as tmp:
        root = Path(tmp)
        make_keys(root, args.agents)
        config = write_config(root, vhost)
        rabbitmqctl("add_vhost", vhost)
        env = {**os.environ, PASSWORD_ENV: "guest", "NOVACONSOLE_AGENTS_CONFIG": str(config),
               "XDG_CONFIG_HOME": str(root / "config"), "XDG_STATE_HOME": str(root / "state")}  # fmt: skip
        os.environ.update({k: env[k] for k in (PASSWORD_ENV, "NOVACONSOLE_AGENTS_CONFIG",
                                               "XDG_CONFIG_HOME", "XDG_STATE_HOME")})  # fmt: skip
        try:
            rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
            command = [sys.executable, "-m", "bench", "agents_scale", "--agents", str(args.agents),
                       "--seconds", str(args.seconds), "--interval", str(args.interval),
                       "--events", str(args.events), "--simulate", str(root), vhost]  # fmt: skip
            # The console declares its queues first, so nothing the simulator sends is lost.
            res = asyncio.run(_with_simulator(args, command, env))
        finally:
            rabbitmqctl("delete_vhost", vhost)
    text = report(res, ["python", "-m", "bench", "agents_scale", *(argv or [])], args)
    print(text)
    if args.write:
        from bench.console_results import write_subsection

        write_subsection("Agents: 1,000 simulated agents, one console", text)
    return 0


async def _with_simulator(
    args: argparse.Namespace, command: list[str], env: dict[str, str]
) -> dict[str, Any]:
    """The console first (its durable queue exists before any agent publishes), then agents."""
    from novaconsole.agentbus.bus import ConsoleBus
    from novaconsole.agentbus.settings import BusSettings

    with ConsoleBus(BusSettings.load(Path(env["NOVACONSOLE_AGENTS_CONFIG"]))) as bus:
        bus.start(lambda message: None, wait=10)
    res: dict[str, Any] = {}
    try:
        res = await _console(args.agents, command, env, args.rounds)
    finally:
        simulator = res.get("simulator")
        if isinstance(simulator, subprocess.Popen):
            simulator.kill()
            simulator.wait()
    return res


if __name__ == "__main__":
    sys.exit(main())
