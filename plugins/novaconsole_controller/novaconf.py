"""nova.conf for the controller: every section the guide names plus what Nova 34 needs.

The options are built from the :class:`~novaconsole.site.Site`; ``Site.nova_options`` adds
or overrides options and may use the guide's old names, which are translated (each with a
note). The file is edited with :mod:`novaconsole.iniconf`, so only these keys change; an
operator's other keys, comments and order stay, and the compute plugin's keys are its own.
"""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from novaconsole.dburl import connection_url
from novaconsole.errors import ConfigError, StepFailed
from novaconsole.iniconf import (
    IniDocument,
    OptionChange,
    Want,
    Wanted,
    WantedValue,
    file_mode_differs,
    plan_options,
    update_file,
)
from novaconsole.site import SECRET_NAMES, Site
from novaconsole.steps import RunContext, Step

NOVA_CONF_MODE = 0o640
STATE_DIR_MODE = 0o750

#: Old (section, option) -> new (section, option), with why.
RENAMED: dict[tuple[str, str], tuple[str, str]] = {
    ("vnc", "vncserver_listen"): ("vnc", "server_listen"),
    ("vnc", "vncserver_proxyclient_address"): ("vnc", "server_proxyclient_address"),
    ("DEFAULT", "vncserver_listen"): ("vnc", "server_listen"),
    ("DEFAULT", "vncserver_proxyclient_address"): ("vnc", "server_proxyclient_address"),
    ("DEFAULT", "vnc_enabled"): ("vnc", "enabled"),
    ("DEFAULT", "novncproxy_base_url"): ("vnc", "novncproxy_base_url"),
    ("DEFAULT", "novncproxy_host"): ("vnc", "novncproxy_host"),
    ("DEFAULT", "novncproxy_port"): ("vnc", "novncproxy_port"),
    ("keystone_authtoken", "auth_uri"): ("keystone_authtoken", "www_authenticate_uri"),
    ("DEFAULT", "auth_strategy"): ("api", "auth_strategy"),
    ("placement", "os_region_name"): ("placement", "region_name"),
    ("placement", "os_interface"): ("placement", "valid_interfaces"),
    ("neutron", "url"): ("neutron", "endpoint_override"),
}

#: Options that no longer exist in Nova 34, with what replaced them.
REMOVED: dict[tuple[str, str], str] = {
    ("DEFAULT", "use_neutron"): "nova-network is gone; Nova always uses Neutron",
    ("DEFAULT", "firewall_driver"): "security groups are Neutron's job now",
    ("DEFAULT", "rpc_backend"): "[DEFAULT] transport_url selects the message queue",
    ("DEFAULT", "network_api_class"): "nova-network is gone",
    ("DEFAULT", "security_group_api"): "security groups are Neutron's job now",
    ("DEFAULT", "linuxnet_interface_driver"): "nova-network is gone",
    ("DEFAULT", "consoleauth_topic"): "nova-consoleauth is gone (tokens live in the cell DB)",
    ("DEFAULT", "consoleauth_manager"): "nova-consoleauth is gone (tokens live in the cell DB)",
    ("oslo_messaging_rabbit", "rabbit_host"): "[DEFAULT] transport_url replaces it",
    ("oslo_messaging_rabbit", "rabbit_port"): "[DEFAULT] transport_url replaces it",
    ("oslo_messaging_rabbit", "rabbit_userid"): "[DEFAULT] transport_url replaces it",
    ("oslo_messaging_rabbit", "rabbit_password"): "[DEFAULT] transport_url replaces it",
}

_OLD_KEYSTONE_ADMIN_PORT = re.compile(r"(://[^/\s:]+):35357\b")
_PLACEHOLDER = re.compile(r"\b(" + "|".join(SECRET_NAMES) + r")\b")


@dataclass
class Translated:
    """Site options after translation, and the notes saying what was translated."""

    options: dict[str, dict[str, WantedValue]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def translate_port(url: str) -> tuple[str, bool]:
    """Keystone's old admin port 35357 becomes 5000 (Keystone has one port now)."""
    new = _OLD_KEYSTONE_ADMIN_PORT.sub(r"\1:5000", url)
    return new, new != url


def translate_options(options: dict[str, dict[str, str]], site: Site | None = None) -> Translated:
    """Translate the guide's old names; unknown sections and options pass through unchanged.

    A value that names a guide placeholder (``NOVA_PASS``, ``RABBIT_PASS`` ...) gets the
    secret of that name from ``site`` and is treated as secret.
    """
    out = Translated()
    for section, opts in options.items():
        for option, raw in opts.items():
            value = str(raw)
            key = (section, option)
            if key in REMOVED:
                out.notes.append(f"dropped [{section}] {option} from the site file: {REMOVED[key]}")
                continue
            if key in RENAMED:
                new_section, new_option = RENAMED[key]
                out.notes.append(
                    f"translated [{section}] {option} to [{new_section}] {new_option} (Nova 34 name)"
                )
                section_out, option_out = new_section, new_option
            else:
                section_out, option_out = section, option
            value, changed_port = translate_port(value)
            if changed_port:
                out.notes.append(
                    f"translated port 35357 to 5000 in [{section_out}] {option_out} "
                    "(Keystone has one port)"
                )
            wanted: WantedValue = value
            if _PLACEHOLDER.search(value):
                if site is None:
                    raise ConfigError(f"[{section}] {option} names a secret but no site is given")
                wanted = Want(_PLACEHOLDER.sub(lambda m: site.secret(m[1]), value), secret=True)
            out.options.setdefault(section_out, {})[option_out] = wanted
    return out


def keystone_url(site: Site, ctx: RunContext | None = None) -> str:
    """``site.keystone_url`` with port 35357 translated (noted)."""
    url, changed = translate_port(site.keystone_url.rstrip("/"))
    if changed and ctx is not None:
        ctx.note(f"translated keystone_url port 35357 to 5000: {url}")
    return url


def transport_url(site: Site) -> str:
    """``rabbit://USER:RABBIT_PASS@HOST:PORT/`` (contains a secret)."""
    host = f"[{site.rabbit_host}]" if ":" in site.rabbit_host else site.rabbit_host
    password = quote(site.secret("RABBIT_PASS"), safe="")
    return f"rabbit://{quote(site.rabbit_user, safe='')}:{password}@{host}:{site.rabbit_port}/"


def _service_auth(
    site: Site, auth_url: str, username: str, password: str
) -> dict[str, WantedValue]:
    return {
        "auth_type": "password",
        "auth_url": auth_url,
        "project_domain_name": "Default",
        "user_domain_name": "Default",
        "project_name": "service",
        "username": username,
        "password": Want(password, secret=True),
    }


def controller_options(
    site: Site, ctx: RunContext | None = None, *, controller: bool = True
) -> Wanted:
    """Every option the controller owns in nova.conf (values may be secret).

    With ``controller=False``: the part a compute node needs as well (message queue,
    Keystone, Placement, Glance, service user), without database connections.
    """
    auth = keystone_url(site, ctx)
    nova_pass = site.secret("NOVA_PASS")
    wanted: dict[str, dict[str, WantedValue]] = {
        "DEFAULT": {
            "enabled_apis": "osapi_compute,metadata",
            "transport_url": Want(transport_url(site), secret=True),
            "my_ip": site.my_ip,
            "state_path": str(site.state_path),
        },
        "api_database": {"connection": Want(connection_url(site, "nova", "nova_api"), secret=True)},
        "database": {"connection": Want(connection_url(site, "nova", "nova"), secret=True)},
        "api": {"auth_strategy": "keystone"},
        "keystone_authtoken": {
            "www_authenticate_uri": auth,
            "memcached_servers": site.memcached_servers,
            **_service_auth(site, auth, "nova", nova_pass),
        },
        "vnc": {
            "enabled": "true",
            # Compute-node options too: a default only, so the compute plugin's value stands.
            "server_listen": Want("$my_ip", only_if_missing=True),
            "server_proxyclient_address": Want("$my_ip", only_if_missing=True),
            "novncproxy_host": site.my_ip,
            "novncproxy_port": str(site.novncproxy_port),
        },
        "glance": {"api_servers": site.glance_url},
        "oslo_concurrency": {"lock_path": str(site.lock_path)},
        "placement": {
            "region_name": site.region,
            **_placement_auth(site, auth, nova_pass, ctx),
        },
        "service_user": {
            "send_service_user_token": "true",
            **_service_auth(site, auth, "nova", nova_pass),
        },
        # One worker each: every worker is another 110-180 MB process (ARCHITECTURE.md).
        "conductor": {"workers": "1"},
        "scheduler": {"workers": "1"},
    }
    if site.serial_console and controller:
        # Where nova-serialproxy listens (the compute node's [serial_console] options,
        # enabled, port_range, base_url and proxyclient_address, are the compute plugin's).
        wanted["serial_console"] = {
            "serialproxy_host": site.my_ip,
            "serialproxy_port": str(site.serialproxy_port),
        }
    if site.neutron_url:
        user, password = (
            ("neutron", site.secrets["NEUTRON_PASS"])
            if site.secrets.get("NEUTRON_PASS")
            else ("nova", nova_pass)
        )
        wanted["neutron"] = {
            **_service_auth(site, auth, user, password),
            "region_name": site.region,
            "endpoint_override": site.neutron_url,
            "service_metadata_proxy": "true" if site.metadata_api else "false",
        }
        if site.metadata_api:
            wanted["neutron"]["metadata_proxy_shared_secret"] = site.secret("METADATA_SECRET")
    if not controller:
        # A compute node has no database access (the guide's compute section) and runs
        # none of the controller's workers or proxies.
        for section in ("api_database", "database", "conductor", "scheduler"):
            wanted.pop(section, None)
        for key in ("novncproxy_host", "novncproxy_port"):
            wanted["vnc"].pop(key, None)
    translated = translate_options(site.nova_options, site)
    if ctx is not None:
        for text in translated.notes:
            ctx.note(text)
    for section, opts in translated.options.items():
        wanted.setdefault(section, {}).update(opts)
    return wanted


def _placement_auth(
    site: Site, auth: str, nova_pass: str, ctx: RunContext | None
) -> dict[str, WantedValue]:
    if site.secrets.get("PLACEMENT_PASS"):
        return _service_auth(site, auth, "placement", site.secrets["PLACEMENT_PASS"])
    if ctx is not None:
        ctx.note("PLACEMENT_PASS is not set: [placement] authenticates as the nova user")
    return _service_auth(site, auth, "nova", nova_pass)


@dataclass
class ConfObserved:
    """Pending option changes, file mode and missing state directories."""

    changes: list[OptionChange]
    wrong_mode: bool
    missing_dirs: list[Path]


class NovaConfStep(Step[ConfObserved]):
    """Write the controller's options into nova.conf (atomically, mode 0640)."""

    name = "controller.nova_conf"
    phase = "config"

    def __init__(self, site: Site, *, for_compute_node: bool = False) -> None:
        self.site = site
        self.path = site.nova_conf
        self.controller = not for_compute_node
        if for_compute_node:
            self.name = "controller.nova_conf.compute_node"
            self.description = f"nova.conf options a compute node shares, in {site.nova_conf}"
        else:
            self.description = f"nova.conf controller options in {site.nova_conf}"

    def _dirs(self) -> list[Path]:
        return [self.site.state_path, self.site.lock_path]

    def check(self, ctx: RunContext) -> ConfObserved:
        wanted = controller_options(self.site, ctx, controller=self.controller)
        changes = plan_options(IniDocument.load(self.path), wanted)
        return ConfObserved(
            changes,
            file_mode_differs(self.path, NOVA_CONF_MODE),
            [d for d in self._dirs() if not d.is_dir()],
        )

    def plan(self, ctx: RunContext, observed: ConfObserved) -> list[str]:
        plan = [f"create directory {d} (mode 0750)" for d in observed.missing_dirs]
        if not self.path.exists():
            plan.append(f"create {self.path} (mode 0640)")
        plan += [c.describe() for c in observed.changes]
        if observed.wrong_mode:
            mode = stat.S_IMODE(self.path.stat().st_mode)
            plan.append(f"set mode 0640 on {self.path} (was {mode:04o})")
        return plan

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        # Secrets are resolved before any write.
        wanted = controller_options(self.site, ctx, controller=self.controller)
        try:
            for directory in self._dirs():
                directory.mkdir(parents=True, exist_ok=True, mode=STATE_DIR_MODE)
        except OSError as exc:
            raise StepFailed(f"{self.name}: cannot create {exc.filename}: {exc.strerror}") from None
        done = update_file(self.path, wanted, mode=NOVA_CONF_MODE)
        ctx.log(f"{self.name}: {len(done)} option(s) written to {self.path}")


def nova_conf_digest(path: Path) -> str | None:
    """SHA-256 of nova.conf (services restart when it changes), or None if missing."""
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        return None
