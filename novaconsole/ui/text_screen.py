"""``TextScreen``: a scrollable full-screen text (YAML details, console logs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import yaml
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Footer, Static


def to_yaml(resource: Any) -> str:
    """The raw resource as block YAML, keys in API order."""
    if isinstance(resource, Mapping):
        resource = dict(resource)
    return yaml.safe_dump(resource, sort_keys=False, default_flow_style=False, allow_unicode=True)


class TextScreen(ModalScreen[None]):
    """A title and a text body; Escape or q closes it."""

    DEFAULT_CSS = """
    TextScreen {
        background: $background 60%;
    }
    TextScreen > #text-title {
        height: 1;
        padding: 0 1;
        background: $primary;
        color: $text;
        text-style: bold;
    }
    TextScreen > VerticalScroll {
        background: $surface;
        border: round $primary;
        margin: 0 1;
        padding: 0 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "close", "Close"),
        Binding("j,down", "scroll(1)", "Down", show=False),
        Binding("k,up", "scroll(-1)", "Up", show=False),
    ]

    def __init__(self, title: str, body: str) -> None:
        super().__init__()
        self.title_text = title
        self.body = body

    def compose(self) -> ComposeResult:
        yield Static(self.title_text, id="text-title", markup=False)
        with VerticalScroll():
            yield Static(Text(self.body), id="text-body")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(VerticalScroll).focus()

    def action_close(self) -> None:
        self.dismiss(None)

    def action_scroll(self, delta: int) -> None:
        self.query_one(VerticalScroll).scroll_relative(y=delta, animate=False)
