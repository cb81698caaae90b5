"""Keystone for the lab: its config, schema, keys, service and bootstrap; the admin's
``novaconsole-lab`` cloud in clouds.yaml and the guide's admin-openrc."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from novaconsole.cloud import LAB_CLOUD
from novaconsole.dburl import connection_url
from novaconsole.errors import StepFailed
from novaconsole.fileutil import atomic_write
from novaconsole.lab.config import LabConfig
from novaconsole.lab.generic import CommandStep, FileStep, ServicesStep, render_ini
from novaconsole.lab.stack.common import MarkedCommandStep, inputs_hash
from novaconsole.lab.venvs import Venv
from novaconsole.services import ServiceKeeper, wsgi_service
from novaconsole.site import Site
from novaconsole.steps import RunContext, Step


def keystone_steps(
    config: LabConfig, site: Site, venv: Venv, keeper: ServiceKeeper
) -> list[Step[Any]]:
    etc = config.etc / "keystone"
    conf = etc / "keystone.conf"
    data = config.data_dir / "keystone"
    fernet = data / "fernet-keys"
    credential = data / "credential-keys"
    manage = [str(venv.bin / "keystone-manage"), "--config-file", str(conf)]
    connection = connection_url(site, "keystone")

    def render() -> str:
        return render_ini(
            {
                "DEFAULT": {"use_stderr": True},
                "database": {"connection": connection},
                "token": {"provider": "fernet"},
                # A lab: bcrypt's cheapest cost keeps every token request fast.
                "identity": {"password_hash_rounds": 4},
                "fernet_tokens": {"key_repository": fernet},
                "credential": {"key_repository": credential},
                # Token validation on every API call of every service is Keystone's
                # hot path; memcached (already there for keystonemiddleware) caches it.
                "cache": {
                    "enabled": True,
                    "backend": "oslo_cache.memcache_pool",
                    "memcache_servers": f"{config.host}:{config.ports['memcached']}",
                },
            }
        )

    def keys_needed(path: Path) -> bool:
        return not path.is_dir() or not any(path.iterdir())

    def bootstrap_needed() -> bool:
        return not keystone_password_ok(config, site.secret("ADMIN_PASS"))

    service = wsgi_service(
        "keystone",
        module="keystone.wsgi.api",
        port=config.ports["keystone"],
        bin_dir=venv.bin,
        shim_dir=config.services_dir / "wsgi",
        env={"OS_KEYSTONE_CONFIG_DIR": str(etc)},
        # Single-threaded workers: Keystone 30 builds its policy enforcer lazily, and
        # concurrent first requests to a fresh worker race it (403/500 for an admin,
        # reproduced here). Its writes are rare, so two processes share SQLite fine.
        workers=2,
        threads=1,
    )
    setup_user = ["--keystone-user", "root", "--keystone-group", "root"]
    return [
        FileStep("lab.keystone.conf", conf, render, phase="identity-bootstrap"),
        MarkedCommandStep(
            "lab.keystone.db-sync",
            [*manage, "db_sync"],
            # `db_sync --check` costs ~10 s of keystone-manage start-up on every re-run.
            marker=data / ".db-synced",
            key=inputs_hash(connection, venv.wanted()),
            phase="identity-bootstrap",
            description="keystone-manage db_sync",
            secrets=list(site.secrets.values()),
        ),
        CommandStep(
            "lab.keystone.fernet",
            [*manage, "fernet_setup", *setup_user],
            needed=lambda: keys_needed(fernet),
            phase="identity-bootstrap",
            description="keystone-manage fernet_setup",
        ),
        CommandStep(
            "lab.keystone.credential",
            [*manage, "credential_setup", *setup_user],
            needed=lambda: keys_needed(credential),
            phase="identity-bootstrap",
            description="keystone-manage credential_setup",
        ),
        ServicesStep(
            "lab.keystone.service",
            keeper,
            [service],
            watched={"keystone": [conf]},
            health={"keystone": config.url("keystone", "/v3")},
            phase="identity-bootstrap",
        ),
        CommandStep(
            "lab.keystone.bootstrap",
            [
                *manage,
                "bootstrap",
                "--bootstrap-username",
                "admin",
                "--bootstrap-project-name",
                "admin",
                "--bootstrap-role-name",
                "admin",
                "--bootstrap-service-name",
                "keystone",
                "--bootstrap-region-id",
                config.region,
                "--bootstrap-admin-url",
                config.url("keystone", "/v3/"),
                "--bootstrap-internal-url",
                config.url("keystone", "/v3/"),
                "--bootstrap-public-url",
                config.url("keystone", "/v3/"),
            ],
            # keystone-manage reads the password from the environment: never on argv.
            env={"OS_BOOTSTRAP_PASSWORD": site.secret("ADMIN_PASS")},
            needed=bootstrap_needed,
            phase="identity-bootstrap",
            description="keystone-manage bootstrap (admin user, identity endpoints)",
            secrets=list(site.secrets.values()),
        ),
        CloudsYamlStep(config, site.secret("ADMIN_PASS")),
        FileStep(
            "lab.admin-openrc",
            config.state_dir / "admin-openrc",
            lambda: admin_openrc(config, site.secret("ADMIN_PASS")),
            mode=0o600,
            phase="identity-bootstrap",
        ),
    ]


def keystone_password_ok(config: LabConfig, password: str) -> bool:
    """True when the lab's admin can get a token with ``password``."""
    import json
    import urllib.error
    import urllib.request

    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {"name": "admin", "domain": {"id": "default"}, "password": password}
                },
            },
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}},
        }
    }
    request = urllib.request.Request(
        config.url("keystone", "/v3/auth/tokens"),
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return bool(resp.status == 201)
    except (urllib.error.URLError, OSError):
        return False


def cloud_entry(config: LabConfig, password: str) -> dict[str, Any]:
    return {
        "auth": {
            "auth_url": config.url("keystone", "/v3"),
            "username": "admin",
            "password": password,
            "project_name": "admin",
            "user_domain_name": "Default",
            "project_domain_name": "Default",
        },
        "region_name": config.region,
        "interface": "public",
        "identity_api_version": 3,
    }


def clouds_yaml_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "openstack" / "clouds.yaml"


class CloudsYamlStep(Step[dict[str, Any] | None]):
    """The ``novaconsole-lab`` cloud in the user's clouds.yaml, merged with what is there."""

    name = "lab.clouds-yaml"
    phase = "identity-bootstrap"

    def __init__(self, config: LabConfig, password: str) -> None:
        self.config = config
        self.password = password
        self.path = clouds_yaml_path()
        self.description = f"cloud {LAB_CLOUD} in {self.path}"

    def _load(self) -> dict[str, Any]:
        try:
            data = yaml.safe_load(self.path.read_text()) or {}
        except FileNotFoundError:
            return {}
        except yaml.YAMLError as exc:
            raise StepFailed(
                f"{self.path} is not valid YAML; not touching it ({exc.__class__.__name__})"
            ) from exc
        if not isinstance(data, dict) or not isinstance(data.get("clouds", {}), dict):
            raise StepFailed(f"{self.path} has no 'clouds' mapping; not touching it")
        return data

    def check(self, ctx: RunContext) -> dict[str, Any] | None:
        entry = self._load().get("clouds", {}).get(LAB_CLOUD)
        return entry if isinstance(entry, dict) else None

    def plan(self, ctx: RunContext, observed: dict[str, Any] | None) -> list[str]:
        if observed is None:
            return [f"add cloud {LAB_CLOUD} to {self.path}"]
        if observed != cloud_entry(self.config, self.password):
            return [f"update cloud {LAB_CLOUD} in {self.path}"]
        return []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        data = self._load()
        data.setdefault("clouds", {})[LAB_CLOUD] = cloud_entry(self.config, self.password)
        mode = (self.path.stat().st_mode & 0o777) if self.path.exists() else 0o600
        atomic_write(self.path, yaml.safe_dump(data, sort_keys=False), mode=mode & 0o700 or 0o600)


def admin_openrc(config: LabConfig, password: str) -> str:
    """The guide's ``admin-openrc``."""
    return (
        "# novaconsole lab admin credentials: `. admin-openrc`\n"
        "export OS_PROJECT_DOMAIN_NAME=Default\n"
        "export OS_USER_DOMAIN_NAME=Default\n"
        "export OS_PROJECT_NAME=admin\n"
        "export OS_USERNAME=admin\n"
        f"export OS_PASSWORD='{password}'\n"
        f"export OS_AUTH_URL={config.url('keystone', '/v3')}\n"
        "export OS_IDENTITY_API_VERSION=3\n"
        "export OS_IMAGE_API_VERSION=2\n"
        f"export OS_REGION_NAME={config.region}\n"
    )
