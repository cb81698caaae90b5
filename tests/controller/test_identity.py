"""Keystone step: the pure diff on plain data, and the real thing against the lab's Keystone."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from novaconsole.cloud import connect
from novaconsole.site import Site
from novaconsole.steps import RunContext, Status, run_steps
from novaconsole_controller.identity import (
    Endpoint,
    IdentityObserved,
    IdentityStep,
    IdentityWanted,
    ServiceIdentity,
    diff_identity,
    keystone_connection,
    remove_identity,
    wanted_identity,
)

NOVA = ServiceIdentity(
    "nova", "NOVA_PASS", "nova", "compute", "OpenStack Compute", "http://c:8774/v2.1"
)
WANTED = IdentityWanted("service", "default", "RegionOne", (NOVA,))


def converged() -> IdentityObserved:
    """Keystone holding exactly what WANTED asks for."""
    return IdentityObserved(
        project_id="p1",
        region_exists=True,
        roles={"admin": "r1", "service": "r2"},
        users={"nova": "u1"},
        assignments={("u1", "r1"), ("u1", "r2")},
        services={"compute": [("s1", "nova")]},
        endpoints=[
            Endpoint(f"e{i}", "s1", iface, "RegionOne", "http://c:8774/v2.1")
            for i, iface in enumerate(("public", "internal", "admin"))
        ],
    )


def test_empty_keystone_plans_everything_in_order() -> None:
    texts = [a.text for a in diff_identity(IdentityObserved(), WANTED)]
    assert texts == [
        "create project service",
        "create region RegionOne",
        "create role admin",
        "create role service",
        "create user nova (password from NOVA_PASS)",
        "add role admin to user nova on project service",
        "add role service to user nova on project service",
        "create service nova (compute)",
        "create compute public endpoint http://c:8774/v2.1 in RegionOne",
        "create compute internal endpoint http://c:8774/v2.1 in RegionOne",
        "create compute admin endpoint http://c:8774/v2.1 in RegionOne",
    ]


def test_converged_keystone_plans_nothing() -> None:
    assert diff_identity(converged(), WANTED) == []


def test_trailing_slash_is_not_drift() -> None:
    observed = converged()
    observed.endpoints[0] = Endpoint("e0", "s1", "public", "RegionOne", "http://c:8774/v2.1/")
    assert diff_identity(observed, WANTED) == []


def test_drifted_endpoint_url_is_changed_not_duplicated() -> None:
    observed = converged()
    old = "http://controller:8774/v2.1/%(tenant_id)s"
    observed.endpoints[1] = Endpoint("e1", "s1", "internal", "RegionOne", old)
    actions = diff_identity(observed, WANTED)
    assert [(a.kind, a.args) for a in actions] == [("endpoint-url", ("e1", "http://c:8774/v2.1"))]
    assert actions[0].text == f"change compute internal endpoint URL {old} -> http://c:8774/v2.1"


def test_duplicate_endpoints_are_reduced_to_one() -> None:
    observed = converged()
    observed.endpoints.append(Endpoint("dup", "s1", "public", "RegionOne", "http://old:1/"))
    actions = diff_identity(observed, WANTED)
    assert [(a.kind, a.args) for a in actions] == [("endpoint-delete", ("dup",))]


def test_endpoints_of_other_regions_and_services_are_ignored() -> None:
    observed = converged()
    observed.endpoints.append(Endpoint("x", "s1", "public", "OtherRegion", "http://x/"))
    observed.endpoints.append(Endpoint("y", "other", "public", "RegionOne", "http://y/"))
    assert diff_identity(observed, WANTED) == []


def test_missing_service_role_and_stale_password() -> None:
    observed = converged()
    observed.assignments = {("u1", "r1")}
    observed.stale_passwords = {"nova"}
    texts = [a.text for a in diff_identity(observed, WANTED)]
    assert texts == [
        "reset the password of user nova (it no longer matches NOVA_PASS)",
        "add role service to user nova on project service",
    ]


def test_existing_service_of_the_type_is_reused_whatever_its_name() -> None:
    observed = converged()
    observed.services = {"compute": [("s1", "compute-legacy")]}
    assert diff_identity(observed, WANTED) == []


def test_wanted_identity_for_the_lab_uses_controller_host_and_modern_urls(site: Site) -> None:
    site.controller_host = "controller"
    site.extra_services = ["keystone", "glance", "placement", "neutron"]
    wanted = wanted_identity(site)
    urls = {s.type: s.url for s in wanted.services}
    assert urls == {
        "compute": "http://controller:8774/v2.1",
        "image": "http://controller:9292",
        "placement": "http://controller:8778",
        "network": "http://controller:9696",
    }
    assert {s.user for s in wanted.services} == {"nova", "glance", "placement", "neutron"}
    assert wanted.roles == ("admin", "service")


# -- the real Keystone of the lab ---------------------------------------------------------


@pytest.fixture
def throwaway_identity(lab_cloud: str) -> Iterator[tuple[Site, IdentityWanted, Any]]:
    """Throw-away entities (nctest-*) in a test region, removed afterwards."""
    tag = secrets.token_hex(3)
    region = f"nctest-region-{tag}"
    wanted = IdentityWanted(
        f"nctest-service-{tag}",
        "default",
        region,
        (
            ServiceIdentity(
                f"nctest-nova-{tag}",
                "NOVA_PASS",
                f"nctest-nova-{tag}",
                f"nctest-compute-{tag}",
                "test",
                "http://127.0.0.1:8774/v2.1",
            ),
            ServiceIdentity(
                f"nctest-placement-{tag}",
                "PLACEMENT_PASS",
                f"nctest-placement-{tag}",
                f"nctest-placement-{tag}",
                "test",
                "http://127.0.0.1:8778",
            ),
        ),
    )
    site = Site(
        os_cloud=lab_cloud,
        region=region,
        secrets={"NOVA_PASS": f"Nova-{tag}", "PLACEMENT_PASS": f"Placement-{tag}"},
    )
    conn = connect(lab_cloud)
    yield site, wanted, conn
    remove_identity(conn, wanted)
    conn.identity.delete_region(region, ignore_missing=True)
    conn.close()


@pytest.mark.lab
def test_keystone_create_converge_and_repair(
    throwaway_identity: tuple[Site, IdentityWanted, Any],
) -> None:
    site, wanted, conn = throwaway_identity
    step = IdentityStep(site, wanted)
    ctx = RunContext()
    before = keystone_connection(ctx, site.os_cloud)
    before.authorize()  # a token whose catalog has none of the services about to be made
    first = run_steps([step], ctx)
    assert first.results[0].status is Status.CHANGED, first.results[0].error
    assert len(first.results[0].changes) == 2 + 2 * (1 + 2 + 1 + 3)
    # Later steps of the run (discover_hosts asks nova-api) see the new endpoints.
    nova = wanted.services[0]
    after = keystone_connection(ctx, site.os_cloud)
    assert after is not before
    found = after.session.get_endpoint(
        service_type=nova.type, interface="public", region_name=wanted.region
    )
    assert found == nova.url
    again = run_steps([step], RunContext())
    assert again.results[0].status is Status.OK, again.results[0].changes

    service = next(s for s in conn.identity.services() if s.type == nova.type)
    endpoints = list(conn.identity.endpoints(service_id=service.id))
    assert sorted(e.interface for e in endpoints) == ["admin", "internal", "public"]
    # Drift: an endpoint URL edited by hand, an extra duplicate, a changed password.
    public = next(e for e in endpoints if e.interface == "public")
    conn.identity.update_endpoint(public, url="http://controller:8774/v2.1/%(tenant_id)s")
    conn.identity.create_endpoint(
        service_id=service.id, interface="admin", url="http://dup:1/", region_id=wanted.region
    )
    user = conn.identity.find_user(nova.user, domain_id="default")
    conn.identity.update_user(user, password="Drifted-Pw-1")
    repair = run_steps([step], RunContext())
    assert repair.results[0].status is Status.CHANGED, repair.results[0].error
    changes = repair.results[0].changes
    assert any(c.startswith(f"change {nova.type} public endpoint URL") for c in changes)
    assert any(c.startswith(f"delete duplicate {nova.type} admin endpoint") for c in changes)
    assert f"reset the password of user {nova.user} (it no longer matches NOVA_PASS)" in changes
    assert not any("Drifted-Pw-1" in c or site.secrets["NOVA_PASS"] in c for c in changes)
    urls = {e.url for e in conn.identity.endpoints(service_id=service.id)}
    assert urls == {nova.url}
    assert run_steps([step], RunContext()).results[0].status is Status.OK


@pytest.mark.lab
def test_keystone_failure_midway_leaves_no_orphan(
    throwaway_identity: tuple[Site, IdentityWanted, Any],
) -> None:
    site, wanted, conn = throwaway_identity
    broken = ServiceIdentity(
        wanted.services[0].user, "NOVA_PASS", "x", "t" * 300, "too long a type", "http://x/"
    )
    step = IdentityStep(site, IdentityWanted(wanted.project, "default", wanted.region, (broken,)))
    report = run_steps([step], RunContext())
    assert report.results[0].status is Status.FAILED
    error = report.results[0].error
    assert error is not None
    assert "entities this run had created" in error
    assert site.secrets["NOVA_PASS"] not in error
    assert conn.identity.find_user(broken.user, domain_id="default") is None
    assert not list(conn.identity.projects(name=wanted.project))


def test_unknown_cloud_is_a_one_line_error(site: Site) -> None:
    site.os_cloud = "nctest-no-such-cloud"
    report = run_steps([IdentityStep(site)], RunContext())
    assert report.results[0].status is Status.FAILED
    assert report.results[0].error is not None
    assert "nctest-no-such-cloud" in report.results[0].error
    assert "\n" not in report.results[0].error
