"""``novaconsole agents`` and ``novaconsole drift``: the agents' view, headless.

Both read every enrolled agent's latest heartbeat and inventory from the broker's
last-value queues (``ConsoleBus.latest``; the console's own durable queue is left alone),
fold them into an :class:`AgentDirectory`, and print a table or JSON. ``drift`` also
fetches Nova's live and deleted servers, concurrently with the bus read.

Exit codes: 0 nothing wrong, 1 a stale agent (``agents``) or drift / a host that could
not be judged (``drift``), 2 usage or connection error (one line).
"""

from __future__ import annotations

import argparse
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from novaconsole.errors import EXIT_CHECK_FAILED, EXIT_OK, ConfigError
from novaconsole.output import emit_json, render_table

if TYPE_CHECKING:  # the bus (pika, cryptography) loads when a command runs, not to parse
    from novaconsole.agents.feed import NovaView
    from novaconsole.agents.model import AgentState

AGENT_COLUMNS = (
    "host", "nova_host", "version", "heartbeat", "stale", "libvirt", "domains",
    "nova_compute", "errors",
)  # fmt: skip
DRIFT_COLUMNS = ("kind", "host", "server", "nova", "hypervisor", "nova_will", "when")


def read_agents(timeout: float) -> list[AgentState]:
    """Every enrolled agent's latest state from the broker (blocking; errors are one line)."""
    from novaconsole.agentbus.bus import ConsoleBus
    from novaconsole.agents.feed import load_bus_settings, read_latest, seed_from_latest
    from novaconsole.agents.model import AgentDirectory

    settings = load_bus_settings()
    bus = ConsoleBus(settings)
    bus.start(wait=timeout)
    try:
        latest = read_latest(bus, timeout)
    finally:
        bus.stop()
    directory = AgentDirectory()
    seed_from_latest(directory, latest)
    return directory.snapshot()


def _age(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} s ago"


def agent_table_rows(states: list[AgentState]) -> list[dict[str, Any]]:
    return [
        {
            "host": s.host,
            "nova_host": s.nova_host,
            "version": s.version,
            "heartbeat": _age(s.heartbeat_age),
            "stale": "STALE" if s.stale else "",
            "libvirt": s.libvirt + (f": {s.libvirt_error}" if s.libvirt_error else ""),
            "domains": s.domain_count,
            "nova_compute": s.nova_compute,
            "errors": s.error_count or "",
        }
        for s in states
    ]


def _quiet_logs() -> None:
    """The bus logs each failed connect attempt; unconfigured, Python's last-resort handler
    would print them next to our one-line error. A NullHandler stops that and still lets
    records reach any handler the application configured (verify does the same)."""
    for name in ("novaconsole.agentbus", "pika", "keystoneauth", "openstack"):
        logging.getLogger(name).addHandler(logging.NullHandler())


def _check_timeout(args: argparse.Namespace) -> float:
    _quiet_logs()
    timeout = float(args.timeout)
    if not timeout > 0:
        raise ConfigError(f"--timeout must be a positive number of seconds, not {timeout:g}")
    return timeout


def _cmd_agents(args: argparse.Namespace) -> int:
    from novaconsole.agents.model import agents_as_dicts

    states = read_agents(_check_timeout(args))
    stale = [s.host for s in states if s.stale]
    if args.format == "json":
        emit_json({"agents": agents_as_dicts(states), "stale": stale})
    else:
        print(render_table(agent_table_rows(states), AGENT_COLUMNS))
        verdict = f"{len(states)} agents, {len(stale)} stale"
        print(f"\n{verdict}" + (f": {', '.join(stale)}" if stale else ""))
    return EXIT_CHECK_FAILED if stale else EXIT_OK


def _cmd_drift(args: argparse.Namespace) -> int:
    from novaconsole.agents.drift import compute_drift
    from novaconsole.agents.feed import fetch_nova, load_bus_settings
    from novaconsole.sources.openstack_source import open_cloud_source

    timeout = _check_timeout(args)
    load_bus_settings()  # a missing or bad agents config fails before any connection

    def nova() -> NovaView:
        source = open_cloud_source(getattr(args, "os_cloud", None), timeout=timeout)
        try:
            return fetch_nova(source)
        finally:
            source.close()

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="drift") as pool:
        nova_future = pool.submit(nova)
        agents_future = pool.submit(read_agents, timeout)
        view, states = nova_future.result(), agents_future.result()
    report = compute_drift(view.servers, view.deleted, states)
    failed = bool(report.findings or report.unchecked_hosts)
    if args.format == "json":
        emit_json({**report.as_dict(), "deleted_servers_error": view.deleted_error})
    else:
        rows = [
            {
                "kind": f.kind,
                "host": f.host,
                "server": f.server_name or f.server_id,
                "nova": f.nova,
                "hypervisor": f.hypervisor,
                "nova_will": f.nova_action,
                "when": f.when,
            }
            for f in report.findings
        ]
        print(render_table(rows, DRIFT_COLUMNS))
        lines = [f"\n{len(report.findings)} findings on {len(report.checked_hosts)} hosts"]
        lines += [f"not judged: {h} ({why})" for h, why in sorted(report.unchecked_hosts.items())]
        if view.deleted_error:
            lines.append(f"deleted servers not checked: {view.deleted_error}")
        print("\n".join(lines))
    return EXIT_CHECK_FAILED if failed else EXIT_OK


def add_agent_commands(sub: Any, cloud_parent: argparse.ArgumentParser) -> None:
    """``agents`` and ``drift`` on the main parser's sub-commands."""
    p = sub.add_parser("agents", help="every compute agent's latest state from the agent bus")
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.add_argument("--timeout", type=float, default=10.0, help="broker wait (s)")
    p.set_defaults(func=_cmd_agents)
    p = sub.add_parser(
        "drift",
        help="where Nova's servers and the hypervisors' libvirt domains disagree",
        parents=[cloud_parent],
    )
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.add_argument("--timeout", type=float, default=10.0, help="broker and API wait (s)")
    p.set_defaults(func=_cmd_drift)
