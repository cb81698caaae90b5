"""Helpers for tests that drive the ``novaconsole`` command of this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import time

#: When this test session started, as oslo.log stamps lines (local time, to the second).
SESSION_START = time.strftime("%Y-%m-%d %H:%M:%S")


def novaconsole_cmd(*args: str) -> list[str]:
    """The argv that runs this checkout's ``novaconsole``."""
    return [sys.executable, "-m", "novaconsole", *args]


def run_novaconsole(
    *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run(
        novaconsole_cmd(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        check=False,
    )
