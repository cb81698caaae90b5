"""Serial console sessions through a real websockify (what nova-serialproxy is built on).

Behind websockify's TokenFile plugin sits a TCP port with a real ``/bin/sh`` on it, the way
a guest's serial port is a TCP chardev behind nova-serialproxy. ``run_raw_terminal`` is
driven in a subprocess on a real pty.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from qemu_guest import wait_listening

from novaconsole.vnc.probe import ProbeError
from novaconsole.vnc.serial import SerialSession

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SerialProxy:
    port: int
    shell_port: int

    def url(self, token: str = "shell") -> str:
        # The form Nova returns for protocol=serial (base_url ws://HOST:6083/).
        return f"ws://127.0.0.1:{self.port}/?token={token}"


@pytest.fixture(scope="module")
def serial_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SerialProxy]:
    listener = socket.create_server(("127.0.0.1", 0))
    shell_port = listener.getsockname()[1]
    shells: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # A real shell on a tty on the "serial port", as in a guest (the tty turns
            # the CR a raw terminal sends into NL); PS1 fixed so output is predictable.
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PS1": "guest# "}
            shells.append(
                subprocess.Popen(
                    [sys.executable, "-c", "import pty; pty.spawn(['/bin/sh', '-i'])"],
                    stdin=conn.fileno(),
                    stdout=conn.fileno(),
                    stderr=conn.fileno(),
                    env=env,
                )
            )
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    workdir = tmp_path_factory.mktemp("serialproxy")
    tokens = workdir / "tokens"
    tokens.write_text(f"shell: 127.0.0.1:{shell_port}\nnothing: 127.0.0.1:{_free_port()}\n")
    port = _free_port()
    log = workdir / "websockify.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "websockify", "--token-plugin", "TokenFile",
             "--token-source", str(tokens), f"127.0.0.1:{port}"],
            stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        if not wait_listening(port, proc):
            pytest.fail(f"websockify did not start: {log.read_text()}")
        yield SerialProxy(port, shell_port)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        stop.set()
        listener.close()
        thread.join(timeout=5)
        for shell in shells:
            shell.kill()
            shell.wait(timeout=30)


def _read_until(session: SerialSession, needle: bytes, timeout: float = 20) -> bytes:
    """Read (readiness wait with a deadline) until ``needle`` arrived."""
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        if time.monotonic() > deadline:
            raise AssertionError(f"never saw {needle!r}; got {seen[-300:]!r}")
        data = session.read()
        if not data:
            raise AssertionError(f"stream ended ({session.error}); got {seen[-300:]!r}")
        seen += data
    return seen


def test_serial_session_reaches_the_shell_and_back(serial_proxy: SerialProxy) -> None:
    with SerialSession.open_url(serial_proxy.url(), timeout=10) as session:
        assert session.transport._ws.getsubprotocol() == "binary"  # type: ignore[attr-defined]
        session.write(b"uname -s; echo done-$((6*7))\r")
        out = _read_until(session, b"done-42")
        assert b"Linux" in out
        assert "127.0.0.1" in session.where
        assert "token" not in session.where


def test_reader_thread_reports_the_end_of_the_stream(serial_proxy: SerialProxy) -> None:
    session = SerialSession.open_url(serial_proxy.url(), timeout=10)
    chunks: list[bytes] = []
    ended = threading.Event()
    reasons: list[str | None] = []

    def on_end(reason: str | None) -> None:
        reasons.append(reason)
        ended.set()

    session.start_reader(chunks.append, on_end)
    session.write(b"echo bye; exit\r")
    assert ended.wait(20)
    assert b"bye" in b"".join(chunks)
    assert reasons[0] is not None
    assert "closed the connection" in reasons[0]
    with pytest.raises(ProbeError, match="closed the connection"):
        session.write(b"more\n")
    session.close()


def test_unknown_token_is_a_one_line_error(serial_proxy: SerialProxy) -> None:
    with pytest.raises(ProbeError, match="closed the connection during the websocket upgrade"):
        SerialSession.open_url(serial_proxy.url("no-such-token"), timeout=10)


RAW_TERMINAL = """
import os
from novaconsole.vnc.serial import SerialSession, run_raw_terminal
url = os.environ.pop("NOVACONSOLE_TEST_SERIAL_URL")
reason = run_raw_terminal(SerialSession.open_url(url), banner="attached; escape is ^]")
print("detached" if reason is None else "ended: " + reason, flush=True)
"""


def _pty_read_until(fd: int, needle: bytes, timeout: float = 20) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"never saw {needle!r}; got {seen[-300:]!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                data = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the pty
                break
            seen += data
    return seen


def _run_raw(url: str) -> tuple[subprocess.Popen[bytes], int, int]:
    master, slave = pty.openpty()
    # Console URLs carry tokens: through the environment, never the command line.
    env = {**os.environ, "NOVACONSOLE_TEST_SERIAL_URL": url}
    proc = subprocess.Popen(
        [sys.executable, "-c", RAW_TERMINAL],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO, env=env, start_new_session=True,
    )  # fmt: skip
    return proc, master, slave


def test_run_raw_terminal_on_a_pty_detaches_and_restores_the_terminal(
    serial_proxy: SerialProxy,
) -> None:
    proc, master, slave = _run_raw(serial_proxy.url())
    try:
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ECHO  # a cooked terminal to start with
        _pty_read_until(master, b"attached; escape is ^]")
        raw = termios.tcgetattr(slave)
        assert not raw[3] & termios.ECHO
        assert not raw[3] & termios.ICANON
        os.write(master, b"uname -a\r")
        assert b"Linux" in _pty_read_until(master, b"Linux")
        os.write(master, b"\x1d")  # Ctrl-]
        assert b"detached" in _pty_read_until(master, b"detached")
        assert proc.wait(timeout=20) == 0
        assert termios.tcgetattr(slave) == before  # restored exactly
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        os.close(master)
        os.close(slave)


def test_run_raw_terminal_restores_the_terminal_on_sigterm(serial_proxy: SerialProxy) -> None:
    proc, master, slave = _run_raw(serial_proxy.url())
    try:
        before = termios.tcgetattr(slave)
        _pty_read_until(master, b"attached")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 128 + signal.SIGTERM
        assert termios.tcgetattr(slave) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        os.close(master)
        os.close(slave)


def test_run_raw_terminal_reports_the_guest_side_ending(serial_proxy: SerialProxy) -> None:
    proc, master, slave = _run_raw(serial_proxy.url())
    try:
        _pty_read_until(master, b"attached")
        os.write(master, b"exit\r")
        out = _pty_read_until(master, b"closed the connection")
        assert b"serial console proxy at 127.0.0.1" in out
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        os.close(master)
        os.close(slave)
