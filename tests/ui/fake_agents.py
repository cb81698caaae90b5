"""``fake_agent_feed``: a deterministic agent feed for the console's snapshot and Pilot tests.

It is a fake in one respect only: no broker. The messages are the bus's own ``Message``
objects with bodies from the bus's own body classes, folded by the real ``AgentDirectory``
on a frozen clock, as the bus thread would after verifying them. The same path is tested
against the real broker with real signed messages in ``tests/agents/test_agents_bus.py``.

The scenario, on the recording's compute host ``vm``: the recorded ACTIVE server's domain
is shut off, a domain Nova does not know runs, and a server deleted in Nova still runs;
a second agent (``cmp2``) has gone quiet and lost libvirt.
"""

from __future__ import annotations

import copy
from typing import Any

from console_helpers import FROZEN_NOW, RECORDING
from fake_source import FakeCloudSource

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
from novaconsole.agents.feed import AgentFeed
from novaconsole.agents.model import AgentDirectory

NOW = FROZEN_NOW.timestamp()
SERVER_ID = RECORDING["servers"][0]["id"]
UNKNOWN_ID = "aaaaaaaa-0000-4000-8000-00000000000f"
DELETED_ID = "dddddddd-0000-4000-8000-00000000000d"


class FrozenClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def message(kind: str, host: str, seq: int, body: Any, ts: float = NOW) -> Message:
    return Message(
        kind=kind, host=host, sender=host, ts=ts, nonce=f"{host}-{seq}", id=f"{host}-{seq}",
        body=body.to_dict(), seq=seq, boot="boot-1",
    )  # fmt: skip


def heartbeat(domains: int, *, libvirt: bool = True, interval: float = 10.0) -> Heartbeat:
    return Heartbeat(
        agent_version="0.1.0", started=NOW - 3600, interval=interval, libvirt_connected=libvirt,
        libvirt_uri="qemu:///system", domains=domains,
        services=[ServiceStatus("nova-compute", True, 4242, NOW - 3600)],
        libvirt_error=None if libvirt else "Cannot recv data: Connection reset by peer",
    )  # fmt: skip


def lab_inventory(server_state: str = "shut off") -> Inventory:
    return Inventory(
        host=HostFacts(hostname="vm", nova_host="vm", libvirt_version="10.0.0"),
        domains=[
            Domain(
                SERVER_ID, "instance-00000001", server_state, "destroyed",
                nova=NovaMetadata(display_name="lab-vm-1"),
            ),
            Domain(UNKNOWN_ID, "not-from-nova", "running", "booted"),
            Domain(
                DELETED_ID, "instance-00000000", "running", "booted",
                nova=NovaMetadata(display_name="lab-vm-old"),
            ),
        ],
        services=[ServiceStatus("nova-compute", True, 4242, NOW - 3600)],
        errors=["2026-11-24 01:02:03.456 ERROR nova.compute.manager [-] Error updating resources"],
    )  # fmt: skip


def fake_agent_feed() -> tuple[AgentFeed, FrozenClock]:
    """The scenario above, folded into a real directory on a frozen clock."""
    clock = FrozenClock()
    feed = AgentFeed(directory=AgentDirectory(clock=clock))
    directory = feed.directory
    directory.apply(message("heartbeat", "vm", 0, heartbeat(3), NOW - 4))
    directory.apply(message("inventory", "vm", 1, lab_inventory(), NOW - 4))
    directory.apply(message("heartbeat", "cmp2", 0, heartbeat(0, libvirt=False), NOW - 95))
    directory.apply(message("heartbeat", "cmp2", 3, heartbeat(0, libvirt=False), NOW - 95))
    directory.drain_changes()
    return feed, clock


def domain_started(seq: int) -> Message:
    """The lifecycle event of the recorded server's domain starting again."""
    event = DomainEvent(
        SERVER_ID, "instance-00000001", "lifecycle", "started", "booted", NOW, "running booted"
    )
    return message("event", "vm", seq, event)


def source_with_deleted_server() -> FakeCloudSource:
    """The recorded fake, plus one server Nova has deleted (on host vm)."""
    recording = copy.deepcopy(RECORDING)
    gone = copy.deepcopy(recording["servers"][0])
    gone.update(
        {
            "id": DELETED_ID,
            "name": "lab-vm-old",
            "status": "DELETED",
            "OS-EXT-STS:vm_state": "deleted",
            "OS-EXT-STS:power_state": 0,
            "OS-EXT-SRV-ATTR:instance_name": "instance-00000000",
        }
    )
    recording["deleted_servers"] = [gone]
    return FakeCloudSource(recording)
