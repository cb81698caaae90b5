"""Fixtures for the agent and its bus: a RabbitMQ vhost of the session's own, key pairs.

The broker is the machine's real RabbitMQ on 127.0.0.1:5672 (guest/guest); each test
session creates a vhost of its own with ``rabbitmqctl`` and deletes it at the end, so
tests never see the lab's or another session's messages.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from agenttools import AgentKeys, make_keys, rabbitmqctl


@pytest.fixture(scope="session")
def bus_vhost() -> Iterator[str]:
    vhost = f"novaconsole-test-agent-{os.getpid()}"
    try:
        rabbitmqctl("add_vhost", vhost)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"rabbitmqctl add_vhost {vhost}: {exc} (is RabbitMQ running on 127.0.0.1?)")
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    yield vhost
    rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def agent_keys(tmp_path: Path) -> AgentKeys:
    return make_keys(tmp_path / "keys", host="testhost")
