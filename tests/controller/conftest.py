"""Fixtures for the controller plugin's tests: sites living in a temporary directory."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from controller_helpers import TEST_SECRETS

from novaconsole.site import Site
from novaconsole.steps import RunContext


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """An SQLite site whose files all live under ``tmp_path``."""
    return Site(
        sqlite_dir=tmp_path / "db",
        nova_conf=tmp_path / "etc" / "nova" / "nova.conf",
        state_path=tmp_path / "state",
        lock_path=tmp_path / "state" / "tmp",
        services_dir=tmp_path / "services",
        secrets=dict(TEST_SECRETS),
        source="test site",
    )


@pytest.fixture
def ctx() -> RunContext:
    """A run context that records its log lines in ``ctx.cache['lines']``."""
    lines: list[str] = []
    context = RunContext(log=lines.append)
    context.cache["lines"] = lines
    return context


@pytest.fixture
def unique() -> str:
    """A name prefix unique to this test run (``nctest_<random>``)."""
    return f"nctest_{secrets.token_hex(4)}"
