"""Helpers for the compute plugin's tests: fixed host facts and run contexts."""

from __future__ import annotations

from novaconsole.site import Site
from novaconsole.steps import RunContext
from novaconsole_compute.facts import DRIVER_CLASSES, ComputeFacts, compute_identity
from novaconsole_compute.runtime import FACTS_CACHE_KEY


def make_facts(site: Site, driver: str = "libvirt", virt_type: str = "kvm") -> ComputeFacts:
    """Facts as the probes would report them, for a chosen driver and virt_type."""
    host, state_path = compute_identity(site, driver)
    return ComputeFacts(
        driver=driver,
        driver_class=DRIVER_CLASSES[driver],
        driver_reason="chosen by the test",
        virt_type=virt_type,
        virt_type_reason="chosen by the test",
        cpu_virt_flags=False,
        kvm="n/a",
        libvirt="n/a",
        compute_host=host,
        state_path=str(state_path),
    )


def context(site: Site, *, driver: str = "libvirt", dry_run: bool = False) -> RunContext:
    """A run context whose host facts are fixed (the decision itself is tested elsewhere)."""
    lines: list[str] = []
    ctx = RunContext(dry_run=dry_run, log=lines.append)
    ctx.cache[FACTS_CACHE_KEY] = make_facts(site, driver)
    return ctx
