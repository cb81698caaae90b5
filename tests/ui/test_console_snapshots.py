"""Snapshot tests: one per visible state, over the recorded fake, clock frozen, 140x36.

Update after an intended change with ``pytest tests/ui --snapshot-update`` and review the
SVGs under ``tests/ui/__snapshots__/`` (they are text, LF-only).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from console_helpers import AppFactory, settle
from fake_source import FakeCloudSource
from textual.pilot import Pilot

from novaconsole.ui.settings import ConsoleSettings

SIZE = (140, 36)
Snap = Callable[..., bool]


def _after(*keys: str) -> Callable[[Pilot[Any]], Any]:
    async def run(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        if keys:
            await pilot.press(*keys)
            await settle(pilot)

    return run


@pytest.mark.parametrize("key", ["1", "2", "3", "4", "5"])
def test_each_pane(snap_compare: Snap, fake_app: AppFactory, key: str) -> None:
    assert snap_compare(fake_app(), run_before=_after(key), terminal_size=SIZE)


def test_filter(snap_compare: Snap, fake_app: AppFactory) -> None:
    assert snap_compare(fake_app(), run_before=_after("slash", *"!sched"), terminal_size=SIZE)


def test_sorted_reverse(snap_compare: Snap, fake_app: AppFactory) -> None:
    assert snap_compare(fake_app(), run_before=_after("o", "o", "O"), terminal_size=SIZE)


def test_command_completion(snap_compare: Snap, fake_app: AppFactory) -> None:
    assert snap_compare(fake_app(), run_before=_after("colon", "h", "y"), terminal_size=SIZE)


def test_details_yaml(snap_compare: Snap, fake_app: AppFactory) -> None:
    assert snap_compare(fake_app(), run_before=_after("5", "enter"), terminal_size=SIZE)


def test_help(snap_compare: Snap, fake_app: AppFactory) -> None:
    assert snap_compare(fake_app(), run_before=_after("question_mark"), terminal_size=SIZE)


def test_confirm_disable_with_reason(snap_compare: Snap, fake_app: AppFactory) -> None:
    assert snap_compare(fake_app(), run_before=_after("G", "d", *"kernel"), terminal_size=SIZE)


def test_error_state(snap_compare: Snap, fake_app: AppFactory) -> None:
    source = FakeCloudSource(
        fail={
            "raw_images": "image list on cloud 'novaconsole-lab': cannot connect to http://127.0.0.1:9292/v2/images"
        }
    )
    assert snap_compare(fake_app(source), run_before=_after("3"), terminal_size=SIZE)


def test_readonly(snap_compare: Snap, fake_app: AppFactory) -> None:
    app = fake_app(settings=ConsoleSettings(refresh=0, readonly=True))
    assert snap_compare(app, run_before=_after(), terminal_size=SIZE)


@pytest.mark.parametrize("theme", ["dark", "light", "high-contrast"])
def test_theme(snap_compare: Snap, fake_app: AppFactory, theme: str) -> None:
    app = fake_app(settings=ConsoleSettings(refresh=0, theme=theme), remember_theme=False)
    assert snap_compare(app, run_before=_after("4"), terminal_size=SIZE)
