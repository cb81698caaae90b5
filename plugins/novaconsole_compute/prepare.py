"""The first compute step: probe the host, choose driver and virt_type, and say why."""

from __future__ import annotations

from typing import TYPE_CHECKING

from novaconsole.steps import RunContext, Step
from novaconsole_compute.facts import LIBVIRT_PACKAGES, ComputeFacts
from novaconsole_compute.runtime import facts_for

if TYPE_CHECKING:
    from novaconsole.site import Site


class HostFactsStep(Step[ComputeFacts]):
    """Decide libvirt or fake, kvm or qemu; changes nothing, fails early on a bad wish.

    A site asking for ``virt_type = kvm`` where KVM does not work (the guide's trap), or for
    ``compute_driver = libvirt`` where libvirtd cannot run, fails here, before any file is
    written.
    """

    name = "compute.host_facts"
    phase = "prepare"
    description = "compute driver and virt_type for this host"

    def __init__(self, site: Site) -> None:
        self.site = site

    def check(self, ctx: RunContext) -> ComputeFacts:
        facts = facts_for(ctx, self.site)
        ctx.note(f"compute driver {facts.driver_class}: {facts.driver_reason}")
        if facts.driver == "libvirt":
            ctx.note(f"[libvirt] virt_type = {facts.virt_type}: {facts.virt_type_reason}")
        elif "not installed" in facts.libvirt:
            ctx.note(f"for the libvirt driver install: apt-get install {LIBVIRT_PACKAGES}")
        ctx.note(
            f"nova-compute host {facts.compute_host!r}, state_path {facts.state_path} "
            f"(each driver keeps its own: Nova refuses a host that ran another driver)"
        )
        return facts

    def plan(self, ctx: RunContext, observed: ComputeFacts) -> list[str]:
        return []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        return None
