"""Glance for the lab: a file store under the lab's data directory, behind Keystone."""

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


def glance_steps(
    config: LabConfig, site: Site, venv: Venv, keeper: ServiceKeeper
) -> list[Step[Any]]:
    etc = config.etc / "glance"
    conf = etc / "glance-api.conf"
    data = config.data_dir / "glance"
    paste_src = venv.path / "etc" / "glance" / "glance-api-paste.ini"
    connection = connection_url(site, "glance")

    def render() -> str:
        return render_ini(
            {
                "DEFAULT": {"enabled_backends": "fs:file", "use_stderr": True, "workers": 1},
                "database": {"connection": connection},
                "keystone_authtoken": authtoken(config, "glance", site.secret("GLANCE_PASS")),
                "paste_deploy": {"flavor": "keystone"},
                "glance_store": {"default_backend": "fs"},
                "fs": {"filesystem_store_datadir": data / "images"},
                "os_glance_staging_store": {"filesystem_store_datadir": data / "staging"},
                "os_glance_tasks_store": {"filesystem_store_datadir": data / "tasks"},
                "oslo_concurrency": {"lock_path": data / "locks"},
            }
        )

    service = wsgi_service(
        "glance-api",
        module="glance.wsgi.api",
        port=config.ports["glance"],
        bin_dir=venv.bin,
        shim_dir=config.services_dir / "wsgi",
        env={"OS_GLANCE_CONFIG_DIR": str(etc)},
    )
    return [
        FileStep("lab.glance.conf", conf, render, phase="dependencies"),
        FileStep(
            "lab.glance.paste",
            etc / "glance-api-paste.ini",
            paste_src.read_text,
            phase="dependencies",
        ),
        MarkedCommandStep(
            "lab.glance.db-sync",
            [str(venv.bin / "glance-manage"), "--config-file", str(conf), "db_sync"],
            marker=data / ".db-synced",
            key=inputs_hash(connection, venv.wanted()),
            phase="dependencies",
            description="glance-manage db_sync",
            secrets=list(site.secrets.values()),
        ),
        ServicesStep(
            "lab.glance.service",
            keeper,
            [service],
            watched={"glance-api": [conf]},
            health={"glance-api": config.url("glance", "/healthcheck")},
            phase="dependencies",
        ),
    ]
