"""The built-in compute agent plugin: ``novaconsole --plugin compute-agent``.

The daemon itself (libvirt-python on the hypervisor, pika to the console) is the subject
of a later issue; this plugin already owns the mode name so the switch is wired end to end.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from novaconsole.errors import EXIT_USAGE
from novaconsole.hookspecs import PluginMode, hookimpl


def run_agent(argv: Sequence[str]) -> int:
    """Entry of the agent daemon mode (not built yet: says so and exits 2)."""
    print(
        "novaconsole: error: the compute-agent daemon is not implemented yet "
        "(plugin novaconsole_agent registers the mode; the daemon is a later issue)",
        file=sys.stderr,
    )
    return EXIT_USAGE


@hookimpl
def novaconsole_plugin_modes() -> dict[str, PluginMode]:
    return {"compute-agent": run_agent}
