"""Helpers for the agent tests: key sets, config files, rabbitmqctl, readiness waits."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
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


@dataclass(frozen=True)
class AgentKeys:
    """A console key and one agent's key, laid out as provisioning would."""

    root: Path
    host: str

    @property
    def console_key(self) -> Path:
        return self.root / "console" / "console.key"

    @property
    def console_trusted(self) -> Path:
        """The console's keyring: the agents' public keys (``HOST.pub``)."""
        return self.root / "agent-keys"

    @property
    def agent_key(self) -> Path:
        return self.root / "agent" / f"{self.host}.key"

    @property
    def agent_trusted(self) -> Path:
        """The agent's keyring: the console's public keys."""
        return self.root / "console-keys"


def make_keys(root: Path, host: str) -> AgentKeys:
    keys = AgentKeys(root, host)
    generate_key_files(root / "console", "console")
    generate_key_files(root / "agent", host)
    keys.console_trusted.mkdir(parents=True)
    keys.agent_trusted.mkdir(parents=True)
    (keys.console_trusted / f"{host}.pub").write_bytes(
        (root / "agent" / f"{host}.pub").read_bytes()
    )
    (keys.agent_trusted / "console.pub").write_bytes(
        (root / "console" / "console.pub").read_bytes()
    )
    return keys


def bus_toml(vhost: str, signing_key: Path, trusted: Path, *, console_name: str = "test") -> str:
    return (
        "[bus]\n"
        'urls = ["amqp://127.0.0.1:5672"]\n'
        f'vhost = "{vhost}"\n'
        "heartbeat = 10\n"
        f'console_name = "{console_name}"\n'
        "[keys]\n"
        f'signing_key = "{signing_key}"\n'
        f'trusted = "{trusted}"\n'
    )


def console_settings(tmp: Path, vhost: str, keys: AgentKeys) -> BusSettings:
    path = tmp / "agents.toml"
    path.write_text(bus_toml(vhost, keys.console_key, keys.console_trusted))
    return BusSettings.load(path)


def agent_bus_settings(tmp: Path, vhost: str, keys: AgentKeys) -> BusSettings:
    path = tmp / "agent-bus.toml"
    path.write_text(bus_toml(vhost, keys.agent_key, keys.agent_trusted))
    return BusSettings.load(path)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def agent_toml(
    vhost: str,
    keys: AgentKeys,
    *,
    uri: str = "test:///default",
    allowed: list[str] | None = None,
    extra: str = "",
    heartbeat: float = 0.5,
    bus_extra: str = "",
) -> str:
    """An agent config file's text (bus on ``vhost``, the agent's key, trusting the console)."""
    allowed_line = "" if allowed is None else f"allowed = {allowed!r}\n".replace("'", '"')
    return (
        f'host = "{keys.host}"\n'
        f'libvirt_uri = "{uri}"\n'
        f"heartbeat_interval = {heartbeat}\n"
        f"{extra}"
        "[bus]\n"
        'urls = ["amqp://127.0.0.1:5672"]\n'
        f'vhost = "{vhost}"\n'
        "heartbeat = 10\n"
        f"{bus_extra}"
        "[keys]\n"
        f'signing_key = "{keys.agent_key}"\n'
        f'trusted = "{keys.agent_trusted}"\n'
        "[commands]\n"
        f"{allowed_line}"
    )


def rabbit_password_hash(password: str) -> str:
    """RabbitMQ's ``rabbit_password_hashing_sha256``: base64(salt + sha256(salt + password))."""
    import base64
    import hashlib
    import os

    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def add_rabbit_user(user: str, password: str, vhost: str) -> None:
    """Create a broker user with rights on ``vhost`` only, without the password in any
    argv (``rabbitmqctl add_user`` of 3.10 takes it as an argument): its salted hash
    through ``import_definitions`` on standard input."""
    import json

    defs = {
        "users": [
            {
                "name": user,
                "password_hash": rabbit_password_hash(password),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": "",
            }
        ],
        "permissions": [
            {"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
        ],
    }
    # Through standard input: rabbitmqctl reads files as the rabbitmq user, and a file of
    # ours is (rightly) not readable by it.
    subprocess.run(
        ["rabbitmqctl", "-q", "import_definitions"],
        input=json.dumps(defs),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # The import is asynchronous: wait until the broker knows the user and its rights.
    wait_for(
        f"user {user} on vhost {vhost}",
        lambda: any(
            line.split("\t")[0] == user
            for line in rabbitmqctl("list_permissions", "-p", vhost).splitlines()
        ),
    )
