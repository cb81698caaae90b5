"""Drift on constructed inputs: one test per kind, plus the hosts that cannot be judged."""

from __future__ import annotations

from typing import Any

from novaconsole.agents.drift import (
    ACTIVE_BUT_OFF,
    ACTIVE_BUT_PAUSED,
    COUNT,
    DELETED_RUNNING,
    MISSING,
    STOPPED_BUT_RUNNING,
    UNKNOWN,
    NovaTimers,
    compute_drift,
    hypervisor_state,
)
from novaconsole.agents.model import AgentState, DomainView
from novaconsole.sources.parse import server_row
from novaconsole.sources.rows import ServerRow


def server(
    uuid: str,
    status: str = "ACTIVE",
    host: str | None = "cmp1",
    vm_state: str | None = None,
    task: str | None = None,
    power: int = 1,
) -> ServerRow:
    raw: dict[str, Any] = {
        "id": uuid,
        "name": f"srv-{uuid}",
        "status": status,
        "OS-EXT-SRV-ATTR:host": host,
        "OS-EXT-STS:task_state": task,
        "OS-EXT-STS:power_state": power,
    }
    if vm_state:
        raw["OS-EXT-STS:vm_state"] = vm_state
    return server_row(raw)


def agent(host: str = "cmp1", *domains: tuple[str, str], stale: bool = False) -> AgentState:
    views = tuple(DomainView(uuid=u, name=f"instance-{u}", state=s) for u, s in domains)
    return AgentState(
        host=host, nova_host=host, version="1", last_seen=0.0, last_heartbeat=0.0, heartbeat_age=1.0,
        heartbeat_interval=10.0, stale=stale, libvirt="connected", libvirt_error="", domain_count=len(views),
        domains=views, nova_compute="running", error_count=0, errors=(), missing=0,
        gaps_total=0, restarts=0, last_seq=0, messages=1, inventories=1, events=0,
    )  # fmt: skip


def kinds(report: Any) -> list[tuple[str, str]]:
    return [(f.kind, f.server_id) for f in report.findings]


def test_agreement_is_no_drift() -> None:
    servers = [server("a"), server("b", "SHUTOFF", power=4)]
    report = compute_drift(servers, [], [agent("cmp1", ("a", "running"), ("b", "shutoff"))])
    assert report.findings == ()
    assert report.checked_hosts == ("cmp1",)


def test_active_but_shut_off_says_stop_api_and_when() -> None:
    report = compute_drift([server("a")], [], [agent("cmp1", ("a", "shutoff"))])
    assert kinds(report) == [(ACTIVE_BUT_OFF, "a")]
    finding = report.findings[0]
    assert "SHUTOFF" in finding.nova_action
    assert "600 s" in finding.when
    assert "lifecycle" in finding.when
    crashed = compute_drift([server("a")], [], [agent("cmp1", ("a", "crashed"))])
    assert kinds(crashed) == [(ACTIVE_BUT_OFF, "a")]


def test_active_but_paused_is_ignored_by_nova() -> None:
    report = compute_drift([server("a")], [], [agent("cmp1", ("a", "paused"))])
    assert kinds(report) == [(ACTIVE_BUT_PAUSED, "a")]
    assert report.findings[0].nova_action.startswith("nothing")


def test_stopped_but_running_is_force_stopped() -> None:
    report = compute_drift([server("a", "SHUTOFF", power=4)], [], [agent("cmp1", ("a", "running"))])
    assert kinds(report) == [(STOPPED_BUT_RUNNING, "a")]
    assert "force_stop" in report.findings[0].nova_action


def test_missing_on_hypervisor_and_count() -> None:
    report = compute_drift([server("a"), server("b")], [], [agent("cmp1", ("a", "running"))])
    assert kinds(report) == [(MISSING, "b"), (COUNT, "")]
    assert "NOSTATE" in report.findings[0].nova_action
    assert report.findings[1].summary == "Nova has 2 instances on cmp1, libvirt 1 domains"


def test_pending_task_and_error_states_are_skipped_like_nova() -> None:
    servers = [server("a", task="spawning"), server("b", "ERROR", vm_state="error")]
    report = compute_drift(servers, [], [agent("cmp1", ("a", "shutoff"), ("b", "shutoff"))])
    assert report.findings == ()


def test_deleted_but_running_is_reaped_per_config() -> None:
    gone = server("d", "DELETED", vm_state="deleted")
    report = compute_drift([], [gone], [agent("cmp1", ("d", "running"))])
    assert kinds(report) == [(DELETED_RUNNING, "d"), (COUNT, "")]
    finding = report.findings[0]
    assert finding.nova_action.startswith("reap")
    assert "1800 s" in finding.when
    noop = compute_drift(
        [],
        [gone],
        [agent("cmp1", ("d", "running"))],
        NovaTimers(running_deleted_instance_action="noop"),
    )
    assert noop.findings[0].when == "never"


def test_unknown_domain_and_domain_on_the_wrong_host() -> None:
    servers = [server("a", host="cmp2")]
    report = compute_drift(
        servers,
        [],
        [agent("cmp1", ("x", "running"), ("a", "running")), agent("cmp2", ("a", "running"))],
    )
    assert kinds(report) == [(UNKNOWN, "a"), (UNKNOWN, "x"), (COUNT, "")]
    assert "Nova places it on cmp2" in report.findings[0].summary
    assert report.findings[1].when == "never"
    assert report.by_host() == {"cmp1": 3, "cmp2": 0}


def test_stale_or_absent_agents_are_not_judged() -> None:
    servers = [server("a"), server("b", host="cmp2")]
    report = compute_drift(servers, [], [agent("cmp1", stale=True)])
    assert report.findings == ()
    assert report.unchecked_hosts == {"cmp1": "agent stale", "cmp2": "no agent"}


def test_hypervisor_state_column() -> None:
    agents = {"cmp1": agent("cmp1", ("a", "shutoff")), "cmp2": agent("cmp2", stale=True)}
    assert hypervisor_state(server("a"), agents) == "shutoff"
    assert hypervisor_state(server("b"), agents) == "missing"
    assert hypervisor_state(server("c", host="cmp2"), agents) == "missing (stale)"
    assert hypervisor_state(server("e", host="cmp9"), agents) == ""


def test_cache_keeps_unchanged_hosts_and_rejudges_changed_ones() -> None:
    from dataclasses import replace

    from novaconsole.agents.drift import DriftCache

    servers = [server("a"), server("b", host="cmp2")]
    nova = object()
    cache = DriftCache()
    agents = [agent("cmp1", ("a", "running")), agent("cmp2", ("b", "running"))]
    assert compute_drift(servers, [], agents, cache=cache, nova_key=nova).findings == ()
    # cmp2's domain stopped (an event): only cmp2 is judged again, and the finding shows.
    changed = replace(agent("cmp2", ("b", "shutoff")), events=1)
    report = compute_drift(servers, [], [agents[0], changed], cache=cache, nova_key=nova)
    assert kinds(report) == [(ACTIVE_BUT_OFF, "b")]
    uncached = compute_drift(servers, [], [agents[0], changed])
    assert report == uncached
    # A new Nova view starts afresh.
    assert compute_drift(servers, [], agents, cache=cache, nova_key=object()).findings == ()
