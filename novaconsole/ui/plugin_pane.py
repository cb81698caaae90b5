"""Panes contributed by plugins (``novaconsole_console_panes``) as ``ResourcePane`` classes."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from novaconsole.errors import ConfigError
from novaconsole.sources.base import CloudSource
from novaconsole.sources.console_api import ConsolePane
from novaconsole.ui.pane import ResourcePane
from novaconsole.ui.table import Column

_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")


class PluginPane(ResourcePane):
    """A pane whose columns and loader come from a :class:`ConsolePane`."""

    spec: ConsolePane

    def build_columns(self) -> list[Column]:
        return [
            Column(c.key, c.title, c.value, numeric=c.numeric, max_width=c.max_width)
            for c in self.spec.columns
        ]

    def fetch(self, source: CloudSource) -> Iterator[Sequence[Any]]:
        yield list(self.spec.load(source))

    def row_id(self, row: Any) -> str:
        return self.spec.row_id(row)


def pane_class(spec: ConsolePane, taken: set[str]) -> type[PluginPane]:
    """A ``PluginPane`` subclass for ``spec``; bad or clashing names are one clear line."""
    if not _NAME.match(spec.name):
        raise ConfigError(
            f"plugin console pane {spec.name!r}: name must be lower-case letters, digits, - or _"
        )
    if spec.name in taken:
        raise ConfigError(f"plugin console pane {spec.name!r}: a pane of that name exists already")
    attrs: Mapping[str, Any] = {
        "spec": spec,
        "pane_name": spec.name,
        "title": spec.title,
        "aliases": tuple(spec.aliases),
    }
    return type(f"PluginPane_{spec.name.replace('-', '_')}", (PluginPane,), dict(attrs))
