"""The ``verify`` check ``compute-agents``: every compute host has a live agent.

Added to ``novaconsole verify`` only where agents are configured (the console's agents.toml
exists); a cloud without agents is not failed for lacking them.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import Any

from novaconsole.agents.model import AgentState
from novaconsole.verify import Check, CheckResult, service_rows

NAME = "compute-agents"


def evaluate_agents(
    services: Sequence[Mapping[str, Any]], agents: Sequence[AgentState]
) -> CheckResult:
    """Every ``nova-compute`` host (by Nova's host name) has an agent that is not stale.

    ``services`` are ``os-services`` rows (``binary``, ``host``); ``agents`` the agents'
    latest states. Agents on hosts Nova has no compute service for are listed, not failed.
    """
    computes = sorted({str(s.get("host")) for s in services if s.get("binary") == "nova-compute"})
    by_host = {a.nova_host: a for a in agents}
    live = sorted(h for h in computes if h in by_host and not by_host[h].stale)
    stale = sorted(h for h in computes if h in by_host and by_host[h].stale)
    absent = sorted(h for h in computes if h not in by_host)
    extra = sorted(h for h in by_host if h not in computes)
    facts: dict[str, Any] = {
        "compute_hosts": computes,
        "live": live,
        "stale": {h: by_host[h].heartbeat_age for h in stale},
        "no_agent": absent,
        "agents_without_compute_service": extra,
    }
    problems = []
    if stale:
        ages = ", ".join(
            f"{h} ({'never heard' if by_host[h].heartbeat_age is None else f'{by_host[h].heartbeat_age:.0f} s'})"
            for h in stale
        )
        problems.append(f"stale agent: {ages}")
    if absent:
        problems.append(f"no agent enrolled for: {', '.join(absent)}")
    if not computes:
        problems.append("no nova-compute service registered")
    if problems:
        return CheckResult(NAME, False, "; ".join(problems), facts)
    return CheckResult(NAME, True, f"{len(live)} of {len(computes)} live: {', '.join(live)}", facts)


def _read_agents(timeout: float) -> list[AgentState]:
    from novaconsole.agents.cli import read_agents

    return read_agents(timeout)


def agents_check(timeout: float = 10.0) -> Check:
    """The check, reading compute services from Nova and agents from the bus.

    The bus is read from the moment the check is made: verify makes its checks before it
    imports openstacksdk and logs in, so loading the bus, connecting to the broker and
    reading every agent's last messages overlap those (verify's whole run was 0.3 s
    before this check existed; run after them, the read added a tenth of a second).
    """
    agents: Future[list[AgentState]] = Future()

    def read() -> None:
        try:
            agents.set_result(_read_agents(timeout))
        except BaseException as exc:  # handed to run(), which reports it as the check's
            agents.set_exception(exc)

    # A daemon thread: a verify that fails before its checks run (a wrong password, an
    # unreachable cloud) must not wait at exit for a broker that does not answer.
    threading.Thread(target=read, name="verify-agents", daemon=True).start()

    def run(conn: Any) -> CheckResult:
        services = service_rows(conn.compute.services())
        return evaluate_agents(services, agents.result(timeout + 5))

    return Check(NAME, run, "every compute host has a live agent (agents configured)")
