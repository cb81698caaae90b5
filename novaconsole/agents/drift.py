"""Drift: where Nova's servers and each hypervisor's libvirt domains disagree (pure functions).

Each finding says what Nova's own periodic tasks will do about it, and when. The behaviour
below was read from Nova's source (``nova/compute/manager.py`` and ``nova/conf/compute.py``
on openstack/nova master, commit 00a0304, 2026-08):

- ``_sync_power_states`` (``[DEFAULT] sync_power_state_interval``, default 600 s, runs at
  start-up too) walks the host's instances *in Nova's database*, skips any with a
  ``task_state``, asks the driver for each one's power state (``InstanceNotFound`` →
  ``NOSTATE``) and calls ``_sync_instance_power_state``: the DB ``power_state`` is always
  overwritten with the hypervisor's ("the hypervisor wins"), then by ``vm_state``:
  ACTIVE + SHUTDOWN/CRASHED → the stop API (server becomes SHUTOFF); ACTIVE + SUSPENDED →
  stop API; ACTIVE + PAUSED → ignored; ACTIVE + NOSTATE (domain gone) → "unexpectedly not
  found. Ignore"; STOPPED + anything but NOSTATE/SHUTDOWN/CRASHED → ``force_stop`` (the
  guest is powered off again). It also logs a warning when the DB and hypervisor *counts*
  differ, and does nothing else about it.
- The same sync runs right after a libvirt lifecycle event when
  ``[workarounds] handle_virt_lifecycle_events`` is true (the default); libvirt's
  ``host.py`` delays STOPPED events by 15 s in case a STARTED follows (a reboot).
- ``_cleanup_running_deleted_instances`` (``running_deleted_instance_poll_interval``,
  default 1800 s, runs at start-up too) looks up the driver's domain UUIDs among
  *deleted* instances (any domain, running or not, whose ``deleted_at`` is older than
  ``running_deleted_instance_timeout``, default 0) and applies
  ``running_deleted_instance_action``: ``reap`` (default: shut down and clean up),
  ``shutdown`` (power off), ``log`` or ``noop``.
- A domain whose UUID is no instance at all is in neither list: Nova never acts on it.

Libvirt states map to Nova power states as the libvirt driver's ``LIBVIRT_POWER_STATE``
does: running/blocked → RUNNING, paused → PAUSED, shutdown/shutoff → SHUTDOWN, crashed →
CRASHED, pmsuspended → SUSPENDED, nostate → NOSTATE.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from novaconsole.agents.model import AgentState, DomainView
from novaconsole.sources.rows import ServerRow

DELETED_RUNNING = "deleted-but-running"
ACTIVE_BUT_OFF = "active-but-off"
ACTIVE_BUT_PAUSED = "active-but-paused"
STOPPED_BUT_RUNNING = "stopped-but-running"
MISSING = "missing-on-hypervisor"
UNKNOWN = "unknown-domain"
COUNT = "count-mismatch"
KINDS = (
    DELETED_RUNNING,
    ACTIVE_BUT_OFF,
    ACTIVE_BUT_PAUSED,
    STOPPED_BUT_RUNNING,
    MISSING,
    UNKNOWN,
    COUNT,
)

#: libvirt state word → Nova power state name (nova/virt/libvirt/driver.py LIBVIRT_POWER_STATE).
NOVA_POWER = {
    "running": "RUNNING",
    "blocked": "RUNNING",
    "paused": "PAUSED",
    "shutdown": "SHUTDOWN",
    "shutoff": "SHUTDOWN",
    "crashed": "CRASHED",
    "pmsuspended": "SUSPENDED",
    "nostate": "NOSTATE",
}

#: Server ``status`` → ``vm_state`` when the body has no ``OS-EXT-STS:vm_state``.
_STATUS_VM_STATE = {
    "ACTIVE": "active",
    "SHUTOFF": "stopped",
    "PAUSED": "paused",
    "SUSPENDED": "suspended",
    "RESCUE": "rescued",
    "VERIFY_RESIZE": "resized",
    "ERROR": "error",
    "BUILD": "building",
    "SOFT_DELETED": "soft-delete",
    "DELETED": "deleted",
    "SHELVED": "shelved",
    "SHELVED_OFFLOADED": "shelved_offloaded",
}

#: vm_states in which the instance must have a domain on its host.
_NEEDS_DOMAIN = frozenset({"active", "stopped", "paused", "suspended", "rescued", "resized"})


@dataclass(frozen=True, slots=True)
class NovaTimers:
    """The Nova options that decide what happens to drift (defaults are Nova's)."""

    sync_power_state_interval: int = 600
    handle_virt_lifecycle_events: bool = True
    running_deleted_instance_poll_interval: int = 1800
    running_deleted_instance_action: str = "reap"
    running_deleted_instance_timeout: int = 0


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement between Nova and a hypervisor."""

    kind: str
    host: str
    server_id: str
    server_name: str
    #: Nova's view (``status/vm_state power_state``) and libvirt's (domain state).
    nova: str
    hypervisor: str
    summary: str
    #: What Nova's own periodic task will do, and when.
    nova_action: str
    when: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def raw(self) -> dict[str, Any]:
        """What the console's details view shows."""
        return self.as_dict()


@dataclass(frozen=True, slots=True)
class DriftReport:
    """Findings over the hosts that have a live agent with an inventory."""

    findings: tuple[Finding, ...]
    checked_hosts: tuple[str, ...]
    #: Hosts with servers in Nova but no usable agent view: host → why.
    unchecked_hosts: Mapping[str, str] = field(default_factory=dict)

    def by_host(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(self.checked_hosts, 0)
        for finding in self.findings:
            counts[finding.host] = counts.get(finding.host, 0) + 1
        return counts

    def by_server(self) -> dict[str, list[Finding]]:
        out: dict[str, list[Finding]] = {}
        for finding in self.findings:
            if finding.server_id:
                out.setdefault(finding.server_id, []).append(finding)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "findings": [f.as_dict() for f in self.findings],
            "checked_hosts": list(self.checked_hosts),
            "unchecked_hosts": dict(self.unchecked_hosts),
        }


def vm_state(server: ServerRow) -> str:
    """The server's ``vm_state`` (from the body, else derived from its status)."""
    # The parsed field first: reading the raw body decodes its whole (compressed) page.
    raw = server.vm_state or server.raw.get("OS-EXT-STS:vm_state")
    if raw:
        return str(raw)
    return _STATUS_VM_STATE.get(server.status.upper(), server.status.lower())


def _nova_view(server: ServerRow) -> str:
    power = f" {server.power_state}" if server.power_state else ""
    return f"{server.status}/{vm_state(server)}{power}"


def _sync_when(timers: NovaTimers, event_applies: bool) -> str:
    if timers.sync_power_state_interval < 0:
        return "never (sync_power_state_interval < 0 disables _sync_power_states)"
    periodic = f"within {timers.sync_power_state_interval or 60} s (_sync_power_states)"
    if event_applies and timers.handle_virt_lifecycle_events:
        return f"~15 s after the libvirt lifecycle event if nova-compute saw it, else {periodic}"
    return periodic


def _deleted_action(timers: NovaTimers) -> tuple[str, str]:
    action = timers.running_deleted_instance_action
    what = {
        "reap": "reap: shut the domain down and clean it up (running_deleted_instance_action=reap)",
        "shutdown": "power the domain off (running_deleted_instance_action=shutdown)",
        "log": "log a warning only (running_deleted_instance_action=log)",
        "noop": "nothing (running_deleted_instance_action=noop)",
    }.get(action, f"running_deleted_instance_action={action}")
    if action == "noop" or timers.running_deleted_instance_poll_interval <= 0:
        return what, "never"
    when = (
        f"within {timers.running_deleted_instance_poll_interval} s "
        "(_cleanup_running_deleted_instances)"
    )
    if timers.running_deleted_instance_timeout > 0:
        when += f", once deleted {timers.running_deleted_instance_timeout} s ago"
    return what, when


def _server_finding(
    server: ServerRow, host: str, domain: DomainView | None, timers: NovaTimers
) -> Finding | None:
    """Nova's ``_sync_instance_power_state`` decision for one live server on its host."""
    if server.task_state:  # Nova skips instances with a pending task; so do we
        return None
    state = vm_state(server)
    nova = _nova_view(server)
    if domain is None:
        if state not in _NEEDS_DOMAIN:
            return None
        return Finding(
            MISSING, host, server.id, server.name, nova, "(no domain)",
            f"{server.status} in Nova but no domain on {host}",
            "set power_state to NOSTATE and otherwise ignore it (ACTIVE: \"unexpectedly not "
            "found. Ignore\"); the server stays as it is",
            _sync_when(timers, False),
        )  # fmt: skip
    power = NOVA_POWER.get(domain.state, "NOSTATE")
    seen = domain.state + (f" ({domain.reason})" if domain.reason else "")
    if state == "active" and power in ("SHUTDOWN", "CRASHED", "SUSPENDED"):
        return Finding(
            ACTIVE_BUT_OFF, host, server.id, server.name, nova, seen,
            f"ACTIVE in Nova but {domain.state} on {host}",
            "call the stop API (the hypervisor wins): the server becomes SHUTOFF",
            _sync_when(timers, True),
        )  # fmt: skip
    if state == "active" and power == "PAUSED":
        return Finding(
            ACTIVE_BUT_PAUSED, host, server.id, server.name, nova, seen,
            f"ACTIVE in Nova but paused on {host}",
            'nothing: "Instance is paused unexpectedly. Ignore." (power_state set to PAUSED)',
            _sync_when(timers, True),
        )  # fmt: skip
    if state == "stopped" and power not in ("NOSTATE", "SHUTDOWN", "CRASHED"):
        return Finding(
            STOPPED_BUT_RUNNING, host, server.id, server.name, nova, seen,
            f"SHUTOFF in Nova but {domain.state} on {host}",
            "force_stop: the guest is powered off again (Nova's stopped state wins here)",
            _sync_when(timers, True),
        )  # fmt: skip
    return None


@dataclass
class DriftCache:
    """Per-host findings kept between calls, so a live redraw only re-judges changed hosts.

    A host's findings depend on Nova's view (``nova``, compared by identity) and on that
    agent's domains, which change only with an inventory, an event or a restart.
    """

    nova: object = None
    hosts: dict[str, tuple[tuple[int, int, int, int], list[Finding]]] = field(default_factory=dict)


def _host_findings(
    host: str,
    agent: AgentState,
    on_host: Sequence[ServerRow],
    live_by_id: Mapping[str, ServerRow],
    deleted_by_id: Mapping[str, ServerRow],
    timers: NovaTimers,
) -> list[Finding]:
    findings: list[Finding] = []
    domains = agent.domains_by_uuid
    for server in on_host:
        finding = _server_finding(server, host, domains.get(server.id), timers)
        if finding is not None:
            findings.append(finding)
    known_here = {s.id for s in on_host}
    for domain in sorted(domains.values(), key=lambda d: (d.name, d.uuid)):
        if domain.uuid in known_here:
            continue
        seen = domain.state + (f" ({domain.reason})" if domain.reason else "")
        gone = deleted_by_id.get(domain.uuid)
        if gone is not None:
            what, when = _deleted_action(timers)
            running = NOVA_POWER.get(domain.state) not in ("SHUTDOWN", "CRASHED", "NOSTATE")
            findings.append(
                Finding(
                    DELETED_RUNNING, host, gone.id, gone.name, _nova_view(gone), seen,
                    f"deleted in Nova but {'running' if running else 'still defined'} on {host}",
                    what, when,
                )
            )  # fmt: skip
            continue
        elsewhere = live_by_id.get(domain.uuid)
        label = domain.nova_name or domain.name
        if elsewhere is not None:
            summary = f"domain {label} on {host}, but Nova places it on {elsewhere.host}"
            name, nova = elsewhere.name, f"{_nova_view(elsewhere)} on {elsewhere.host}"
        else:
            summary = f"domain {label} on {host} is no server Nova knows"
            name, nova = domain.name, "(unknown)"
        findings.append(
            Finding(
                UNKNOWN, host, domain.uuid, name, nova, seen, summary,
                "nothing: no periodic task looks at domains that are not its instances",
                "never",
            )
        )  # fmt: skip
    if len(on_host) != len(domains):
        findings.append(
            Finding(
                COUNT, host, "", "", f"{len(on_host)} instances", f"{len(domains)} domains",
                f"Nova has {len(on_host)} instances on {host}, libvirt {len(domains)} domains",
                'log "While synchronizing instance power states, found N instances in the '
                'database and M instances on the hypervisor" and nothing else',
                _sync_when(timers, False),
            )
        )  # fmt: skip
    return findings


def compute_drift(
    servers: Sequence[ServerRow],
    deleted: Sequence[ServerRow],
    agents: Sequence[AgentState],
    timers: NovaTimers | None = None,
    *,
    cache: DriftCache | None = None,
    nova_key: object = None,
) -> DriftReport:
    """Compare Nova (live and deleted servers) with every live agent's last inventory.

    Hosts whose agent is stale or has sent no inventory yet are not judged (their view
    is missing or old); they are listed in ``unchecked_hosts`` when Nova has servers there.
    With a ``cache`` (and ``nova_key`` naming the Nova view, by identity), hosts whose
    agent sent no inventory or event since the last call keep their findings.
    """
    timers = timers or NovaTimers()
    if cache is not None and (nova_key is None or cache.nova is not nova_key):
        cache.nova, cache.hosts = nova_key, {}
    live_by_id = {s.id: s for s in servers}
    deleted_by_id = {s.id: s for s in deleted if s.id not in live_by_id}
    by_host: dict[str, list[ServerRow]] = {}
    for server in servers:
        if server.host:
            by_host.setdefault(server.host, []).append(server)
    findings: list[Finding] = []
    checked: list[str] = []
    unchecked: dict[str, str] = {}
    # Agents are matched to Nova by the host name Nova knows (the inventory's nova_host).
    usable = {a.nova_host: a for a in agents if not a.stale and a.domains is not None}
    for agent in agents:
        if agent.nova_host not in usable:
            why = "agent stale" if agent.stale else "no inventory from the agent yet"
            unchecked[agent.nova_host] = why
    for host in sorted(set(by_host) - set(usable)):
        unchecked.setdefault(host, "no agent")
    for host in sorted(usable):
        agent = usable[host]
        checked.append(host)
        key = (agent.inventories, agent.events, agent.restarts, len(agent.domains or ()))
        cached = cache.hosts.get(host) if cache is not None and nova_key is not None else None
        if cached is not None and cached[0] == key:
            findings.extend(cached[1])
            continue
        on_host = sorted(by_host.get(host, ()), key=lambda s: (s.name, s.id))
        found = _host_findings(host, agent, on_host, live_by_id, deleted_by_id, timers)
        if cache is not None and nova_key is not None:
            cache.hosts[host] = (key, found)
        findings.extend(found)
    return DriftReport(tuple(findings), tuple(checked), unchecked)


def hypervisor_state(server: ServerRow, agents: Mapping[str, AgentState]) -> str:
    """What the server's host agent says of its domain: state, ``missing``, or ``""``.

    ``agents`` is keyed by the host name Nova knows (:attr:`AgentState.nova_host`).
    """
    if not server.host:
        return ""
    agent = agents.get(server.host)
    if agent is None or agent.domains is None:
        return ""
    domain = agent.domains_by_uuid.get(server.id)
    state = "missing" if domain is None else domain.state
    return f"{state} (stale)" if agent.stale else state
