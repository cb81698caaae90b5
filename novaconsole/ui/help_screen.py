"""``HelpScreen``: every key the console answers to, and the ``:`` commands."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static

from novaconsole.ui.pane import PaneAction

#: Keys that work everywhere (the pane's own keys are added per pane).
GLOBAL_KEYS: Sequence[tuple[str, str]] = (
    (":", "command mode (:svc :cat :img :hyp :srv :cloud NAME :theme NAME :q); Tab completes"),
    ("/", "filter rows: text or regex, !text inverts; Esc clears"),
    ("o / O", "sort by the next column / reverse the sort (or click a header)"),
    ("Enter", "details of the row (raw resource as YAML)"),
    ("r", "refresh the pane now"),
    ("1-5", "jump to a pane (services, catalog, images, hypervisors, servers)"),
    ("tab / shift+tab", "next / previous pane"),
    ("↑↓ j k PgUp PgDn g G", "move the cursor"),
    ("ctrl+p", "command palette (themes, panes, refresh)"),
    ("?", "this help"),
    ("q / ctrl+c", "quit"),
)


class HelpScreen(ModalScreen[None]):
    """Global keys, then the current pane's keys (read-only hides mutating ones)."""

    DEFAULT_CSS = """
    HelpScreen {
        align: center middle;
    }
    HelpScreen > VerticalScroll {
        width: 90;
        height: 80%;
        border: round $primary;
        background: $surface;
        padding: 0 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self, pane_title: str, pane_actions: Sequence[PaneAction], readonly: bool) -> None:
        super().__init__()
        self.pane_title = pane_title
        self.pane_actions = list(pane_actions)
        self.readonly = readonly

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=True, expand=True, padding=(0, 2))
        table.add_column("key", style="bold", no_wrap=True)
        table.add_column("what it does")
        for key, text in GLOBAL_KEYS:
            table.add_row(key, text)
        table.add_row("", "")
        table.add_row(f"{self.pane_title} pane", "")
        for action in self.pane_actions:
            suffix = " (asks to confirm)" if action.mutating else ""
            table.add_row(action.key, action.description + suffix)
        if self.readonly:
            table.add_row("", "read-only mode: actions that change the cloud are hidden")
        with VerticalScroll():
            yield Static("novaconsole keys", classes="help-title")
            yield Static(table)
        yield Footer()

    def action_close(self) -> None:
        self.dismiss(None)
