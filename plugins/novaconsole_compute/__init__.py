"""The built-in compute provisioning plugin: the install guide's compute node steps.

For role ``compute`` it contributes, in phase order: host facts (libvirt or fake driver,
kvm or qemu, and why), nova.conf compute options, libvirtd/virtlogd, nova-compute, and
``nova-manage cell_v2 discover_hosts`` with a wait until the host is up and mapped.
:func:`host_facts` returns the decisions as data (``lab status`` shows them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from novaconsole.hookspecs import hookimpl

if TYPE_CHECKING:
    from novaconsole.site import Site
    from novaconsole.steps import Step
    from novaconsole_compute.facts import ComputeFacts

# The step modules load on first use, not with the plugin: every novaconsole command
# registers this plugin, and most (verify, the console) never provision anything.


def compute_steps(site: Site) -> list[Step[Any]]:
    """The compute node's steps for ``site``, in order."""
    from novaconsole_compute.compute_service import NovaComputeStep
    from novaconsole_compute.discover import DiscoverHostsStep
    from novaconsole_compute.libvirtd import LibvirtdStep
    from novaconsole_compute.novaconf import ComputeConfStep
    from novaconsole_compute.prepare import HostFactsStep

    return [
        HostFactsStep(site),
        ComputeConfStep(site),
        LibvirtdStep(site),
        NovaComputeStep(site),
        DiscoverHostsStep(site),
    ]


@hookimpl
def novaconsole_provision_steps(role: str, site: Site) -> Sequence[Step[Any]]:
    """Steps for role ``compute``; nothing for other roles."""
    return compute_steps(site) if role == "compute" else []


# optionalhook: the spec is newer than some cores this plugin may meet.
@hookimpl(optionalhook=True)
def novaconsole_host_facts(site: Site) -> dict[str, str]:
    """The compute driver and virt_type chosen for this host, and why."""
    from novaconsole.errors import NovaconsoleError

    try:
        return host_facts(site).as_dict()
    except NovaconsoleError as exc:
        return {"driver": "error", "driver_reason": exc.one_line()}


def host_facts(site: Site) -> ComputeFacts:
    """The driver and virt_type decisions for ``site`` (see :mod:`novaconsole_compute.facts`)."""
    from novaconsole_compute.facts import host_facts as probe

    return probe(site)
