"""``AgentDirectory`` on constructed messages: folding, sequence gaps, staleness, coalescing."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from novaconsole.agents.model import AgentDirectory, agents_as_dicts, normalise_state


@dataclass(frozen=True)
class Msg:
    """A message as the bus hands it over after verification (constructed here)."""

    kind: str
    host: str
    seq: int
    ts: float
    body: Any


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _inventory(*domains: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "domains": [{"uuid": u, "name": n, "state": s} for u, n, s in domains],
        "services": {"nova-compute": {"state": "running"}},
        "errors": ["ERROR nova.compute.manager boom"],
    }


def test_heartbeat_and_inventory_fold_into_state() -> None:
    clock = Clock()
    directory = AgentDirectory(clock=clock)
    directory.apply(
        Msg("heartbeat", "cmp1", 0, clock.now, {"version": "0.3", "interval": 5, "libvirt": True})
    )
    directory.apply(Msg("inventory", "cmp1", 1, clock.now, _inventory(("u1", "inst-1", "running"))))
    state = directory.get("cmp1")
    assert state is not None
    assert state.version == "0.3"
    assert state.heartbeat_interval == 5.0
    assert state.libvirt == "connected"
    assert state.domain_count == 1
    assert state.domains is not None
    assert state.domains[0].state == "running"
    assert state.nova_compute == "running"
    assert state.errors == ("ERROR nova.compute.manager boom",)
    assert state.missing == 0
    assert not state.stale


def test_events_change_one_domain() -> None:
    directory = AgentDirectory(clock=Clock())
    directory.apply(
        Msg("inventory", "h", 0, 0.0, _inventory(("u1", "a", "running"), ("u2", "b", "running")))
    )
    directory.apply(
        Msg("domain_event", "h", 1, 0.0, {"uuid": "u1", "event": "stopped", "state": "shut off"})
    )
    directory.apply(Msg("domain_event", "h", 2, 0.0, {"uuid": "u2", "event": "undefined"}))
    state = directory.get("h")
    assert state is not None
    assert state.domains is not None
    assert [(d.uuid, d.name, d.state) for d in state.domains] == [("u1", "a", "shutoff")]
    assert state.domain_count == 1


def test_sequence_gaps_late_arrivals_and_restarts() -> None:
    directory = AgentDirectory(clock=Clock())
    for seq in (0, 1, 2, 5, 6):
        directory.apply(Msg("heartbeat", "h", seq, 0.0, {}))
    state = directory.get("h")
    assert state is not None
    assert (state.missing, state.gaps_total, state.last_seq) == (2, 2, 6)
    directory.apply(Msg("heartbeat", "h", 3, 0.0, {}))  # replayed from the agent's buffer
    state = directory.get("h")
    assert state is not None
    assert (state.missing, state.gaps_total) == (1, 2)
    directory.apply(Msg("heartbeat", "h", 0, 0.0, {}))  # the agent restarted its count
    state = directory.get("h")
    assert state is not None
    assert (state.restarts, state.missing, state.last_seq) == (1, 0, 0)


def test_staleness_after_factor_times_interval() -> None:
    clock = Clock()
    directory = AgentDirectory(clock=clock, stale_factor=3)
    directory.apply(Msg("heartbeat", "h", 0, clock.now, {"interval": 10}))
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
    directory.apply(Msg("heartbeat", "h", 0, clock.now - 3600, {"interval": 10}))
    state = directory.get("h")
    assert state is not None
    assert state.stale
    # ...and silence is stale even when the agent's timestamps look fresh.
    directory.apply(Msg("heartbeat", "g", 0, clock.now + 3600, {"interval": 10}))
    clock.now += 31
    state = directory.get("g")
    assert state is not None
    assert state.stale


def test_changes_coalesce_into_one_wakeup_per_drain() -> None:
    wakeups: list[int] = []
    directory = AgentDirectory(clock=Clock(), on_dirty=lambda: wakeups.append(1))
    for n in range(1000):
        directory.apply(Msg("heartbeat", f"host-{n % 100}", n // 100, 0.0, {}))
    assert len(wakeups) == 1
    changed = directory.drain_changes()
    assert changed == {f"host-{n}" for n in range(100)}
    assert directory.drain_changes() == set()
    directory.apply(Msg("heartbeat", "host-1", 10, 0.0, {}))
    assert len(wakeups) == 2
    assert directory.drain_changes() == {"host-1"}


def test_concurrent_writers_lose_nothing() -> None:
    directory = AgentDirectory(clock=Clock())

    def write(host: str) -> None:
        for seq in range(500):
            directory.apply(Msg("heartbeat", host, seq, 0.0, {}))

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
    directory.apply(Msg("inventory", "h", 0, 0.0, _inventory(("u", "n", "running"))))
    (data,) = agents_as_dicts(directory.snapshot())
    assert data["domains"] == [
        {"uuid": "u", "name": "n", "state": "running", "reason": "", "nova_name": ""}
    ]
