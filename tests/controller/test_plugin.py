"""The controller plugin through its hook: steps for role controller, ordered by phase."""

from __future__ import annotations

from novaconsole.site import Site
from novaconsole.steps import PHASES, order_by_phase
from novaconsole_controller import controller_steps, novaconsole_provision_steps


def test_hook_gives_controller_steps_and_the_compute_nodes_shared_conf(site: Site) -> None:
    compute = [s.name for s in novaconsole_provision_steps(role="compute", site=site)]
    assert compute == ["controller.nova_conf.compute_node"]
    assert novaconsole_provision_steps(role="storage", site=site) == []
    names = [s.name for s in novaconsole_provision_steps(role="controller", site=site)]
    assert names == [
        "controller.database.nova",
        "controller.identity",
        "controller.nova_conf",
        "controller.schema.api_db",
        "controller.schema.map_cell0",
        "controller.schema.cell1",
        "controller.schema.cell_connections",
        "controller.schema.db",
        "controller.services",
    ]


def test_steps_are_already_in_phase_order_and_phases_are_known(site: Site) -> None:
    site.extra_services = ["keystone", "glance", "placement", "neutron"]
    steps = controller_steps(site)
    assert all(s.phase in PHASES for s in steps)
    assert order_by_phase(steps) == steps
    assert [s.name for s in steps[:5]] == [
        "controller.database.nova",
        "controller.database.keystone",
        "controller.database.glance",
        "controller.database.placement",
        "controller.database.neutron",
    ]
