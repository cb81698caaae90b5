"""The lab's own steps: what the Nova guide assumes is already there.

Keystone, Glance, Placement and a Neutron API server (Nova 34 cannot list servers
without it), the message queue, memcached, noVNC's web files, a test image and flavor.
Nova itself is provisioned by the controller and compute plugins; the lab interleaves
its steps with theirs by phase.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from novaconsole.cloud import LAB_CLOUD
from novaconsole.dburl import connection_url
from novaconsole.errors import ConnectionFailure, StepFailed
from novaconsole.fileutil import atomic_write
from novaconsole.lab.config import RABBIT_USER, LabConfig
from novaconsole.lab.generic import (
    CommandStep,
    FileStep,
    ServicesStep,
    render_ini,
    run_quiet,
)
from novaconsole.lab.venvs import Venv, ensure_venvs, lab_venvs
from novaconsole.services import ServiceKeeper, ServiceSpec, port_owner, wsgi_service
from novaconsole.site import Site
from novaconsole.steps import RunContext, Step

#: Debian packages the lab needs on the host, by the binary or file that shows they are there.
SYSTEM_PACKAGES: dict[str, str] = {
    "libvirt-daemon-system": "/usr/sbin/libvirtd",
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    # Only "recommended" by qemu-system-x86, so absent on a minimal host; nova's libvirt
    # driver runs qemu-img on every image it caches (a build aborts without it).
    "qemu-utils": "/usr/bin/qemu-img",
    "libvirt-dev": "/usr/include/libvirt/libvirt.h",
    "pkg-config": "/usr/bin/pkg-config",
    "memcached": "/usr/bin/memcached",
    "novnc": "/usr/share/novnc/vnc_lite.html",
}

TEST_IMAGE = "novaconsole-test-raw"
TEST_FLAVOR = "nc.tiny"


# -- prepare ------------------------------------------------------------------------------


class SystemPackagesStep(Step[list[str]]):
    """Debian packages for libvirt/QEMU, memcached and noVNC (installed when root)."""

    name = "lab.system-packages"
    phase = "prepare"
    description = "host packages: libvirt, QEMU, memcached, noVNC"

    def check(self, ctx: RunContext) -> list[str]:
        return [pkg for pkg, path in SYSTEM_PACKAGES.items() if not Path(path).exists()]

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        return [f"apt-get install {' '.join(observed)}"] if observed else []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        missing = self.check(ctx)
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise StepFailed(
                f"missing host packages: {', '.join(missing)}",
                hint="install them with your package manager (root needed), then re-run lab up",
            )
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        run_quiet(["apt-get", "update", "-qq"], env=env, what="apt-get update")
        run_quiet(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env,
            what=f"apt-get install {' '.join(missing)}",
        )


class VenvsStep(Step[list[str]]):
    """The lab's Python environments (uv when available)."""

    name = "lab.venvs"
    phase = "prepare"
    description = "OpenStack services installed from PyPI into lab venvs"

    def __init__(self, config: LabConfig) -> None:
        self.config = config

    def check(self, ctx: RunContext) -> list[str]:
        return [v.name for v in lab_venvs(self.config.venvs_dir).values() if not v.is_current()]

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        return [f"install venv {name}" for name in observed]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        ensure_venvs(self.config.venvs_dir, log_path=self.config.state_dir / "logs" / "install.log")


class RabbitStep(Step[dict[str, bool]]):
    """A RabbitMQ account for OpenStack on the broker at 127.0.0.1:5672 (started if needed)."""

    name = "lab.rabbitmq"
    phase = "prepare"

    def __init__(self, config: LabConfig, password: str) -> None:
        self.config = config
        self.password = password
        self.description = (
            f"RabbitMQ user {RABBIT_USER} on {config.rabbit_host}:{config.rabbit_port}"
        )

    def _ctl(self, *args: str, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["rabbitmqctl", "-q", *args],
            input=input_text,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def check(self, ctx: RunContext) -> dict[str, bool]:
        up = port_owner(self.config.rabbit_host, self.config.rabbit_port)
        if not up or not shutil.which("rabbitmqctl"):
            return {"up": up, "auth": False, "perms": False}
        # The password travels on stdin, never on the command line.
        auth = self._ctl("authenticate_user", RABBIT_USER, input_text=self.password).returncode == 0
        perms = False
        if auth:
            listing = self._ctl("list_user_permissions", RABBIT_USER).stdout
            perms = any(
                line.split("\t")[:4] == ["/", ".*", ".*", ".*"] for line in listing.splitlines()
            )
        return {"up": True, "auth": auth, "perms": perms}

    def plan(self, ctx: RunContext, observed: dict[str, bool]) -> list[str]:
        changes = []
        if not observed["up"] and not shutil.which("rabbitmq-server"):
            changes.append("install rabbitmq-server (Debian) and start it (none answers on 5672)")
        elif not observed["up"]:
            changes.append("start a local rabbitmq-server (none answers on 5672)")
        if not observed["auth"]:
            changes.append(f"create or reset RabbitMQ user {RABBIT_USER}")
        if not observed["perms"]:
            changes.append(f"grant {RABBIT_USER} all permissions on vhost /")
        return changes

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        where = f"{self.config.rabbit_host}:{self.config.rabbit_port}"
        if not port_owner(self.config.rabbit_host, self.config.rabbit_port):
            if os.geteuid() != 0:
                raise ConnectionFailure(
                    f"RabbitMQ is unreachable at {where}",
                    hint="start a broker there (guest/guest admin access via rabbitmqctl) or run lab up as root",
                )
            if not shutil.which("rabbitmq-server"):
                env = {"DEBIAN_FRONTEND": "noninteractive"}
                run_quiet(["apt-get", "update", "-qq"], env=env, what="apt-get update")
                run_quiet(
                    ["apt-get", "install", "-y", "-qq", "rabbitmq-server"],
                    env=env,
                    what="install rabbitmq-server",
                )
            env = {
                "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            }
            # Debian's package may already have started the broker from its postinst.
            if not port_owner(self.config.rabbit_host, self.config.rabbit_port):
                run_quiet(
                    ["rabbitmq-server", "-detached"], env=env, what="rabbitmq-server -detached"
                )
            # Ours now: lab down stops it again.
            atomic_write(self.config.rabbit_marker, "started by novaconsole lab up\n")
            deadline = time.monotonic() + 120
            while not port_owner(self.config.rabbit_host, self.config.rabbit_port):
                if time.monotonic() > deadline:
                    raise ConnectionFailure(f"RabbitMQ did not come up at {where} within 120 s")
                time.sleep(1)
        if not shutil.which("rabbitmqctl"):
            raise ConnectionFailure(f"rabbitmqctl not found; cannot manage users on {where}")
        users = self._ctl("list_users").stdout
        exists = any(line.split("\t")[0] == RABBIT_USER for line in users.splitlines())
        if exists:
            proc = self._ctl("change_password", RABBIT_USER, input_text=self.password)
        else:
            proc = self._ctl("add_user", RABBIT_USER, input_text=self.password)
        if proc.returncode != 0:
            raise StepFailed(f"rabbitmqctl could not set up user {RABBIT_USER} on {where}")
        proc = self._ctl("set_permissions", "-p", "/", RABBIT_USER, ".*", ".*", ".*")
        if proc.returncode != 0:
            raise StepFailed(f"rabbitmqctl could not grant permissions to {RABBIT_USER} on {where}")


class NoVNCStep(Step[bool]):
    """noVNC's web files for nova-novncproxy (the Debian package, or unpacked from it)."""

    name = "lab.novnc"
    phase = "prepare"
    description = "noVNC web files"

    def __init__(self, config: LabConfig) -> None:
        self.config = config

    @property
    def target(self) -> Path:
        return novnc_dir(self.config)

    def check(self, ctx: RunContext) -> bool:
        return (self.target / "vnc_lite.html").exists()

    def plan(self, ctx: RunContext, observed: bool) -> list[str]:
        return [] if observed else [f"unpack Debian's novnc into {self.target}"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            run_quiet(
                ["apt-get", "download", "novnc"], what="apt-get download novnc", cwd=Path(tmp)
            )
            unpacked = Path(tmp) / "root"
            for deb in Path(tmp).glob("novnc_*.deb"):
                run_quiet(["dpkg-deb", "-x", str(deb), str(unpacked)], what="unpack novnc")
            shutil.copytree(unpacked / "usr/share/novnc", self.target, dirs_exist_ok=True)


class InstancesDirStep(Step[list[str]]):
    """The guests' disk directory, traversable by QEMU (which runs as libvirt-qemu)."""

    name = "lab.instances-dir"
    phase = "prepare"

    def __init__(self, config: LabConfig) -> None:
        self.path = config.instances_dir
        self.description = f"instances directory {self.path}"

    def _chain(self) -> list[Path]:
        # The directory and the parents we create (never chmod a system directory).
        return [self.path, *[p for p in self.path.parents if "novaconsole" in p.name]]

    def check(self, ctx: RunContext) -> list[str]:
        problems = []
        for directory in self._chain():
            if not directory.is_dir():
                problems.append(f"create {directory}")
            elif directory.stat().st_mode & 0o011 != 0o011:
                problems.append(f"allow traversal (0711) of {directory}")
        return problems

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        return observed

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        for directory in self._chain():
            directory.chmod(directory.stat().st_mode | 0o711)


def novnc_dir(config: LabConfig) -> Path:
    """Where noVNC's files are: the system's package if installed, else the lab's copy."""
    system = Path("/usr/share/novnc")
    return system if (system / "vnc_lite.html").exists() else config.data_dir / "novnc"


# -- shared pieces ------------------------------------------------------------------------


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
    from urllib.parse import quote

    password = quote(site.secret("RABBIT_PASS"), safe="")
    return f"rabbit://{RABBIT_USER}:{password}@{config.rabbit_host}:{config.rabbit_port}/"


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


# -- identity-bootstrap: keystone ---------------------------------------------------------


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
            key=_hash(connection, venv.wanted()),
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


# -- dependencies: glance, placement, neutron ---------------------------------------------


def _marker_needed(marker: Path, key: str) -> bool:
    try:
        return marker.read_text() != key
    except FileNotFoundError:
        return True


class MarkedCommandStep(CommandStep):
    """A command whose success is remembered in a marker file keyed by its inputs."""

    def __init__(
        self, name: str, argv: Sequence[str], *, marker: Path, key: str, **kw: Any
    ) -> None:
        self.marker = marker
        self.key = key
        super().__init__(name, argv, needed=lambda: _marker_needed(marker, key), **kw)

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        super().apply(ctx, changes)
        atomic_write(self.marker, self.key, mode=0o600)


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
            key=_hash(connection, venv.wanted()),
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
            key=_hash(connection, venv.wanted()),
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


def neutron_steps(
    config: LabConfig, site: Site, venv: Venv, keeper: ServiceKeeper
) -> list[Step[Any]]:
    etc = config.etc / "neutron"
    conf = etc / "neutron.conf"
    ml2 = etc / "plugins" / "ml2" / "ml2_conf.ini"
    paste = etc / "api-paste.ini"
    paste_src = venv.path / "etc" / "neutron" / "api-paste.ini"
    connection = connection_url(site, "neutron")
    data = config.data_dir / "neutron"

    def render() -> str:
        return render_ini(
            {
                "DEFAULT": {
                    "core_plugin": "ml2",
                    "service_plugins": "",
                    "auth_strategy": "keystone",
                    "api_paste_config": paste,
                    "transport_url": transport_url(config, site),
                    "notify_nova_on_port_status_changes": False,
                    "notify_nova_on_port_data_changes": False,
                    "api_workers": 1,
                    "rpc_workers": 0,
                    "rpc_state_report_workers": 0,
                    "use_stderr": True,
                    "state_path": data,
                },
                "database": {"connection": connection},
                "keystone_authtoken": authtoken(config, "neutron", site.secret("NEUTRON_PASS")),
                "oslo_concurrency": {"lock_path": data / "locks"},
            }
        )

    def render_ml2() -> str:
        return render_ini(
            {
                "ml2": {
                    "type_drivers": "flat",
                    "tenant_network_types": "",
                    "mechanism_drivers": "",
                    "extension_drivers": "",
                },
                "ml2_type_flat": {"flat_networks": "*"},
            }
        )

    service = wsgi_service(
        "neutron-api",
        module="neutron.wsgi.api",
        port=config.ports["neutron"],
        bin_dir=venv.bin,
        shim_dir=config.services_dir / "wsgi",
        env={"OS_NEUTRON_CONFIG_DIR": str(etc)},
        # Neutron's get_ports names back-references (Port.port_forwardings, ...) that exist
        # only once their models are imported *and* SQLAlchemy has configured mappers,
        # which a fresh worker has not done before its first query: without this, a
        # worker whose first request lists ports (every Nova server show) answers 500.
        prelude=(
            "import neutron.db.migration.models.head",
            "import sqlalchemy.orm",
            "sqlalchemy.orm.configure_mappers()",
        ),
    )
    return [
        FileStep("lab.neutron.conf", conf, render, phase="dependencies"),
        FileStep("lab.neutron.ml2", ml2, render_ml2, phase="dependencies"),
        FileStep("lab.neutron.paste", paste, paste_src.read_text, phase="dependencies"),
        MarkedCommandStep(
            "lab.neutron.db-sync",
            neutron_schema_argv(venv, conf, ml2, sqlite=site.uses_sqlite),
            marker=data / ".db-synced",
            key=_hash(connection, venv.wanted()),
            phase="dependencies",
            env={"NOVACONSOLE_DB_URL": connection},
            description="neutron-db-manage upgrade heads"
            + (" (SQLite: schema from models, then stamp)" if site.uses_sqlite else ""),
            secrets=list(site.secrets.values()),
        ),
        ServicesStep(
            "lab.neutron.service",
            keeper,
            [service],
            watched={"neutron-api": [conf, ml2]},
            health={"neutron-api": config.url("neutron", "/")},
            phase="dependencies",
        ),
    ]


#: Neutron's migrations ALTER constraints, which SQLite cannot do; its own tests build the
#: schema from the models instead. We do the same, then stamp the heads so a later
#: ``upgrade heads`` knows where the schema stands. The URL comes from the environment.
_NEUTRON_SQLITE_SCHEMA = """\
import os, sys
from sqlalchemy import create_engine
from neutron.db.migration.models import head
head.get_metadata().create_all(create_engine(os.environ["NOVACONSOLE_DB_URL"]))
from neutron.db.migration.cli import main
sys.argv = ["neutron-db-manage", *sys.argv[1:], "stamp", "heads"]
main()
"""


def neutron_schema_argv(venv: Venv, conf: Path, ml2: Path, *, sqlite: bool) -> list[str]:
    """The command that brings Neutron's schema to the heads."""
    files = ["--config-file", str(conf), "--config-file", str(ml2)]
    if sqlite:
        return [str(venv.python), "-c", _NEUTRON_SQLITE_SCHEMA, *files]
    return [str(venv.bin / "neutron-db-manage"), *files, "upgrade", "heads"]


def _hash(*parts: object) -> str:
    import hashlib

    return hashlib.sha256(repr(parts).encode()).hexdigest()


# -- finish: image, flavor ----------------------------------------------------------------


class TestImageStep(Step[str | None]):
    """A small raw test image, uploaded and active (1 MiB: the guest shows SeaBIOS)."""

    name = "lab.image"
    phase = "finish"
    description = f"image {TEST_IMAGE} active in Glance"

    def check(self, ctx: RunContext) -> str | None:
        image = _conn(ctx).image.find_image(TEST_IMAGE, ignore_missing=True)
        return None if image is None else str(image.status)

    def plan(self, ctx: RunContext, observed: str | None) -> list[str]:
        if observed == "active":
            return []
        if observed is None:
            return [f"upload {TEST_IMAGE} (raw, 1 MiB)"]
        return [f"replace {TEST_IMAGE} (status {observed})"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        conn = _conn(ctx)
        old = conn.image.find_image(TEST_IMAGE, ignore_missing=True)
        if old is not None:
            conn.image.delete_image(old)
        conn.image.create_image(
            name=TEST_IMAGE,
            data=b"\0" * (1 << 20),
            disk_format="raw",
            container_format="bare",
            visibility="public",
            wait=True,
            timeout=120,
        )


class TestFlavorStep(Step[bool]):
    """A tiny flavor for test servers (64 MB RAM, 1 vCPU, 1 GB disk)."""

    name = "lab.flavor"
    phase = "finish"
    description = f"flavor {TEST_FLAVOR}"

    def check(self, ctx: RunContext) -> bool:
        return _conn(ctx).compute.find_flavor(TEST_FLAVOR, ignore_missing=True) is not None

    def plan(self, ctx: RunContext, observed: bool) -> list[str]:
        return [] if observed else [f"create flavor {TEST_FLAVOR}"]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        _conn(ctx).compute.create_flavor(name=TEST_FLAVOR, ram=64, vcpus=1, disk=1, is_public=True)


class ComputeServicesUpStep(Step[list[str]]):
    """Every nova service reports up before `lab up` says the lab is up.

    A nova-compute that was just (re)started keeps its old heartbeat until its first
    report (report_interval 10 s), so a lab that says "up" could still show it down.
    """

    name = "lab.compute-services-up"
    phase = "finish"
    description = "every Nova service reports up"
    timeout = 120.0

    def check(self, ctx: RunContext) -> list[str]:
        services = list(_conn(ctx).compute.services())
        if not services:
            return ["(no Nova service registered yet)"]
        return [f"{s.binary}@{s.host}" for s in services if s.state != "up"]

    def plan(self, ctx: RunContext, observed: list[str]) -> list[str]:
        return [f"wait for {name} to report up" for name in observed]

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        from keystoneauth1 import exceptions as ka

        deadline = time.monotonic() + self.timeout
        while True:
            try:
                down = self.check(ctx)
            except ka.ConnectFailure as exc:
                # A just-started nova-api, or a keep-alive connection the server closed
                # just as this poll reused it (gunicorn keeps idle ones 2 s): ask again.
                if time.monotonic() > deadline:
                    raise StepFailed(f"nova-api does not answer: {exc}") from None
                down = ["nova-api"]
            if not down:
                return
            if time.monotonic() > deadline:
                raise StepFailed(
                    f"{', '.join(down)} still down after {self.timeout:.0f} s",
                    hint="see the service's log under the lab's services/logs",
                )
            time.sleep(1.5)


def _conn(ctx: RunContext) -> Any:
    conn = ctx.cache.get("lab-cloud")
    if conn is None:
        from novaconsole.cloud import connect

        conn = connect(LAB_CLOUD, timeout=60)
        ctx.cache["lab-cloud"] = conn
    return conn
