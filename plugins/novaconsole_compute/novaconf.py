"""The compute node's nova.conf options (the guide's compute section plus what Nova 34 needs).

In an all-in-one node the controller and the compute node share one nova.conf, so this step
sets only the options it owns (through :mod:`novaconsole.iniconf`, which keeps every other
line) and writes nova-compute's own small config file with its per-driver ``state_path``.
"""

from __future__ import annotations

import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from novaconsole.errors import ConfigError
from novaconsole.iniconf import (
    IniDocument,
    OptionChange,
    file_mode_differs,
    plan_options,
    update_file,
)
from novaconsole.steps import RunContext, Step
from novaconsole_compute.facts import ComputeFacts
from novaconsole_compute.runtime import compute_conf_path, facts_for, nova_binary

if TYPE_CHECKING:
    from novaconsole.site import Site

NOVA_CONF_MODE = 0o640

#: oslo.privsep contexts nova-compute may start; each needs a helper because no sudo exists
#: here (and running as root, none is needed): nova's own, os-brick's, os-vif's plugins.
PRIVSEP_SECTIONS = (
    "nova_sys_admin",
    "privsep_osbrick",
    "vif_plug_ovs_privileged",
    "vif_plug_linux_bridge_privileged",
)

#: The guide's old names for options this step owns (site ``nova_options`` may use them).
_OLD_NAMES = {
    ("vnc", "vncserver_listen"): ("vnc", "server_listen"),
    ("vnc", "vncserver_proxyclient_address"): ("vnc", "server_proxyclient_address"),
    ("DEFAULT", "vncserver_listen"): ("vnc", "server_listen"),
    ("DEFAULT", "vncserver_proxyclient_address"): ("vnc", "server_proxyclient_address"),
    ("DEFAULT", "novncproxy_base_url"): ("vnc", "novncproxy_base_url"),
}

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def novncproxy_base_url(site: Site) -> str:
    """``[vnc] novncproxy_base_url``: the site's, or the guide's on the controller host."""
    if site.novncproxy_base_url:
        return site.novncproxy_base_url
    return f"http://{_url_host(site.controller_host)}:{site.novncproxy_port}/vnc_auto.html"


def serialproxy_base_url(site: Site) -> str:
    """``[serial_console] base_url``: the site's, or nova-serialproxy on the controller host."""
    if site.serialproxy_base_url:
        return site.serialproxy_base_url
    return f"ws://{_url_host(site.controller_host)}:{site.serialproxy_port}/"


def vnc_server_listen(site: Site) -> str:
    """``[vnc] server_listen``: the site's; my_ip on an all-in-one node; 0.0.0.0 (the guide)."""
    if site.vnc_server_listen:
        return site.vnc_server_listen
    all_in_one = site.controller_host in (site.my_ip, *_LOOPBACK, socket.gethostname())
    return site.my_ip if all_in_one else "0.0.0.0"


def privsep_helper_command(site: Site) -> str:
    """The privsep helper with nova.conf (``sudo`` is not assumed to exist)."""
    helper = nova_binary(site, "privsep-helper")
    return shlex.join([str(helper), "--config-file", str(site.nova_conf)])


def compute_options(
    site: Site, facts: ComputeFacts, helper_command: str
) -> dict[str, dict[str, str]]:
    """Every nova.conf option the compute plugin owns, for the chosen driver.

    Values the operator gave in the site's ``nova_options`` (old names accepted) win over
    ours, so the controller plugin (which writes ``nova_options`` too) and this step agree.
    """
    wanted: dict[str, dict[str, str]] = {
        "DEFAULT": {"compute_driver": facts.driver_class, "host": facts.compute_host},
        "vnc": {
            "enabled": "true",
            "server_listen": vnc_server_listen(site),
            "server_proxyclient_address": site.my_ip,
            "novncproxy_base_url": novncproxy_base_url(site),
        },
    }
    if site.serial_console:
        # Compute-side options: the libvirt driver gives each guest's serial ports a TCP
        # listener on proxyclient_address from port_range (and still logs the first one
        # to console.log), and hands out base_url with a token for nova-serialproxy.
        wanted["serial_console"] = {
            "enabled": "true",
            "port_range": site.serial_port_range,
            "base_url": serialproxy_base_url(site),
            "proxyclient_address": site.my_ip,
        }
    if facts.driver == "libvirt":
        libvirt = {"virt_type": facts.virt_type}
        if site.libvirt_cpu_mode:
            libvirt["cpu_mode"] = site.libvirt_cpu_mode
            if site.libvirt_cpu_model_extra_flags:
                libvirt["cpu_model_extra_flags"] = site.libvirt_cpu_model_extra_flags
        wanted["libvirt"] = libvirt
    for section in PRIVSEP_SECTIONS:
        wanted[section] = {"helper_command": helper_command}
    for section, options in site.nova_options.items():
        for option, value in options.items():
            target = _OLD_NAMES.get((section, option), (section, option))
            if target[1] in wanted.get(target[0], {}):
                wanted[target[0]][target[1]] = value
    return wanted


def overlay_options(facts: ComputeFacts) -> dict[str, dict[str, str]]:
    """nova-compute.conf: nova-compute's own ``state_path`` (its node identity lives there)."""
    return {"DEFAULT": {"state_path": facts.state_path}}


def unresolvable_url_host(url: str) -> str | None:
    """The host of ``url`` when this machine cannot resolve it (the guide's trap), else None."""
    host = urlsplit(url).hostname
    if not host:
        return url
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return host
    return None


@dataclass
class ComputeConfObserved:
    """Pending option changes in nova.conf and nova-compute.conf."""

    nova_conf: list[OptionChange]
    overlay: list[OptionChange]
    wrong_modes: list[Path]
    missing_dirs: list[Path]


class ComputeConfStep(Step[ComputeConfObserved]):
    """Write the compute options into nova.conf and nova-compute's state_path file."""

    name = "compute.nova_conf"
    phase = "config"

    def __init__(self, site: Site) -> None:
        self.site = site
        self.overlay = compute_conf_path(site)
        self.description = f"nova.conf compute options in {site.nova_conf}"

    def wanted(
        self, ctx: RunContext
    ) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
        """(nova.conf options, nova-compute.conf options) for this host."""
        facts = facts_for(ctx, self.site)
        nova = compute_options(self.site, facts, privsep_helper_command(self.site))
        return nova, overlay_options(facts)

    def check(self, ctx: RunContext) -> ComputeConfObserved:
        nova, overlay = self.wanted(ctx)
        url = nova["vnc"]["novncproxy_base_url"]
        bad_host = unresolvable_url_host(url)
        if bad_host is not None:
            ctx.note(
                f"warning: [vnc] novncproxy_base_url {url} names host {bad_host!r}, which "
                "does not resolve here: browsers must resolve it or consoles will not open"
            )
        state_path = Path(overlay["DEFAULT"]["state_path"])
        return ComputeConfObserved(
            plan_options(IniDocument.load(self.site.nova_conf), nova),
            plan_options(IniDocument.load(self.overlay), overlay),
            [
                p
                for p in (self.site.nova_conf, self.overlay)
                if file_mode_differs(p, NOVA_CONF_MODE)
            ],
            [d for d in (state_path, state_path / "instances") if not d.is_dir()],
        )

    def plan(self, ctx: RunContext, observed: ComputeConfObserved) -> list[str]:
        plan = [f"create directory {d}" for d in observed.missing_dirs]
        plan += [f"nova.conf: {c.describe()}" for c in observed.nova_conf]
        plan += [f"{self.overlay.name}: {c.describe()}" for c in observed.overlay]
        plan += [f"chmod 0640 {p}" for p in observed.wrong_modes]
        return plan

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        nova, overlay = self.wanted(ctx)
        facts = facts_for(ctx, self.site)
        state_path = Path(facts.state_path)
        for directory in (state_path, state_path / "instances"):
            try:
                directory.mkdir(mode=0o750, parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create {directory}: {exc.strerror}") from None
        for change in update_file(self.site.nova_conf, nova, mode=NOVA_CONF_MODE):
            ctx.log(f"  nova.conf: {change.describe()}")
        for change in update_file(self.overlay, overlay, mode=NOVA_CONF_MODE):
            ctx.log(f"  {self.overlay.name}: {change.describe()}")
