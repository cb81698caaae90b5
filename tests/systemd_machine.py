"""A real systemd, booted for tests in a throw-away machine (see systemd-container.sh).

Machines of this kind run no systemd (PID 1 is the sandbox's own init), so tests of the
systemd path boot one: systemd as PID 1 of new PID and mount namespaces, over an overlay of
this machine's root. Commands run inside with nsenter; only ``shared`` (bind-mounted at the
same path) is written through to the real file system. One machine at a time: the machine
shares the host's cgroup hierarchy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).with_name("systemd-container.sh")


def can_boot() -> str | None:
    """Why a machine cannot boot here (``None``: it can)."""
    if os.geteuid() != 0:
        return "booting a systemd test machine needs root (namespaces, overlayfs)"
    for tool in ("unshare", "nsenter", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/lib/systemd/systemd").exists():
        return "systemd is not installed (/lib/systemd/systemd)"
    return None


class SystemdMachine:
    """A booted machine; use as a context manager (the machine dies on exit)."""

    def __init__(self, shared: Path) -> None:
        self.shared = shared
        self.work = Path(tempfile.mkdtemp(prefix="novaconsole-systemd-"))
        self.boot_log = shared / "systemd-boot.log"
        self._outer: subprocess.Popen[bytes] | None = None
        self.pid1 = 0

    def __enter__(self) -> SystemdMachine:
        with self.boot_log.open("wb") as log:
            self._outer = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--fork",
                    "--mount",
                    "--propagation",
                    "private",
                    "--",
                    str(SCRIPT),
                    str(self.work),
                    str(self.shared),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        state = ""
        while time.monotonic() < deadline:
            if self._outer.poll() is not None:
                break
            children = Path(f"/proc/{self._outer.pid}/task/{self._outer.pid}/children")
            try:
                self.pid1 = int(children.read_text().split()[0])
            except (OSError, IndexError, ValueError):
                time.sleep(0.1)
                continue
            state = self.run("systemctl", "is-system-running", timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                return self
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise RuntimeError(
            f"systemd test machine did not boot (state {state or 'unknown'}): "
            f"{self.boot_log.read_text(errors='replace')[-1500:]}"
        )

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside the machine (its mounts, PIDs and root)."""
        return ["nsenter", "-t", str(self.pid1), "-m", "-p", "-r", "-w", "--", *argv]

    def run(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    def processes(self) -> list[str]:
        """``PID COMMAND`` of every process in the machine but PID 1 and this listing."""
        out = self.run("ps", "-e", "-o", "pid=,comm=").stdout.split("\n")
        rows = [line.split(None, 1) for line in out if line.strip()]
        return [f"{pid} {comm}" for pid, comm in rows if pid != "1" and comm != "ps"]

    def __exit__(self, *exc: object) -> None:
        if self.pid1:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid1, 9)
        if self._outer is not None:
            try:
                self._outer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._outer.kill()
        # The tmpfs and overlay went with the mount namespace; only the empty mount point stays.
        shutil.rmtree(self.work, ignore_errors=True)
