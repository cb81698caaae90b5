"""Placement for the lab: its config, schema and API service."""

from __future__ import annotations

from typing import Any

from novaconsole.dburl import connection_url
from novaconsole.lab.config import LabConfig
from novaconsole.lab.generic import FileStep, ServicesStep, render_ini
from novaconsole.lab.stack.common import MarkedCommandStep, authtoken, inputs_hash
from novaconsole.lab.venvs import Venv
from novaconsole.services import ServiceKeeper, wsgi_service
from novaconsole.site import Site
from novaconsole.steps import Step


def placement_steps(
    config: LabConfig, site: Site, venv: Venv, keeper: ServiceKeeper
) -> list[Step[Any]]:
    etc = config.etc / "placement"
    conf = etc / "placement.conf"
    connection = connection_url(site, "placement")

    def render() -> str:
        return render_ini(
            {
                "DEFAULT": {"use_stderr": True},
                "placement_database": {"connection": connection},
                "api": {"auth_strategy": "keystone"},
                "keystone_authtoken": authtoken(config, "placement", site.secret("PLACEMENT_PASS")),
            }
        )

    service = wsgi_service(
        "placement-api",
        module="placement.wsgi.api",
        port=config.ports["placement"],
        bin_dir=venv.bin,
        shim_dir=config.services_dir / "wsgi",
        env={"OS_PLACEMENT_CONFIG_DIR": str(etc)},
    )
    return [
        FileStep("lab.placement.conf", conf, render, phase="dependencies"),
        MarkedCommandStep(
            "lab.placement.db-sync",
            [str(venv.bin / "placement-manage"), "--config-file", str(conf), "db", "sync"],
            marker=config.data_dir / "placement" / ".db-synced",
            key=inputs_hash(connection, venv.wanted()),
            phase="dependencies",
            description="placement-manage db sync",
            secrets=list(site.secrets.values()),
        ),
        ServicesStep(
            "lab.placement.service",
            keeper,
            [service],
            watched={"placement-api": [conf]},
            health={"placement-api": config.url("placement", "/")},
            phase="dependencies",
        ),
    ]
