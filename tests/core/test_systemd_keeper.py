"""SystemdUnits against a real systemd (PID 1 of a throw-away test machine).

The keeper runs inside the machine (nsenter), as ``lab up`` would on a systemd host; a tiny
Python service stands in for a Nova service. Marked ``systemd``: it boots a machine (~2 s).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from systemd_machine import SystemdMachine, can_boot

pytestmark = [
    pytest.mark.systemd,
    pytest.mark.skipif(can_boot() is not None, reason=str(can_boot())),
]

SERVICE = """\
import os, signal, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"demo started pid={os.getpid()} GREETING={os.environ.get('GREETING')!r}", flush=True)
if os.environ.get("FAIL"):
    sys.exit(3)
while True:
    time.sleep(60)
"""

#: Runs one keeper call inside the machine and prints its result as JSON.
DRIVER = """\
import json, sys
from pathlib import Path
from novaconsole.errors import NovaconsoleError
from novaconsole.services import ServiceSpec, SystemdUnits
state_dir, action, arg = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
keeper = SystemdUnits(Path(state_dir), prefix="novaconsole-test-")
specs = [ServiceSpec(name=s["name"], argv=tuple(s["argv"]), env=s.get("env", {}), stop_wait=5)
         for s in arg.get("specs", [])]
try:
    if action == "up":
        out = {"pending": keeper.pending(specs), "changed": keeper.install(specs)}
        keeper.apply(restart=arg.get("restart", []))
        out["states"] = {n: [s.state, s.pid] for n, s in keeper.wait_running(
            [s.name for s in specs], timeout=arg.get("timeout", 20)).items()}
    elif action == "status":
        out = {n: [s.state, s.pid] for n, s in keeper.status().items()}
    elif action == "down":
        out = {"alive": keeper.stop_all(timeout=20)}
    print(json.dumps(out))
except NovaconsoleError as exc:
    print(json.dumps({"error": exc.one_line()}))
"""


@pytest.fixture(scope="module")
def machine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SystemdMachine]:
    shared = tmp_path_factory.mktemp("systemd-keeper")
    with SystemdMachine(shared) as booted:
        yield booted


def keeper(machine: SystemdMachine, state_dir: Path, action: str, **arg: Any) -> dict[str, Any]:
    proc = machine.run(sys.executable, "-c", DRIVER, str(state_dir), action, json.dumps(arg))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def demo_spec(shared: Path, greeting: str, **env: str) -> dict[str, Any]:
    script = shared / "demo_service.py"
    script.write_text(SERVICE)
    return {
        "name": "demo",
        "argv": [sys.executable, str(script)],
        "env": {"GREETING": greeting, **env},
    }


def systemctl(machine: SystemdMachine, *args: str) -> str:
    return machine.run("systemctl", *args).stdout.strip()


def wait_for(predicate: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    return predicate()


def test_units_start_survive_crashes_restart_on_change_and_stop(
    machine: SystemdMachine,
) -> None:
    shared = machine.shared
    state = shared / "site-a" / "services"
    # %, $, quotes and spaces must reach the service verbatim (systemd expands % and $).
    tricky = '50% of $HOME\'s "quoted" words'
    first = keeper(machine, state, "up", specs=[demo_spec(shared, tricky)])
    assert first["changed"] == ["demo"]
    state_name, pid = first["states"]["demo"]
    assert state_name == "RUNNING"
    assert pid
    assert systemctl(machine, "is-enabled", "novaconsole-test-demo.service") == "enabled"
    log = state / "logs" / "demo.log"
    assert wait_for(lambda: f"GREETING={tricky!r}" in log.read_text())

    # The same definition again: nothing written, nothing restarted.
    again = keeper(machine, state, "up", specs=[demo_spec(shared, tricky)])
    assert again["pending"] == []
    assert again["changed"] == []
    assert again["states"]["demo"][1] == pid

    # Killed behind our back: systemd starts it again (Restart=on-failure).
    machine.run("kill", "-KILL", str(pid))

    def restarted() -> int | None:
        state_name, new_pid = keeper(machine, state, "status")["demo"]
        return new_pid if state_name == "RUNNING" and new_pid not in (None, pid) else None

    revived = wait_for(restarted)
    assert revived, keeper(machine, state, "status")

    # A changed definition is pending, then rewritten and the service restarted with it.
    changed = keeper(machine, state, "up", specs=[demo_spec(shared, "second")])
    assert changed["pending"] == ["demo"]
    assert changed["changed"] == ["demo"]
    assert changed["states"]["demo"][1] not in (pid, revived)
    assert wait_for(lambda: "GREETING='second'" in log.read_text())

    # Down: stopped, disabled and removed; no process left in the machine.
    down = keeper(machine, state, "down")
    assert down["alive"] == []
    assert machine.processes() == []
    assert machine.run("test", "-e", "/etc/systemd/system/novaconsole-test-demo.service").returncode
    assert systemctl(machine, "is-enabled", "novaconsole-test-demo.service") == ""
    assert keeper(machine, state, "status") == {}
    back = keeper(machine, state, "up", specs=[demo_spec(shared, "second")])
    assert back["changed"] == ["demo"]
    assert back["states"]["demo"][0] == "RUNNING"
    assert keeper(machine, state, "down")["alive"] == []


def test_another_state_dirs_unit_is_refused_not_taken_over(machine: SystemdMachine) -> None:
    shared = machine.shared
    owner = shared / "site-owner" / "services"
    other = shared / "site-other" / "services"
    keeper(machine, owner, "up", specs=[demo_spec(shared, "mine")])
    try:
        refused = keeper(machine, other, "up", specs=[demo_spec(shared, "theirs")])
        assert refused["error"].startswith("/etc/systemd/system/novaconsole-test-demo.service")
        assert f"belongs to the state directory {owner}" in refused["error"]
        assert "\n" not in refused["error"]
        unit = machine.run("cat", "/etc/systemd/system/novaconsole-test-demo.service").stdout
        assert "GREETING=mine" in unit
    finally:
        keeper(machine, owner, "down")


def test_a_service_that_keeps_failing_is_reported_with_its_log(machine: SystemdMachine) -> None:
    shared = machine.shared
    state = shared / "site-failing" / "services"
    broken = demo_spec(shared, "x", FAIL="1")
    try:
        result = keeper(machine, state, "up", specs=[broken], timeout=4)
        error = result["error"]
        assert error.startswith("service demo is ")
        assert error.endswith(f"not RUNNING; see {state / 'logs' / 'demo.log'}")
        assert "demo started" in (state / "logs" / "demo.log").read_text()
    finally:
        keeper(machine, state, "down")
    assert machine.processes() == []


def test_machine_writes_nothing_outside_its_shared_directory(machine: SystemdMachine) -> None:
    """The harness itself: what is written inside never reaches this machine's files."""
    assert machine.run("test", "-d", "/run/systemd/system").returncode == 0
    probe = "/etc/systemd/system/novaconsole-test-probe.target"
    assert machine.run("sh", "-c", f"echo '[Unit]' > {probe}").returncode == 0
    assert machine.run("test", "-f", probe).returncode == 0
    assert not Path(probe).exists()
    assert not list(Path("/etc/systemd/system").glob("novaconsole-test-*"))
    # And PID 1 in there is systemd, not this machine's init.
    assert machine.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    assert os.readlink(f"/proc/{machine.pid1}/exe").endswith("systemd")
