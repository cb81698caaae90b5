"""The console's data layer over openstacksdk: typed rows, no Textual."""

from __future__ import annotations

from novaconsole.sources.base import SERVER_ACTIONS, CloudSource
from novaconsole.sources.rows import (
    CloudInfo,
    EndpointRow,
    HypervisorRow,
    ImageRow,
    ResourceUse,
    ServerRow,
    ServiceRow,
)

__all__ = [
    "SERVER_ACTIONS",
    "CloudInfo",
    "CloudSource",
    "EndpointRow",
    "HypervisorRow",
    "ImageRow",
    "ResourceUse",
    "ServerRow",
    "ServiceRow",
]
