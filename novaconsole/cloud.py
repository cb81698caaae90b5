"""Cloud access through openstacksdk's own config loader (clouds.yaml, OS_CLOUD, OS_*).

Nothing here parses clouds.yaml by hand: :func:`connect` asks ``openstack.config`` and
turns its failures into one-line :class:`~novaconsole.errors.NovaconsoleError` messages.
"""

from __future__ import annotations

import os
from typing import Any

from novaconsole.errors import ConfigError, ConnectionFailure

#: The cloud name ``novaconsole lab up`` writes into clouds.yaml.
LAB_CLOUD = "novaconsole-lab"


def default_cloud_name(explicit: str | None = None) -> str | None:
    """``--os-cloud`` if given, else ``OS_CLOUD``, else ``None`` (plain ``OS_*`` variables)."""
    return explicit or os.environ.get("OS_CLOUD") or None


def cloud_region(name: str | None, *, fallback_to_lab: bool = False) -> Any:
    """Load a cloud's configuration (an ``openstack.config.cloud_region.CloudRegion``).

    With ``fallback_to_lab``, a session with neither a name nor ``OS_AUTH_URL`` uses the
    lab's cloud, so ``novaconsole`` opens on the lab out of the box.
    """
    import openstack.config
    from openstack import exceptions

    if name is None and fallback_to_lab and not os.environ.get("OS_AUTH_URL"):
        name = LAB_CLOUD
    try:
        config = openstack.config.OpenStackConfig(load_envvars=name is None)
        return config.get_one(cloud=name)
    except exceptions.ConfigException as exc:
        where = f"cloud {name!r}" if name else "the OS_* environment"
        raise ConfigError(
            f"cannot load {where} from clouds.yaml/environment: {' '.join(str(exc).split())}",
            hint="list clouds with `openstack --os-cloud NAME ...` names in ~/.config/openstack/clouds.yaml",
        ) from exc


def connect(name: str | None, *, fallback_to_lab: bool = False, timeout: float = 15.0) -> Any:
    """An ``openstack.connection.Connection`` for the named cloud, with an API timeout."""
    import openstack.connection

    region = cloud_region(name, fallback_to_lab=fallback_to_lab)
    region.config.setdefault("api_timeout", timeout)
    return openstack.connection.Connection(config=region)


def describe_failure(exc: BaseException, what: str) -> ConnectionFailure:
    """Turn an openstacksdk/keystoneauth failure into a one-line, secret-free error."""
    from keystoneauth1 import exceptions as ka

    if isinstance(exc, ka.Unauthorized):
        return ConnectionFailure(
            f"{what}: authentication refused (wrong user, password or project)"
        )
    if isinstance(exc, ka.ConnectFailure | ka.ConnectTimeout):
        url = getattr(exc, "url", None) or ""
        return ConnectionFailure(f"{what}: cannot connect{(' to ' + url) if url else ''}")
    if isinstance(exc, ka.EndpointNotFound):
        return ConnectionFailure(f"{what}: no such endpoint in the catalog ({exc})")
    return ConnectionFailure(f"{what}: {type(exc).__name__}: {' '.join(str(exc).split())}")
