"""Fixtures for the compute plugin's tests: sites whose files live in a temporary directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from novaconsole.site import Site


@pytest.fixture
def site(tmp_path: Path) -> Site:
    """A site whose files all live under ``tmp_path`` (bin dir with a privsep-helper)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "privsep-helper"
    helper.write_text("#!/bin/sh\n")
    helper.chmod(0o755)
    return Site(
        compute_host="node1",
        nova_conf=tmp_path / "etc" / "nova.conf",
        state_path=tmp_path / "state",
        lock_path=tmp_path / "state" / "tmp",
        nova_bin_dir=bin_dir,
        services_dir=tmp_path / "services",
        source="test site",
    )
