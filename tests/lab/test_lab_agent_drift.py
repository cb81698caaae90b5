"""Drift seen through the lab's own compute agent, end to end: libvirt, the agent daemon
``lab up`` runs, the bus, and ``novaconsole drift`` against the lab's real Nova.

- a guest destroyed behind Nova's back (``virsh destroy``) is ACTIVE-but-off within
  seconds (Nova's own lifecycle handling reconciles it some 15 s later, its periodic
  task after up to 600 s);
- a domain defined outside Nova is a domain Nova does not know.

The test's server (``labagent-drift-...``) and domain (``labagent-unknown-...``) are its
own and are removed afterwards.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from labtools import boot_lab_server, run_novaconsole

from novaconsole.lab.config import LabConfig

pytestmark = pytest.mark.lab

URI = "qemu:///system"


def virsh(*args: str) -> str:
    return subprocess.run(
        ["virsh", "-c", URI, *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def findings(lab_cloud: str) -> list[dict[str, Any]]:
    proc = run_novaconsole("drift", "-f", "json", "--os-cloud", lab_cloud, timeout=120)
    assert proc.returncode in (0, 1), proc.stderr
    found: list[dict[str, Any]] = json.loads(proc.stdout)["findings"]
    return found


def wait_for_finding(lab_cloud: str, kind: str, server_id: str, seconds: float) -> dict[str, Any]:
    """Poll ``drift`` until it reports ``kind`` for ``server_id`` (a readiness wait)."""
    deadline = time.monotonic() + seconds
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        seen = findings(lab_cloud)
        for finding in seen:
            if finding["kind"] == kind and finding["server_id"] == server_id:
                return finding
        time.sleep(0.5)
    raise AssertionError(f"drift never reported {kind} for {server_id}; last findings: {seen}")


@pytest.fixture
def lab_guest(lab_state: LabConfig, lab_cloud: str) -> Iterator[Any]:
    with boot_lab_server(
        lab_cloud, "labagent-drift", image="novaconsole-test-raw", flavor="nc.tiny"
    ) as booted:
        yield booted.server


def test_a_guest_destroyed_behind_novas_back_is_drift_within_seconds(
    lab_guest: Any, lab_cloud: str
) -> None:
    assert not [f for f in findings(lab_cloud) if f["server_id"] == lab_guest.id]
    virsh("destroy", lab_guest.instance_name)
    # Nova's libvirt driver delays STOPPED lifecycle events by 15 s before it syncs the
    # power state itself: the agent's view must arrive well before that.
    finding = wait_for_finding(lab_cloud, "active-but-off", lab_guest.id, seconds=12)
    assert finding["host"] == "vm"
    assert "shut" in finding["hypervisor"]
    assert finding["nova_action"]  # what Nova's own periodic task will do, and when
    assert finding["when"]


def test_a_domain_defined_outside_nova_is_unknown(lab_state: LabConfig, lab_cloud: str) -> None:
    dom_uuid = str(uuid.uuid4())
    name = f"labagent-unknown-{dom_uuid[:8]}"
    xml = f"""<domain type='qemu'>
  <name>{name}</name><uuid>{dom_uuid}</uuid>
  <memory unit='MiB'>16</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type></os>
  <devices><emulator>/usr/bin/qemu-system-x86_64</emulator></devices>
</domain>"""
    path = lab_state.state_dir / f"{name}.xml"
    path.write_text(xml)
    try:
        virsh("define", str(path))
        finding = wait_for_finding(lab_cloud, "unknown-domain", dom_uuid, seconds=30)
        assert finding["host"] == "vm"
        assert name in finding["server_name"] or name in finding["summary"]
    finally:
        subprocess.run(["virsh", "-c", URI, "undefine", name], capture_output=True, check=False)
        path.unlink(missing_ok=True)
