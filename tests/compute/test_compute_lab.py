"""The compute plugin on the real lab: the host is up and mapped, the chosen virt_type is
what libvirt and Nova run, and a re-run of the compute steps would change nothing."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from novaconsole.cells import host_mapping
from novaconsole.cloud import connect
from novaconsole.iniconf import IniDocument
from novaconsole.lab.config import LabConfig, load_or_create_secrets
from novaconsole.lab.runner import lab_site
from novaconsole.site import Site
from novaconsole.steps import RunContext, Status, run_steps
from novaconsole_compute import compute_steps, host_facts
from novaconsole_compute.discover import api_db_url
from novaconsole_compute.libvirtd import LIBVIRT_PROGRAMS, LIBVIRT_URI, libvirt_answers
from novaconsole_compute.runtime import keeper_for

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def site(lab_state: LabConfig) -> Site:
    return lab_site(lab_state, load_or_create_secrets(lab_state.secrets_file))


@pytest.fixture(scope="module")
def conn(lab_cloud: str) -> Iterator[Any]:
    connection = connect(lab_cloud)
    yield connection
    connection.close()


def test_rerun_changes_nothing(site: Site) -> None:
    ctx = RunContext(dry_run=True)
    try:
        report = run_steps(compute_steps(site), ctx)
    finally:
        for client in ctx.cache.values():
            getattr(client, "close", lambda: None)()
    assert report.ok, [r.error for r in report.failed]
    assert [r.name for r in report.results if r.status is not Status.OK] == []


def test_host_is_mapped_and_up(site: Site, conn: Any) -> None:
    facts = host_facts(site)
    assert host_mapping(api_db_url(site.nova_conf), facts.compute_host) == "cell1"
    services = [
        s for s in conn.compute.services(binary="nova-compute") if s.host == facts.compute_host
    ]
    assert services, f"no nova-compute service for host {facts.compute_host}"
    assert services[0].state == "up"
    assert services[0].status == "enabled"


def test_hypervisor_matches_the_choice(site: Site, conn: Any) -> None:
    facts = host_facts(site)
    doc = IniDocument.load(site.nova_conf)
    assert doc.get("DEFAULT", "compute_driver") == facts.driver_class
    hypervisors = list(conn.compute.hypervisors(details=True))
    assert hypervisors
    if facts.driver == "fake":
        assert {h.hypervisor_type for h in hypervisors} == {"fake"}
        return
    assert doc.get("libvirt", "virt_type") == facts.virt_type
    # libvirt reports QEMU for both kvm and TCG guests; the domain type tells them apart.
    assert "QEMU" in {h.hypervisor_type for h in hypervisors}
    assert f"{facts.virt_type} domains offered" in libvirt_answers(LIBVIRT_URI, facts.virt_type)


def test_libvirtd_is_kept_by_the_lab(site: Site) -> None:
    """Our libvirtd/virtlogd run under the lab's supervisor, so `lab down` stops them."""
    supervisor = keeper_for(site)
    states = supervisor.status()
    ours = [name for name in LIBVIRT_PROGRAMS if name in states]
    if not ours:
        pytest.skip("libvirtd is run by someone else here (left alone by design)")
    for name in LIBVIRT_PROGRAMS:
        assert states[name].state == "RUNNING"
        assert states[name].pid is not None
