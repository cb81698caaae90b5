"""The built-in controller provisioning plugin: the install guide's controller steps.

For role ``controller`` it contributes, in phase order: databases and grants (or SQLite
files), Keystone project/users/roles/services/endpoints, nova.conf, the nova-manage schema
steps and the Nova controller services. Use :func:`controller_steps` directly (the lab
does) or through the ``novaconsole_provision_steps`` hook.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from novaconsole.hookspecs import hookimpl

if TYPE_CHECKING:  # every command loads this plugin; few provision
    from novaconsole.site import Site
    from novaconsole.steps import Step


def controller_steps(site: Site) -> list[Step[Any]]:
    """Every controller step for ``site``, in the guide's order."""
    from novaconsole_controller.databases import database_steps
    from novaconsole_controller.identity import identity_steps
    from novaconsole_controller.novaconf import NovaConfStep
    from novaconsole_controller.schema import schema_steps
    from novaconsole_controller.services import service_steps

    return [
        *database_steps(site),
        *identity_steps(site),
        NovaConfStep(site),
        *schema_steps(site),
        *service_steps(site),
    ]


@hookimpl
def novaconsole_provision_steps(role: str, site: Site) -> Sequence[Step[Any]]:
    """The controller's steps for role ``controller``; for ``compute``, the nova.conf
    options a compute node shares with the controller (queue, Keystone, Placement)."""
    if role == "controller":
        return controller_steps(site)
    if role == "compute":
        from novaconsole_controller.novaconf import NovaConfStep

        return [NovaConfStep(site, for_compute_node=True)]
    return []
