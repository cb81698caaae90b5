"""The agent ``lab up`` provisions: a service of the lab, with a broker user of its own,
enrolled keys, and a console that finds its bus with no extra step.

The lab's own agent is only looked at: its inventory against ``virsh``, its broker
permissions, and that no secret is in its arguments or its log.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from agenttools import wait_for

from novaconsole.agentbus import Inventory, parse_body
from novaconsole.agentbus.bus import ConsoleBus, agent_permissions
from novaconsole.agentbus.settings import BusSettings
from novaconsole.lab.config import LabConfig

pytestmark = pytest.mark.lab


def _uuids_from_virsh() -> set[str]:
    names = subprocess.run(
        ["virsh", "-r", "-c", "qemu:///system", "list", "--all", "--uuid"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return set(names)


def _agent_pid(lab_state: LabConfig) -> int:
    out = subprocess.run(
        ["pgrep", "-f", "--", f"--config {lab_state.state_dir / 'agent' / 'agent.toml'}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    assert out, "no novaconsole-agent process runs for the lab"
    return int(out[0])


def test_lab_status_lists_the_agent_running(lab_state: LabConfig) -> None:
    from labtools import run_novaconsole

    proc = run_novaconsole("lab", "status")
    assert proc.returncode == 0, proc.stderr
    line = next(li for li in proc.stdout.splitlines() if li.startswith("novaconsole-agent"))
    assert "RUNNING" in line


def test_the_console_reaches_the_lab_agent_and_it_agrees_with_virsh(
    lab_state: LabConfig,
) -> None:
    settings = BusSettings.load(lab_state.state_dir / "bus" / "agents.toml")
    bus = ConsoleBus(settings)
    bus.start(wait=15)
    try:
        # Other tests boot and delete guests on the shared lab: compare one fresh
        # inventory with virsh taken right after it, a few times until both agree.
        def agreeing() -> tuple[set[str], set[str]] | None:
            reply = bus.request("vm", "inventory", timeout=15)
            assert reply.ok, reply.error
            assert reply.result is not None
            inventory = Inventory.from_dict(reply.result["inventory"])
            ours = {d.uuid for d in inventory.domains}
            theirs = _uuids_from_virsh()
            return (ours, theirs) if ours == theirs else None

        ours, theirs = wait_for("agent inventory equal to virsh list --all", agreeing, 60)
        assert ours == theirs
        latest = bus.latest(timeout=10)
        assert "vm" in latest
        assert latest["vm"].heartbeat is not None
        body = parse_body("heartbeat", latest["vm"].heartbeat.body)
        assert body is not None
    finally:
        bus.stop()


def test_the_agent_has_least_broker_permissions_and_no_secret_in_argv_or_log(
    lab_state: LabConfig,
) -> None:
    perms = subprocess.run(
        ["rabbitmqctl", "-q", "list_user_permissions", "novaconsole-agent-vm"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    want = agent_permissions("vm")
    assert f"/novaconsole\t{want.configure}\t{want.write}\t{want.read}" in perms.splitlines()
    assert ".*\t.*\t.*" not in perms

    password = (lab_state.state_dir / "agent" / "bus.password").read_text().strip()
    key = (lab_state.state_dir / "agent" / "vm.key").read_text()
    key_body = "".join(line for line in key.splitlines() if "-----" not in line)
    cmdline = Path(f"/proc/{_agent_pid(lab_state)}/cmdline").read_bytes().decode()
    log = (lab_state.services_dir / "logs" / "novaconsole-agent.log").read_text()
    for text in (cmdline, log):
        assert password not in text
        assert key_body not in text
    assert (lab_state.state_dir / "agent" / "bus.password").stat().st_mode & 0o077 == 0
    assert (lab_state.state_dir / "agent" / "vm.key").stat().st_mode & 0o077 == 0
