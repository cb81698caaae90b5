"""``FakeTerminalDriver``: Textual's headless driver that keeps what the app writes.

A fake for determinism (no terminal, no writer thread): it is the headless driver
``run_test`` uses, except that it says it is not headless, so the app writes to it
exactly what a terminal would get (every screen update, and the raw escape sequences
written outside them), and it keeps every write in order in :attr:`output`.
"""

from __future__ import annotations

from typing import Any

import pytest
from textual import constants
from textual.app import App
from textual.drivers import headless_driver

_HeadlessDriver = headless_driver.HeadlessDriver


class FakeTerminalDriver(_HeadlessDriver):
    """Keeps every string the app writes, in order."""

    def __init__(
        self,
        app: App[Any],
        *,
        debug: bool = False,
        mouse: bool = True,
        size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(app, debug=debug, mouse=mouse, size=size)
        self.output: list[str] = []

    @property
    def is_headless(self) -> bool:
        return False  # so App._display writes the screen's updates here

    def write(self, data: str) -> None:
        self.output.append(data)


def use_fake_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``run_test`` build a :class:`FakeTerminalDriver` (it imports the headless
    driver class from its module each time it builds one), for apps made after this
    call, writing 24-bit colour as to a terminal that says ``COLORTERM=truecolor`` (as
    Kitty does; under pytest Rich would pick fewer colours)."""
    monkeypatch.setattr(headless_driver, "HeadlessDriver", FakeTerminalDriver)
    monkeypatch.setattr(constants, "COLOR_SYSTEM", "truecolor")


def terminal_output(app: App[Any]) -> str:
    """Everything ``app`` wrote to its (fake) terminal so far."""
    driver = app._driver
    assert isinstance(driver, FakeTerminalDriver), "use_fake_terminal() first"
    return "".join(driver.output)


def written_since(app: App[Any], mark: int) -> str:
    """What ``app`` wrote after :func:`terminal_output` was ``mark`` characters long."""
    return terminal_output(app)[mark:]
