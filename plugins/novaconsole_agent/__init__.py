"""The built-in compute agent plugin: ``novaconsole --plugin compute-agent``.

The daemon (:mod:`novaconsole_agent.daemon`) runs on every hypervisor: libvirt's own view
of the host, over the agent bus, to the console. It is imported only when the mode runs,
and imports neither openstacksdk nor Textual (a test guards this).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from novaconsole.hookspecs import PluginMode, hookimpl

if TYPE_CHECKING:
    from novaconsole.site import Site
    from novaconsole.steps import Step


def run_agent(argv: Sequence[str]) -> int:
    """Entry of the agent mode (see :func:`novaconsole_agent.daemon.main`)."""
    from novaconsole_agent.daemon import main

    return main(argv)


@hookimpl
def novaconsole_plugin_modes() -> dict[str, PluginMode]:
    return {"compute-agent": run_agent}


@hookimpl
def novaconsole_provision_steps(role: str, site: Site) -> Sequence[Step[Any]]:
    """The agent bus for a site with ``compute_agent = true``: vhost, users and console
    key on the controller; the agent's key, config and service on a compute node."""
    if not site.compute_agent:
        return []
    # Loaded on first use: most commands register this plugin and never provision.
    from novaconsole_agent import provision

    if role == "controller":
        return provision.controller_steps(site)
    if role == "compute":
        return provision.compute_steps(site)
    return []
