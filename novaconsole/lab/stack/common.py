"""What several lab services share: a service user's authtoken section, the transport URL,
a command remembered by a marker file, and the lab cloud's connection."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from novaconsole.cloud import LAB_CLOUD
from novaconsole.fileutil import atomic_write
from novaconsole.lab.config import RABBIT_USER, LabConfig
from novaconsole.lab.generic import CommandStep
from novaconsole.site import Site
from novaconsole.steps import RunContext


def authtoken(config: LabConfig, user: str, password: str) -> dict[str, object]:
    """A ``[keystone_authtoken]`` section for a service user of the lab."""
    return {
        "www_authenticate_uri": config.url("keystone"),
        "auth_url": config.url("keystone"),
        "memcached_servers": f"{config.host}:{config.ports['memcached']}",
        "auth_type": "password",
        "project_domain_name": "Default",
        "user_domain_name": "Default",
        "project_name": "service",
        "username": user,
        "password": password,
        "service_token_roles_required": True,
    }


def transport_url(config: LabConfig, site: Site) -> str:
    """The oslo.messaging URL of the lab's RabbitMQ account (password URL-quoted)."""
    from urllib.parse import quote

    password = quote(site.secret("RABBIT_PASS"), safe="")
    return f"rabbit://{RABBIT_USER}:{password}@{config.rabbit_host}:{config.rabbit_port}/"


def _marker_needed(marker: Path, key: str) -> bool:
    try:
        return marker.read_text().split("\n", 1)[0] != key
    except FileNotFoundError:
        return True


class MarkedCommandStep(CommandStep):
    """A command whose success is remembered in a marker file keyed by its inputs."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        marker: Path,
        key: str,
        still_done: Callable[[], bool] | None = None,
        **kw: Any,
    ) -> None:
        """``still_done``, where given, confirms the marker against the real thing (a
        database dropped behind the lab's back needs its schema again)."""
        self.marker = marker
        self.key = key

        def needed() -> bool:
            return _marker_needed(marker, key) or (still_done is not None and not still_done())

        super().__init__(name, argv, needed=needed, **kw)

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        super().apply(ctx, changes)
        # The key, then when: a service that watches the marker restarts after each run
        # (Neutron fills its type drivers' allocation tables only at start).
        atomic_write(self.marker, f"{self.key}\n{time.time():.0f}\n", mode=0o600)


def inputs_hash(*parts: object) -> str:
    """A stable key for a :class:`MarkedCommandStep`'s marker: changes when an input does."""
    import hashlib

    return hashlib.sha256(repr(parts).encode()).hexdigest()


def lab_conn(ctx: RunContext) -> Any:
    """The lab cloud's openstacksdk connection, one per run (kept in the run's cache)."""
    conn = ctx.cache.get("lab-cloud")
    if conn is None:
        from novaconsole.cloud import connect

        conn = connect(LAB_CLOUD, timeout=60)
        ctx.cache["lab-cloud"] = conn
    return conn
