"""Neutron for the lab: ML2/OVN (the API server, OVN's maintenance worker, the metadata
agent) and the lab's networks; or, with ``--networking none``, the API server alone.

With OVN, Neutron's database is on a database server (the local MariaDB by default):
ML2/OVN's OVSDB thread reads the hash ring while a request thread holds SQLite's one write
lock and waits for that thread, which deadlocks (seen here on every port create).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from novaconsole.dburl import connection_url
from novaconsole.lab.config import LabConfig
from novaconsole.lab.generic import FileStep, ServicesStep, render_ini
from novaconsole.lab.stack import ovn as ovnlab
from novaconsole.lab.stack.common import (
    MarkedCommandStep,
    authtoken,
    inputs_hash,
    lab_conn,
    transport_url,
)
from novaconsole.lab.venvs import Venv
from novaconsole.services import ServiceKeeper, ServiceSpec, wsgi_service
from novaconsole.site import Site
from novaconsole.steps import RunContext, Step

#: The lab's tenant network (shared, so every project's servers can use it) and router.
LAB_NETWORK = "novaconsole-lab-net"
LAB_SUBNET_CIDR = "10.42.0.0/24"
LAB_ROUTER = "novaconsole-lab-router"
PUBLIC_NETWORK = "public"
#: A security group that lets the machine reach the lab's guests: ping, ssh and http.
#: Neutron's default group admits nothing from outside the group.
LAB_SECURITY_GROUP = "novaconsole-lab-open"
_OPEN_RULES = (("icmp", None), ("tcp", 22), ("tcp", 80))

#: Sections whose privsep daemons Neutron's agents start (each needs the venv's helper).
_PRIVSEP_SECTIONS = (
    "privsep",
    "privsep_namespace",
    "privsep_link",
    "privsep_ovs_vsctl",
    "privsep_conntrack",
    "privsep_dhcp_release",
)


def neutron_steps(
    config: LabConfig, site: Site, venv: Venv, keeper: ServiceKeeper
) -> list[Step[Any]]:
    etc = config.etc / "neutron"
    conf = etc / "neutron.conf"
    ml2 = etc / "plugins" / "ml2" / "ml2_conf.ini"
    paste = etc / "api-paste.ini"
    paste_src = venv.path / "etc" / "neutron" / "api-paste.ini"
    metadata_ini = etc / "neutron_ovn_metadata_agent.ini"
    connection = connection_url(site, "neutron")
    data = config.data_dir / "neutron"
    ovn = config.networking == "ovn"

    def render() -> str:
        sections: dict[str, dict[str, object]] = {
            "DEFAULT": {
                "core_plugin": "ml2",
                "service_plugins": "ovn-router" if ovn else "",
                "auth_strategy": "keystone",
                "api_paste_config": paste,
                "transport_url": transport_url(config, site),
                # Nova waits for network-vif-plugged before it starts a guest.
                "notify_nova_on_port_status_changes": ovn,
                "notify_nova_on_port_data_changes": ovn,
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
        if ovn:
            sections["nova"] = {
                "auth_type": "password",
                "auth_url": config.url("keystone"),
                "project_domain_name": "Default",
                "user_domain_name": "Default",
                "project_name": "service",
                "username": "nova",
                "password": site.secret("NOVA_PASS"),
                "region_name": config.region,
            }
        return render_ini(sections)

    def render_ml2() -> str:
        if not ovn:
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
        return render_ini(
            {
                "ml2": {
                    "type_drivers": "local,flat,geneve",
                    "tenant_network_types": "geneve",
                    "mechanism_drivers": "ovn",
                    "extension_drivers": "port_security",
                    "overlay_ip_version": 4,
                },
                "ml2_type_flat": {"flat_networks": ovnlab.PROVIDER_PHYSNET},
                "ml2_type_geneve": {"vni_ranges": "1:65536", "max_header_size": 38},
                "ovn": {
                    "ovn_nb_connection": ovnlab.nb_connection(config),
                    "ovn_sb_connection": ovnlab.sb_connection(config),
                    "ovn_l3_scheduler": "leastloaded",
                    "ovn_metadata_enabled": True,
                    "enable_distributed_floating_ip": False,
                    # At start the maintenance worker makes OVN's northbound database match
                    # Neutron's (a Neutron database rebuilt under it left stale NAT rules,
                    # and a new floating IP reached another guest).
                    "ovn_nb_sync_mode": "repair",
                },
            }
        )

    def render_metadata_agent() -> str:
        privsep_helper = (
            f"{venv.bin / 'privsep-helper'} --config-file {conf} --config-file {metadata_ini}"
        )
        return render_ini(
            {
                "DEFAULT": {
                    "nova_metadata_host": config.host,
                    "nova_metadata_port": config.ports["nova-metadata"],
                    "metadata_proxy_shared_secret": site.secret("METADATA_SECRET"),
                    "metadata_workers": 1,
                    "state_path": data,
                    "use_stderr": True,
                },
                # The lab runs as root: commands run as they are (no sudo, no rootwrap).
                "agent": {"root_helper": ""},
                "ovs": {"ovsdb_connection": ovnlab.OVSDB_CONNECTION},
                "ovn": {"ovn_sb_connection": ovnlab.sb_connection(config)},
                **{s: {"helper_command": privsep_helper} for s in _PRIVSEP_SECTIONS},
            }
        )

    service = wsgi_service(
        "neutron-api",
        module="neutron.wsgi.api",
        port=config.ports["neutron"],
        bin_dir=venv.bin,
        shim_dir=config.services_dir / "wsgi",
        # ML2/OVN sizes its hash ring by the API workers; gunicorn runs one (the variable is
        # how Neutron learns the count from a server that is neither uWSGI nor mod_wsgi).
        env={"OS_NEUTRON_CONFIG_DIR": str(etc), **({"ASGI_WORKERS": "1"} if ovn else {})},
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
    files = ["--config-file", str(conf), "--config-file", str(ml2)]
    workers = [
        ServiceSpec(
            "neutron-ovn-maintenance-worker",
            (str(venv.bin / "neutron-ovn-maintenance-worker"), *files),
        ),
        ServiceSpec(
            "neutron-ovn-metadata-agent",
            (
                str(venv.bin / "neutron-ovn-metadata-agent"),
                "--config-file",
                str(conf),
                "--config-file",
                str(metadata_ini),
            ),
        ),
    ]
    ovn_files = (
        [
            FileStep(
                "lab.neutron.metadata-agent",
                metadata_ini,
                render_metadata_agent,
                phase="dependencies",
            )
        ]
        if ovn
        else []
    )
    return [
        FileStep("lab.neutron.conf", conf, render, phase="dependencies"),
        *ovn_files,
        FileStep("lab.neutron.ml2", ml2, render_ml2, phase="dependencies"),
        FileStep("lab.neutron.paste", paste, paste_src.read_text, phase="dependencies"),
        MarkedCommandStep(
            "lab.neutron.db-sync",
            neutron_schema_argv(venv, conf, ml2, sqlite=site.database_url_for("neutron") is None),
            marker=data / ".db-synced",
            key=inputs_hash(connection, venv.wanted()),
            still_done=None
            if site.database_url_for("neutron") is None
            else lambda: schema_present(connection),
            phase="dependencies",
            env={"NOVACONSOLE_DB_URL": connection},
            description="neutron-db-manage upgrade heads"
            + (
                " (SQLite: schema from models, then stamp)"
                if site.database_url_for("neutron") is None
                else ""
            ),
            secrets=list(site.secrets.values()),
        ),
        ServicesStep(
            "lab.neutron.service",
            keeper,
            [service, *(workers if ovn else [])],
            watched={
                "neutron-api": [conf, ml2, data / ".db-synced"],
                "neutron-ovn-maintenance-worker": [conf, ml2],
                "neutron-ovn-metadata-agent": [conf, metadata_ini],
            },
            health={"neutron-api": config.url("neutron", "/")},
            phase="dependencies",
        ),
    ]


def schema_present(url: str) -> bool:
    """Whether Neutron's database at ``url`` (mysql+pymysql) holds its alembic version:
    False when it is unreachable or was dropped and created again empty."""
    from urllib.parse import unquote, urlsplit

    import pymysql

    parts = urlsplit(url)
    try:
        conn = pymysql.connect(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 3306,
            user=unquote(parts.username or ""),
            password=unquote(parts.password or ""),
            database=parts.path.lstrip("/"),
            connect_timeout=5,
        )
    except pymysql.MySQLError:
        return False
    try:
        with conn.cursor() as cur:
            cur.execute("SHOW TABLES LIKE 'alembic_version'")
            return cur.fetchone() is not None
    finally:
        conn.close()


class LabNetworksStep(Step[dict[str, bool]]):
    """The provider network ``public`` (flat, on br-ex), a shared tenant network with a
    subnet, and a router between them: what devstack gives a new cloud."""

    name = "lab.networks"
    phase = "finish"
    description = f"networks {PUBLIC_NETWORK} and {LAB_NETWORK}, router {LAB_ROUTER}"

    def check(self, ctx: RunContext) -> dict[str, bool]:
        net = lab_conn(ctx).network
        public = net.find_network(PUBLIC_NETWORK, ignore_missing=True)
        lab = net.find_network(LAB_NETWORK, ignore_missing=True)
        router = net.find_router(LAB_ROUTER, ignore_missing=True)
        return {
            "public": public is not None and bool(public.subnet_ids),
            "lab": lab is not None and bool(lab.subnet_ids),
            "security_group": net.find_security_group(LAB_SECURITY_GROUP, ignore_missing=True)
            is not None,
            "router": router is not None
            and bool(router.external_gateway_info)
            and lab is not None
            and any(
                p.device_owner == "network:router_interface"
                for p in net.ports(device_id=router.id, network_id=lab.id)
            ),
        }

    def plan(self, ctx: RunContext, observed: dict[str, bool]) -> list[str]:
        changes = []
        if not observed["public"]:
            changes.append(f"create provider network {PUBLIC_NETWORK} ({ovnlab.PROVIDER_CIDR})")
        if not observed["lab"]:
            changes.append(f"create network {LAB_NETWORK} ({LAB_SUBNET_CIDR}, shared)")
        if not observed["router"]:
            changes.append(f"create router {LAB_ROUTER} ({LAB_NETWORK} to {PUBLIC_NETWORK})")
        if not observed["security_group"]:
            changes.append(f"create security group {LAB_SECURITY_GROUP} (icmp, tcp 22 and 80 in)")
        return changes

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        net = lab_conn(ctx).network
        public = net.find_network(PUBLIC_NETWORK, ignore_missing=True) or net.create_network(
            name=PUBLIC_NETWORK,
            is_router_external=True,
            is_shared=False,
            provider_network_type="flat",
            provider_physical_network=ovnlab.PROVIDER_PHYSNET,
        )
        if not public.subnet_ids:
            start, end = ovnlab.PROVIDER_POOL
            net.create_subnet(
                name=f"{PUBLIC_NETWORK}-subnet",
                network_id=public.id,
                ip_version=4,
                cidr=ovnlab.PROVIDER_CIDR,
                gateway_ip=ovnlab.PROVIDER_GATEWAY,
                allocation_pools=[{"start": start, "end": end}],
                is_dhcp_enabled=False,
            )
        lab = net.find_network(LAB_NETWORK, ignore_missing=True) or net.create_network(
            name=LAB_NETWORK, is_shared=True
        )
        subnet_id = lab.subnet_ids[0] if lab.subnet_ids else None
        if subnet_id is None:
            subnet_id = net.create_subnet(
                name=f"{LAB_NETWORK}-subnet",
                network_id=lab.id,
                ip_version=4,
                cidr=LAB_SUBNET_CIDR,
                is_dhcp_enabled=True,
            ).id
        router = net.find_router(LAB_ROUTER, ignore_missing=True) or net.create_router(
            name=LAB_ROUTER
        )
        if not router.external_gateway_info:
            net.update_router(router, external_gateway_info={"network_id": public.id})
        if not any(
            p.device_owner == "network:router_interface"
            for p in net.ports(device_id=router.id, network_id=lab.id)
        ):
            net.add_interface_to_router(router, subnet_id=subnet_id)
        if net.find_security_group(LAB_SECURITY_GROUP, ignore_missing=True) is None:
            group = net.create_security_group(
                name=LAB_SECURITY_GROUP,
                description="novaconsole lab: ping, ssh and http from anywhere",
            )
            for protocol, port in _OPEN_RULES:
                net.create_security_group_rule(
                    security_group_id=group.id,
                    direction="ingress",
                    ethertype="IPv4",
                    protocol=protocol,
                    port_range_min=port,
                    port_range_max=port,
                    remote_ip_prefix="0.0.0.0/0",
                )


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
