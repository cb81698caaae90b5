"""Shared fixtures: the real all-in-one lab, started once per test session.

Tests marked ``lab`` use the lab through :func:`lab_cloud` / :func:`lab_state`; the
first one to ask brings it up with ``novaconsole lab up`` (a re-run on a running lab
converges with zero changes in seconds). Tests marked ``lab_lifecycle`` tear labs
down and are moved to the very end of the session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from labtools import run_novaconsole

from novaconsole.cloud import LAB_CLOUD
from novaconsole.lab.config import LabConfig
from novaconsole.lab.venvs import Venv, default_state_dir, ensure_venvs

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "lab_lifecycle: tears labs down; runs after every other test"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Lab tear-down tests go last, so every other lab test sees a running lab."""
    items.sort(key=lambda item: item.get_closest_marker("lab_lifecycle") is not None)


def _failure_lines(stderr: str) -> str:
    """The failed steps with what they said, then the summary: what CI needs to show.

    The last lines alone are the steps skipped after the failure, which hide the cause.
    """
    lines = stderr.splitlines()
    shown: list[str] = []
    for number, line in enumerate(lines):
        if "FAILED" in line or "error" in line.lower():
            shown.extend(lines[number : number + 12])
    return "\n".join(shown[:120] + lines[-3:])


@pytest.fixture(scope="session")
def lab_state() -> LabConfig:
    """The lab's configuration, after making sure ``lab up`` has converged."""
    config = LabConfig.load(default_state_dir())
    if os.environ.get("NOVACONSOLE_TEST_LAB_AS_IS") == "1":
        # Development on a shared lab: use it as it runs, do not converge it to this
        # checkout's steps (another checkout may own it). CI never sets this.
        return config
    proc = run_novaconsole("lab", "up", "-q")
    # Keep the run's output for the record (pytest shows it on failure).
    (config.state_dir / "last-lab-up.log").write_text(proc.stderr)
    if proc.returncode != 0:
        pytest.fail(
            f"novaconsole lab up failed (exit {proc.returncode}):\n{_failure_lines(proc.stderr)}"
        )
    return config


@pytest.fixture(scope="session")
def lab_cloud(lab_state: LabConfig) -> str:
    """The clouds.yaml name of the running lab (admin)."""
    return LAB_CLOUD


@pytest.fixture(scope="session")
def lab_venvs() -> dict[str, Venv]:
    """The lab's Python environments (installed if missing; no services started)."""
    root = default_state_dir() / "venvs"
    return ensure_venvs(root, log_path=root.parent / "logs" / "install.log")


@pytest.fixture(scope="session")
def openstack_cli(lab_venvs: dict[str, Venv]) -> Path:
    """The ``openstack`` client from the lab venv, the peer our results are compared to."""
    return lab_venvs["openstack"].bin / "openstack"
