"""The agent as a process: ``--once``, the import guard, secrets, SIGKILL and restart."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from agenttools import (
    AgentKeys,
    add_rabbit_user,
    agent_toml,
    console_settings,
    rabbitmqctl,
    wait_for,
)

from novaconsole.agentbus import Message, parse_body
from novaconsole.agentbus.bus import ConsoleBus

#: Modules that would make the agent heavy (openstacksdk and its auth, the TUI).
FORBIDDEN = ("openstack", "keystoneauth1", "textual", "rich")
#: What the daemon has no use for and once carried (bench/agent_footprint.py): the second
#: OpenSSL inside cryptography (the bus signs through the interpreter's own libcrypto),
#: and the modules of sub-commands it never runs (the lab, provisioning, the VNC bridge).
HEAVY = (
    "cryptography",
    "novaconsole.lab",
    "novaconsole.provision",
    "novaconsole.steps",
    "novaconsole.vnc",
    "novaconsole_consoles.command",
)


def agent_argv(config: Path, *extra: str, importtime: bool = False) -> list[str]:
    flags = ["-X", "importtime"] if importtime else []
    return [
        sys.executable,
        *flags,
        "-m",
        "novaconsole",
        "--plugin",
        "compute-agent",
        "--config",
        str(config),
        *extra,
    ]


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from ``python -X importtime`` output on stderr."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name and name != "imported package":
                names.add(name)
    return names


def forbidden(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in FORBIDDEN)


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.lock = threading.Lock()

    def __call__(self, message: Message) -> None:
        with self.lock:
            self.messages.append(message)

    def inventories(self, cause: str) -> list[Message]:
        with self.lock:
            return [
                m for m in self.messages if m.kind == "inventory" and m.body.get("cause") == cause
            ]


@pytest.fixture
def console(
    tmp_path: Path, bus_vhost: str, agent_keys: AgentKeys
) -> Iterator[tuple[ConsoleBus, Recorder]]:
    got = Recorder()
    bus = ConsoleBus(console_settings(tmp_path, bus_vhost, agent_keys))
    bus.start(got)
    yield bus, got
    bus.stop()


def test_once_prints_inventory_and_imports_no_openstacksdk_or_textual(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('host = "testhost"\nlibvirt_uri = "test:///default"\n')
    proc = subprocess.run(
        agent_argv(config, "--once", importtime=True),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    inventory = parse_body("inventory", __import__("json").loads(proc.stdout))
    assert inventory.host.nova_host == "testhost"
    assert [d.name for d in inventory.domains] == ["test"]
    modules = imported_modules(proc.stderr)
    assert "libvirt" in modules  # the parse works: the agent's own imports are listed
    assert "novaconsole_agent.daemon" in modules
    assert forbidden(modules) == []


def test_once_with_libvirt_unreachable_is_one_line_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('host = "testhost"\nlibvirt_uri = "qemu+tcp://127.0.0.1:1/system"\n')
    proc = subprocess.run(
        agent_argv(config, "--once"), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("novaconsole: error: libvirt qemu+tcp://127.0.0.1:1/system: ")


def test_bad_config_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('host = "testhost"\nheartbeat_interval = "often"\n')
    proc = subprocess.run(
        agent_argv(config, "--once"), capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"novaconsole: error: {config}: heartbeat_interval: expected a number from 0.2 to 3600 "
        "(seconds)"
    )


def _stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _out, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _out, err = proc.communicate()
    return err


def test_daemon_imports_no_openstacksdk_and_logs_no_secret(
    tmp_path: Path,
    bus_vhost: str,
    agent_keys: AgentKeys,
    console: tuple[ConsoleBus, Recorder],
) -> None:
    """The daemon, with a broker user of its own whose password is in a file: the password
    and the private key appear in no log line and no argv; no openstacksdk, no Textual."""
    user = f"agent-test-{os.getpid()}"
    password = secrets.token_urlsafe(24)
    add_rabbit_user(user, password, bus_vhost)
    try:
        pw_file = tmp_path / "bus.password"
        pw_file.write_text(password + "\n")
        pw_file.chmod(0o600)
        config = tmp_path / "agent.toml"
        config.write_text(
            agent_toml(
                bus_vhost,
                agent_keys,
                bus_extra=f'user = "{user}"\npassword_file = "{pw_file}"\n',
                allowed=["inventory", "stats", "domain_xml"],
            )
        )
        bus, got = console
        proc = subprocess.Popen(
            agent_argv(config, importtime=True),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            wait_for("the agent's start inventory", lambda: got.inventories("start"))
            assert bus.request("testhost", "inventory").ok
            assert bus.request("testhost", "domain_xml", {"name": "test"}).ok
            refused = bus.request("testhost", "screenshot", {"name": "test"})
            assert not refused.ok
            argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode()
        finally:
            err = _stop(proc)
        assert proc.returncode == 0, err[-2000:]
    finally:
        rabbitmqctl("delete_user", user)
    key_body = "".join(agent_keys.agent_key.read_text().splitlines()[1:-1])
    log_lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert any("connected to amqp://127.0.0.1:5672" in line for line in log_lines), log_lines
    assert any("screenshot is not enabled" in line for line in log_lines)
    for text in (argv, err):
        assert password not in text
        assert key_body not in text
        assert key_body[:40] not in text
    modules = imported_modules(err)
    assert "novaconsole.agentbus.bus" in modules  # the parse sees the daemon's imports
    assert forbidden(modules) == []
    assert heavy(modules) == []


def test_wrong_password_is_logged_without_it(
    tmp_path: Path, bus_vhost: str, agent_keys: AgentKeys
) -> None:
    password = secrets.token_urlsafe(24)
    pw_file = tmp_path / "bus.password"
    pw_file.write_text(password)
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_toml(
            bus_vhost,
            agent_keys,
            bus_extra=f'user = "nosuchuser"\npassword_file = "{pw_file}"\n',
        )
    )
    proc = subprocess.Popen(
        agent_argv(config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(
            "a refused login in the log",
            lambda: any("ACCESS_REFUSED" in x or "Authentication" in x for x in lines),
        )
    finally:
        _stop(proc)
        reader.join(10)
    assert all(password not in line for line in lines)
    refused = [x for x in lines if "ACCESS_REFUSED" in x or "Authentication" in x]
    assert all(x.count("\n") == 1 for x in refused)


def test_sigkill_and_restart_resyncs(
    tmp_path: Path,
    bus_vhost: str,
    agent_keys: AgentKeys,
    console: tuple[ConsoleBus, Recorder],
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        agent_toml(bus_vhost, agent_keys, extra=f'state_dir = "{tmp_path / "state"}"\n')
    )
    bus, got = console
    first = subprocess.Popen(
        agent_argv(config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        start = wait_for("the first start inventory", lambda: got.inventories("start"))[0]
        assert bus.request("testhost", "stats").ok
    finally:
        first.kill()  # SIGKILL: no goodbye, nothing flushed
        first.wait(30)
    assert first.returncode == -signal.SIGKILL
    second = subprocess.Popen(
        agent_argv(config), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        again = wait_for(
            "a start inventory from the restarted agent",
            lambda: [m for m in got.inventories("start") if m.boot != start.boot],
        )[0]
        assert again.seq == 1  # a new boot numbers its events from 1 again
        assert bus.request("testhost", "stats").ok
    finally:
        err = _stop(second)
    assert second.returncode == 0, err[-2000:]
    journal = (tmp_path / "state" / "commands.jsonl").read_text().splitlines()
    # One command before the kill, one after: each ran once.
    assert sum('"state": "done"' in line for line in journal) == 2
