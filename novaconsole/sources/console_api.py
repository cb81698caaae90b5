"""What plugins return from the console hooks: panes, columns and actions, free of Textual.

A plugin imports these (not the UI) so it stays importable by the headless CLI and daemons.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from novaconsole.sources.base import CloudSource


@dataclass(frozen=True, slots=True)
class ConsoleColumn:
    """An extra column: ``value(row)`` gets the pane's row object (e.g. a ``ServerRow``)."""

    key: str
    title: str
    value: Callable[[Any], object]
    numeric: bool = False
    max_width: int = 40


@dataclass(frozen=True, slots=True)
class ConsoleAction:
    """An extra key on a pane: ``run(source, row)`` runs in a thread; its text is shown.

    Mutating actions ask for confirmation, are logged, and are refused in read-only mode.
    """

    key: str
    description: str
    run: Callable[[CloudSource, Any], str | None]
    mutating: bool = True


@dataclass(frozen=True, slots=True)
class ConsolePane:
    """An extra pane: ``load(source)`` returns rows (objects or mappings) in a thread."""

    name: str
    title: str
    columns: Sequence[ConsoleColumn]
    load: Callable[[CloudSource], Sequence[Any]]
    aliases: tuple[str, ...] = ()
    row_id: Callable[[Any], str] = field(default=lambda row: str(row.get("id", id(row))))
