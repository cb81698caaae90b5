"""memcached for the lab: Keystone's cache and keystonemiddleware's token cache."""

from __future__ import annotations

from typing import Any

from novaconsole.lab.config import LabConfig
from novaconsole.lab.generic import ServicesStep
from novaconsole.services import ServiceKeeper, ServiceSpec
from novaconsole.steps import Step


def memcached_steps(config: LabConfig, keeper: ServiceKeeper) -> list[Step[Any]]:
    """memcached under the service keeper."""
    port = config.ports["memcached"]
    spec = ServiceSpec(
        "memcached",
        ("/usr/bin/memcached", "-u", "root", "-l", config.host, "-p", str(port), "-m", "64"),
        port=port,
    )
    # Always the lab's own: Keystone caches tokens and role ids there, and a memcached
    # left over from another Keystone serves stale ids (403s on a fresh lab).
    return [ServicesStep("lab.memcached", keeper, [spec], phase="prepare", start_timeout=20)]
