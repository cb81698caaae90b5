"""The hooks a novaconsole plugin may implement.

Every hook is prefixed ``novaconsole_`` and always called with keyword arguments, so a
plugin's implementation may accept fewer arguments than the spec lists (pluggy's rule).
Hooks are grouped by life-cycle: start-up, provisioning, checks, console.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from novaconsole.site import Site
    from novaconsole.steps import Step
    from novaconsole.verify import Check

PROJECT = "novaconsole"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Typed marker for implementations; import it as ``from novaconsole.hookspecs import hookimpl``.
hookimpl = pluggy.HookimplMarker(PROJECT)

#: A plugin mode: receives the remaining command-line arguments, returns an exit code.
PluginMode = Callable[[Sequence[str]], int]


# -- start-up ---------------------------------------------------------------------------


@hookspec
def novaconsole_add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add global command-line options (called once, before parsing)."""


@hookspec
def novaconsole_add_commands(subparsers: Any) -> None:
    """Add sub-commands to ``novaconsole`` (``subparsers`` is argparse's action object).

    A command sets ``func`` on its parser (``parser.set_defaults(func=...)``); ``func``
    takes the parsed :class:`argparse.Namespace` and returns an exit code.
    """


@hookspec
def novaconsole_plugin_modes() -> dict[str, PluginMode]:
    """Return the plugin's own run modes, by name, for ``novaconsole --plugin NAME``.

    The compute agent's daemon is one such mode. Names must be unique across plugins.
    """
    raise NotImplementedError


# -- provisioning -----------------------------------------------------------------------


@hookspec
def novaconsole_provision_steps(role: str, site: Site) -> Sequence[Step[Any]]:
    """Return the steps this plugin contributes for ``role`` ("controller" or "compute").

    Results from all plugins are concatenated in registration order (built-ins first).
    """
    raise NotImplementedError


@hookspec
def novaconsole_order_steps(role: str, steps: list[Step[Any]]) -> None:
    """Reorder, replace or drop steps in place before a run starts."""


@hookspec
def novaconsole_host_facts(site: Site) -> dict[str, str]:
    """Return facts about this host that provisioning decided on (driver, virt_type, why).

    ``lab status`` shows them; keys are short names, values one line each.
    """
    raise NotImplementedError


# -- checks -----------------------------------------------------------------------------


@hookspec
def novaconsole_verify_checks() -> Sequence[Check]:
    """Return extra checks for ``novaconsole verify`` (run concurrently with the built-ins)."""
    raise NotImplementedError


# -- console (TUI) ----------------------------------------------------------------------


@hookspec
def novaconsole_console_panes() -> Sequence[Any]:
    """Return extra pane specifications for the TUI (see ``novaconsole.ui.panes``)."""
    raise NotImplementedError


@hookspec
def novaconsole_console_actions(pane: str) -> Sequence[Any]:
    """Return extra actions for the pane named ``pane`` (see ``novaconsole.ui.actions``)."""
    raise NotImplementedError


@hookspec
def novaconsole_console_columns(pane: str) -> Sequence[Any]:
    """Return extra columns for the pane named ``pane`` (see ``novaconsole.ui.panes``)."""
    raise NotImplementedError


@hookspec
def novaconsole_theme_dirs() -> Sequence[str]:
    """Return directories holding extra themes (``*.tcss`` plus ``*.toml`` theme files)."""
    raise NotImplementedError


@hookspec(firstresult=True)
def novaconsole_open_console(server_id: str, cloud: str | None) -> str | None:
    """Open a graphical console for a server; return the URL opened (first result wins)."""
