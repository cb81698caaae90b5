"""The plugin manager: built-ins first, then the ``novaconsole`` entry-point group.

Built-in plugins are found through the same entry-point group a third-party plugin
would use; ``NOVACONSOLE_BLOCK_PLUGINS`` (comma-separated names) blocks any of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType

import pluggy

from novaconsole import hookspecs
from novaconsole.errors import ConfigError

ENTRY_POINT_GROUP = "novaconsole"
BLOCK_ENV = "NOVACONSOLE_BLOCK_PLUGINS"

#: Modules of the core that are plugins themselves (hooks of the core's own features).
CORE_PLUGINS: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadedPlugin:
    """A plugin the manager knows of, where it came from, and whether it is blocked."""

    name: str
    source: str
    location: str
    blocked: bool


def blocked_names(environ: dict[str, str] | None = None) -> set[str]:
    """The plugin names blocked by :data:`BLOCK_ENV`."""
    raw = (environ if environ is not None else os.environ).get(BLOCK_ENV, "")
    return {name.strip() for name in raw.split(",") if name.strip()}


def _location(module: object) -> str:
    if isinstance(module, ModuleType):
        return getattr(module, "__file__", None) or module.__name__
    return type(module).__module__


class PluginManager(pluggy.PluginManager):
    """pluggy's manager with the record of what was loaded from where."""

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.add_hookspecs(hookspecs)
        self.loaded: list[LoadedPlugin] = []

    def load(self, environ: dict[str, str] | None = None) -> None:
        """Register core plugins, then entry points, honouring the block list."""
        blocked = blocked_names(environ)
        for name in blocked:
            self.set_blocked(name)
        for module_name in CORE_PLUGINS:
            module = __import__(module_name, fromlist=["_"])
            self.register(module, name=module_name)
            self.loaded.append(LoadedPlugin(module_name, "core", _location(module), False))
        seen: set[str] = set()
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist is not None else "?"
            if ep.name in blocked:
                self.loaded.append(LoadedPlugin(ep.name, f"entry point ({dist})", ep.value, True))
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken third-party plugin must not kill the console
                raise ConfigError(
                    f"plugin {ep.name!r} ({ep.value}, from {dist}) failed to import: {exc}",
                    hint=f"block it with {BLOCK_ENV}={ep.name}",
                ) from exc
            self.register(plugin, name=ep.name)
            self.loaded.append(
                LoadedPlugin(ep.name, f"entry point ({dist})", _location(plugin), False)
            )
        self.check_pending()


def get_plugin_manager(environ: dict[str, str] | None = None) -> PluginManager:
    """A loaded plugin manager (a new one each call, so tests stay independent)."""
    manager = PluginManager()
    manager.load(environ)
    return manager
