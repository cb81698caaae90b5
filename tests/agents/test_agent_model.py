"""``AgentDirectory`` on constructed messages: folding, sequence gaps, staleness, coalescing.

The messages are the bus's own ``Message`` objects with bodies built by the bus's own body
classes (what ``open_envelope`` hands over after verification); signing is tested with the
real broker in ``test_agents_bus.py``.
"""

from __future__ import annotations

import threading
from typing import Any

from novaconsole.agentbus import (
    Domain,
    DomainEvent,
    Heartbeat,
    HostFacts,
    Inventory,
    Message,
    NovaMetadata,
    ServiceStatus,
)
from novaconsole.agents.model import AgentDirectory, agents_as_dicts, normalise_state


def msg(
    kind: str, host: str, seq: int | None, body: Any, ts: float = 0.0, boot: str | None = "b1"
) -> Message:
    data = body.to_dict() if hasattr(body, "to_dict") else body
    return Message(
        kind=kind, host=host, sender=host, ts=ts, nonce=f"n{seq}", id=f"{host}-{seq}",
        body=data, seq=seq, boot=boot,
    )  # fmt: skip


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def heartbeat(interval: float = 10.0, **kw: Any) -> Heartbeat:
    return Heartbeat(
        agent_version="0.3", started=0.0, interval=interval, libvirt_connected=True,
        libvirt_uri="qemu:///system", domains=kw.pop("domains", 0),
        services=[ServiceStatus("nova-compute", True, 42, 1.0)], **kw,
    )  # fmt: skip


def inventory(*domains: tuple[str, str, str], nova_host: str = "cmp1") -> Inventory:
    return Inventory(
        host=HostFacts(hostname="cmp1.example", nova_host=nova_host),
        domains=[
            Domain(uuid=u, name=n, state=s, nova=NovaMetadata(display_name=f"vm-{n}"))
            for u, n, s in domains
        ],
        services=[ServiceStatus("nova-compute", False)],
        errors=["ERROR nova.compute.manager boom"],
    )


def test_heartbeat_and_inventory_fold_into_state() -> None:
    clock = Clock()
    directory = AgentDirectory(clock=clock)
    directory.apply(msg("heartbeat", "cmp1", 0, heartbeat(5, domains=3, errors=2), clock.now))
    state = directory.get("cmp1")
    assert state is not None
    assert (state.version, state.heartbeat_interval, state.libvirt) == ("0.3", 5.0, "connected")
    assert (state.domain_count, state.domains, state.nova_compute) == (3, None, "running")
    assert state.error_count == 2
    directory.apply(msg("inventory", "cmp1", 1, inventory(("u1", "instance-1", "shut off"))))
    state = directory.get("cmp1")
    assert state is not None
    assert state.domains is not None
    assert [(d.uuid, d.state, d.nova_name) for d in state.domains] == [
        ("u1", "shutoff", "vm-instance-1")
    ]
    assert (state.domain_count, state.nova_compute, state.nova_host) == (1, "stopped", "cmp1")
    assert state.errors == ("ERROR nova.compute.manager boom",)
    assert state.missing == 0
    assert not state.stale


def test_events_change_one_domain() -> None:
    directory = AgentDirectory(clock=Clock())
    directory.apply(
        msg("inventory", "h", 0, inventory(("u1", "a", "running"), ("u2", "b", "shut off")))
    )
    directory.apply(
        msg("event", "h", 1, DomainEvent("u1", "a", "lifecycle", "stopped", "destroyed", 0.0, "shut off"))
    )  # fmt: skip
    directory.apply(msg("event", "h", 2, DomainEvent("u2", "b", "lifecycle", "undefined")))
    directory.apply(msg("event", "h", 3, DomainEvent("u1", "a", "watchdog", "reset")))
    state = directory.get("h")
    assert state is not None
    assert state.domains is not None
    assert [(d.uuid, d.name, d.state, d.nova_name) for d in state.domains] == [
        ("u1", "a", "shutoff", "vm-a")
    ]
    assert (state.domain_count, state.events) == (1, 3)


def test_sequence_gaps_late_arrivals_and_restarts() -> None:
    directory = AgentDirectory(clock=Clock())
    for seq in (0, 1, 2, 5, 6):
        directory.apply(msg("heartbeat", "h", seq, heartbeat()))
    state = directory.get("h")
    assert state is not None
    assert (state.missing, state.gaps_total, state.last_seq) == (2, 2, 6)
    directory.apply(msg("heartbeat", "h", 3, heartbeat()))  # replayed from the agent's buffer
    state = directory.get("h")
    assert state is not None
    assert (state.missing, state.gaps_total) == (1, 2)
    # A new agent process (new boot id) counts from 0 again: a restart, not a gap.
    directory.apply(msg("heartbeat", "h", 0, heartbeat(), boot="b2"))
    directory.apply(msg("heartbeat", "h", 1, heartbeat(), boot="b2"))
    state = directory.get("h")
    assert state is not None
    assert (state.restarts, state.missing, state.last_seq, state.gaps_total) == (1, 0, 1, 2)


def test_malformed_body_is_an_agent_error_not_a_crash() -> None:
    directory = AgentDirectory(clock=Clock())
    directory.apply(msg("heartbeat", "h", 0, {"domains": "many"}))
    state = directory.get("h")
    assert state is not None
    assert state.errors
    assert state.errors[0].startswith("malformed heartbeat body: field 'domains'")


def test_staleness_after_factor_times_interval() -> None:
    clock = Clock()
    directory = AgentDirectory(clock=clock, stale_factor=3)
    directory.apply(msg("heartbeat", "h", 0, heartbeat(10), clock.now))
    clock.now += 30
    state = directory.get("h")
    assert state is not None
    assert state.heartbeat_age == 30.0
    assert not state.stale
    clock.now += 0.5
    state = directory.get("h")
    assert state is not None
    assert state.stale


def test_skewed_agent_clock_still_judged_by_receive_time() -> None:
    clock = Clock()
    directory = AgentDirectory(clock=clock)
    # The agent's clock is an hour behind: its heartbeat looks old, so it is stale...
    directory.apply(msg("heartbeat", "h", 0, heartbeat(10), clock.now - 3600))
    state = directory.get("h")
    assert state is not None
    assert state.stale
    # ...and silence is stale even when the agent's timestamps look fresh.
    directory.apply(msg("heartbeat", "g", 0, heartbeat(10), clock.now + 3600))
    clock.now += 31
    state = directory.get("g")
    assert state is not None
    assert state.stale


def test_changes_coalesce_into_one_wakeup_per_drain() -> None:
    wakeups: list[int] = []
    directory = AgentDirectory(clock=Clock(), on_dirty=lambda: wakeups.append(1))
    for n in range(1000):
        directory.apply(msg("heartbeat", f"host-{n % 100}", n // 100, heartbeat()))
    assert len(wakeups) == 1
    changed = directory.drain_changes()
    assert changed == {f"host-{n}" for n in range(100)}
    assert directory.drain_changes() == set()
    directory.apply(msg("heartbeat", "host-1", 10, heartbeat()))
    assert len(wakeups) == 2
    assert directory.drain_changes() == {"host-1"}


def test_concurrent_writers_lose_nothing() -> None:
    directory = AgentDirectory(clock=Clock())
    beat = heartbeat().to_dict()

    def write(host: str) -> None:
        for seq in range(500):
            directory.apply(msg("heartbeat", host, seq, beat))

    threads = [threading.Thread(target=write, args=(f"h{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    states = directory.snapshot()
    assert [(s.host, s.messages, s.missing, s.last_seq) for s in states] == [
        (f"h{n}", 500, 0, 499) for n in range(4)
    ]


def test_state_names_and_json() -> None:
    assert normalise_state("shut off") == "shutoff"
    assert normalise_state("VIR_DOMAIN_PMSUSPENDED") == "pmsuspended"
    assert normalise_state("Running") == "running"
    directory = AgentDirectory(clock=Clock())
    directory.apply(msg("inventory", "h", 0, inventory(("u", "n", "running"))))
    (data,) = agents_as_dicts(directory.snapshot())
    assert data["domains"] == [
        {"uuid": "u", "name": "n", "state": "running", "reason": "", "nova_name": "vm-n"}
    ]


def test_an_event_older_than_the_inventory_does_not_roll_back() -> None:
    """After a console restart the latest inventory may be read before older queued events."""
    directory = AgentDirectory(clock=Clock())
    directory.apply(msg("inventory", "h", 7, inventory(("u1", "a", "running"))))
    stale_event = DomainEvent("u1", "a", "lifecycle", "stopped", "destroyed", 0.0, "shut off")
    directory.apply(msg("event", "h", 5, stale_event))
    state = directory.get("h")
    assert state is not None
    assert state.domains is not None
    assert state.domains[0].state == "running"
    directory.apply(msg("event", "h", 8, stale_event))
    state = directory.get("h")
    assert state is not None
    assert state.domains is not None
    assert state.domains[0].state == "shutoff"


def test_an_expected_agent_never_heard_of_is_stale() -> None:
    directory = AgentDirectory(clock=Clock())
    directory.expect(["quiet"])
    state = directory.get("quiet")
    assert state is not None
    assert state.stale
    assert state.heartbeat_age is None


def test_event_states_as_the_agent_sends_them() -> None:
    """The daemon sends an event's state as "state reason" in virsh's words, or "gone"."""
    from novaconsole.agents.model import split_state

    assert split_state("shut off destroyed") == ("shutoff", "destroyed")
    assert split_state("running booted") == ("running", "booted")
    assert split_state("in shutdown user") == ("shutdown", "user")
    assert split_state("idle unknown") == ("blocked", "unknown")
    assert split_state("no state") == ("nostate", "")
    directory = AgentDirectory(clock=Clock())
    directory.apply(
        msg("inventory", "h", 1, inventory(("u1", "a", "running"), ("u2", "b", "running")))
    )
    stopped = DomainEvent("u1", "a", "lifecycle", "stopped", "destroyed", 0.0, "shut off destroyed")
    directory.apply(msg("event", "h", 2, stopped))
    directory.apply(
        msg("event", "h", 3, DomainEvent("u2", "b", "lifecycle", "undefined", "", 0.0, "gone"))
    )
    state = directory.get("h")
    assert state is not None
    assert state.domains is not None
    assert [(d.uuid, d.state, d.reason) for d in state.domains] == [("u1", "shutoff", "destroyed")]
