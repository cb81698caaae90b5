"""``ConfirmScreen``: yes/no for a mutating action, optionally asking for a reason."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label


class ConfirmScreen(ModalScreen[str | None]):
    """Dismisses with the reason ("" when none was asked or typed), or ``None`` if declined."""

    DEFAULT_CSS = """
    ConfirmScreen {
        align: center middle;
    }
    ConfirmScreen > Vertical {
        width: 70;
        height: auto;
        border: thick $warning;
        background: $surface;
        padding: 1 2;
    }
    ConfirmScreen Label {
        width: 100%;
        margin-bottom: 1;
    }
    ConfirmScreen Horizontal {
        height: auto;
        align: right middle;
    }
    ConfirmScreen Button {
        margin-left: 2;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,n", "decline", "No"),
        Binding("y", "accept", "Yes", show=True),
    ]

    def __init__(self, question: str, *, ask_reason: bool = False) -> None:
        super().__init__()
        self.question = question
        self.ask_reason = ask_reason

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question, id="question")
            if self.ask_reason:
                yield Input(placeholder="reason (optional), Enter to confirm", id="reason")
            with Horizontal():
                yield Button("Yes (y)", variant="warning", id="yes")
                yield Button("No (n)", variant="primary", id="no")

    def on_mount(self) -> None:
        if self.ask_reason:
            self.query_one("#reason", Input).focus()
        else:
            self.query_one("#no", Button).focus()

    def _reason(self) -> str:
        if not self.ask_reason:
            return ""
        return self.query_one("#reason", Input).value.strip()

    def action_accept(self) -> None:
        self.dismiss(self._reason())

    def action_decline(self) -> None:
        self.dismiss(None)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_accept()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "yes":
            self.action_accept()
        else:
            self.action_decline()
