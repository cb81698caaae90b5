"""``PromptBar``: the bottom line for ``:`` commands and ``/`` filters (k9s style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.suggester import Suggester
from textual.widgets import Input, Label

Mode = Literal["command", "filter"]


class CommandSuggester(Suggester):
    """Inline completion from the console's command table (Tab or → accepts)."""

    def __init__(self, complete: Callable[[str], list[str]]) -> None:
        super().__init__(use_cache=False, case_sensitive=True)
        self.complete = complete

    async def get_suggestion(self, value: str) -> str | None:
        options = self.complete(value)
        return options[0] if options and options[0] != value else None


class PromptInput(Input):
    """An Input where Tab completes instead of moving focus."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "cursor_right", "Complete", show=False, priority=True),
        Binding("escape", "cancel", "Cancel", show=False),
    ]

    class Cancelled(Message):
        """Escape in the prompt."""

    def action_cancel(self) -> None:
        self.post_message(self.Cancelled())


class PromptBar(Horizontal):
    """Hidden until ``:`` or ``/``; says which mode it is in."""

    DEFAULT_CSS = """
    PromptBar {
        height: 1;
        display: none;
        background: $panel;
    }
    PromptBar.-open {
        display: block;
    }
    PromptBar > Label {
        width: auto;
        padding: 0 0 0 1;
        color: $accent;
        text-style: bold;
    }
    PromptBar > PromptInput {
        border: none;
        height: 1;
        padding: 0;
        background: $panel;
    }
    PromptBar > PromptInput:focus {
        border: none;
    }
    """

    mode: Mode = "command"

    def __init__(self, complete: Callable[[str], list[str]]) -> None:
        super().__init__(id="prompt-bar")
        self._complete = complete

    def compose(self) -> ComposeResult:
        yield Label(":", id="prompt-label")
        prompt = PromptInput(id="prompt-input", select_on_focus=False)
        # No blinking: the prompt is short-lived, and snapshots stay stable.
        prompt.cursor_blink = False
        yield prompt

    @property
    def input(self) -> PromptInput:
        return self.query_one(PromptInput)

    def open(self, mode: Mode, value: str = "") -> None:
        self.mode = mode
        self.query_one(Label).update(":" if mode == "command" else "/")
        self.input.suggester = CommandSuggester(self._complete) if mode == "command" else None
        self.input.value = value
        self.input.cursor_position = len(value)
        self.add_class("-open")
        # Focus now, not through ``focus()``: that defers the change to a callback queued
        # behind keys already waiting (type-ahead after ``:``), which would then reach the
        # table instead of the prompt. ``set_focus`` here keeps every queued key in order.
        self.screen.set_focus(self.input)

    def close(self) -> None:
        self.remove_class("-open")
