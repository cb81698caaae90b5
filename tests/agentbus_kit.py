"""A real agent bus for the console-side tests: a vhost of its own, keys, config files.

The broker is the machine's RabbitMQ on 127.0.0.1:5672 (guest/guest). Each user of
:func:`bus_vhost` gets a vhost of its own (deleted afterwards), so tests never see the
lab's or another session's messages. Keys are real Ed25519 pairs laid out as provisioning
would: the console's private key and a directory of the agents' public keys.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from novaconsole.agentbus.keys import generate_key_files
from novaconsole.agentbus.settings import BusSettings

T = TypeVar("T")


def rabbitmqctl(*args: str) -> str:
    proc = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=60, check=True
    )
    return proc.stdout


@contextmanager
def bus_vhost(prefix: str = "novaconsole-test-agentui") -> Iterator[str]:
    """A fresh vhost on the real broker, guest allowed everything in it."""
    vhost = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


def _toml(vhost: str, signing_key: Path, trusted: Path, console_name: str) -> str:
    return (
        "[bus]\n"
        'urls = ["amqp://127.0.0.1:5672"]\n'
        f'vhost = "{vhost}"\n'
        'user = "guest"\n'
        'password_env = "NOVACONSOLE_TEST_BUS_PASSWORD"\n'
        "heartbeat = 10\n"
        f'console_name = "{console_name}"\n'
        "[keys]\n"
        f'signing_key = "{signing_key}"\n'
        f'trusted = "{trusted}"\n'
    )


#: The broker password reaches the bus through the environment, never a file or argv.
PASSWORD_ENV = {"NOVACONSOLE_TEST_BUS_PASSWORD": "guest"}


@dataclass(frozen=True)
class BusKit:
    """Keys and config files for one console and some agents on one vhost."""

    root: Path
    vhost: str

    @property
    def console_config(self) -> Path:
        return self.root / "agents.toml"

    @property
    def console_trusted(self) -> Path:
        return self.root / "agent-keys"

    def enrol(self, host: str) -> None:
        """Make an agent key pair for ``host`` and let the console trust its public key."""
        generate_key_files(self.root / "agent", host)
        (self.console_trusted / f"{host}.pub").write_bytes(
            (self.root / "agent" / f"{host}.pub").read_bytes()
        )

    def agent_settings(self, host: str) -> BusSettings:
        path = self.root / f"agent-{host}.toml"
        path.write_text(
            _toml(self.vhost, self.root / "agent" / f"{host}.key", self.root / "console-keys", host)
        )
        return BusSettings.from_tables(_load(path), path, environ=PASSWORD_ENV)

    def daemon_config(self, host: str, uri: str = "test:///default") -> Path:
        """A config file for the real agent daemon (``novaconsole --plugin compute-agent``)."""
        path = self.root / f"daemon-{host}.toml"
        bus = _toml(
            self.vhost, self.root / "agent" / f"{host}.key", self.root / "console-keys", host
        )
        path.write_text(
            f'host = "{host}"\n'
            f'libvirt_uri = "{uri}"\n'
            "heartbeat_interval = 1\n"
            f'state_dir = "{self.root / f"state-{host}"}"\n' + bus
        )
        return path

    def console_settings(self) -> BusSettings:
        return BusSettings.from_tables(
            _load(self.console_config), self.console_config, environ=PASSWORD_ENV
        )

    def env(self) -> dict[str, str]:
        """What a console process needs to find this bus."""
        return {"NOVACONSOLE_AGENTS_CONFIG": str(self.console_config), **PASSWORD_ENV}


def _load(path: Path) -> dict[str, object]:
    import tomllib

    return tomllib.loads(path.read_text())


def make_kit(root: Path, vhost: str, hosts: list[str], console_name: str = "test") -> BusKit:
    kit = BusKit(root, vhost)
    generate_key_files(root / "console", "console")
    kit.console_trusted.mkdir(parents=True)
    (root / "console-keys").mkdir()
    (root / "console-keys" / "console.pub").write_bytes(
        (root / "console" / "console.pub").read_bytes()
    )
    for host in hosts:
        kit.enrol(host)
    kit.console_config.write_text(
        _toml(vhost, root / "console" / "console.key", kit.console_trusted, console_name)
    )
    return kit


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0) -> T:
    """A readiness wait with a deadline: poll ``probe`` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)
