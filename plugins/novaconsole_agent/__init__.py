"""The built-in compute agent plugin: ``novaconsole --plugin compute-agent``.

The daemon (:mod:`novaconsole_agent.daemon`) runs on every hypervisor: libvirt's own view
of the host, over the agent bus, to the console. It is imported only when the mode runs,
and imports neither openstacksdk nor Textual (a test guards this).
"""

from __future__ import annotations

from collections.abc import Sequence

from novaconsole.hookspecs import PluginMode, hookimpl


def run_agent(argv: Sequence[str]) -> int:
    """Entry of the agent mode (see :func:`novaconsole_agent.daemon.main`)."""
    from novaconsole_agent.daemon import main

    return main(argv)


@hookimpl
def novaconsole_plugin_modes() -> dict[str, PluginMode]:
    return {"compute-agent": run_agent}
