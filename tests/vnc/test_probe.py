"""Tests for the noVNC console probe.

The RFB state machine is checked on byte transcripts, and the whole probe against real
peers: a small asyncio server in this process speaking RFB 3.3/3.7/3.8 bytes, reached
through a real ``websockify`` process (the proxy nova-novncproxy is built on) with its
``TokenFile`` token plugin and ``ExpectOrigin`` auth plugin.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from novaconsole.errors import ConfigError, ConnectionFailure
from novaconsole.vnc.probe import (
    HandshakeState,
    ProbeError,
    RfbClientHandshake,
    RfbError,
    parse_console_url,
    probe_console,
    probe_vnc_server,
    redact_url,
)

# -- RFB bytes as a server sends them -------------------------------------------------------

NAME = b"instance-00000001"
# 1024x768, 32 bpp, depth 24, little endian, true colour, 255 maxes, shifts 16/8/0.
SERVER_INIT = (
    struct.pack(">HHBBBBHHHBBBxxx", 1024, 768, 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
    + struct.pack(">I", len(NAME))
    + NAME
)


def rfb_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack(">I", len(data)) + data


# -- the state machine on transcripts ---------------------------------------------------------


def run_transcript(server_bytes: bytes, chunk: int) -> tuple[RfbClientHandshake, bytes]:
    machine = RfbClientHandshake()
    sent = b""
    for i in range(0, len(server_bytes), chunk):
        sent += machine.receive(server_bytes[i : i + chunk])
    return machine, sent


RFB38 = b"RFB 003.008\n" + bytes([2, 2, 1]) + struct.pack(">I", 0) + SERVER_INIT


@pytest.mark.parametrize("chunk", [1, 5, len(RFB38)])
def test_rfb38_transcript_in_any_split(chunk: int) -> None:
    machine, sent = run_transcript(RFB38, chunk)
    assert machine.state is HandshakeState.DONE
    # version reply, security type None, ClientInit shared=1
    assert sent == b"RFB 003.008\n" + b"\x01" + b"\x01"
    result = machine.result
    assert result.version == (3, 8)
    assert result.security_types == (2, 1)
    assert (result.width, result.height, result.name) == (1024, 768, "instance-00000001")
    assert result.pixel_format.bits_per_pixel == 32
    assert result.pixel_format.depth == 24
    assert result.pixel_format.true_colour
    assert not result.pixel_format.big_endian
    assert (result.pixel_format.red_shift, result.pixel_format.blue_shift) == (16, 0)


def test_rfb37_none_has_no_security_result() -> None:
    machine, sent = run_transcript(b"RFB 003.007\n" + bytes([1, 1]) + SERVER_INIT, 3)
    assert sent == b"RFB 003.007\n\x01\x01"
    assert machine.result.version == (3, 7)


def test_rfb33_server_chooses_the_type() -> None:
    machine, sent = run_transcript(b"RFB 003.003\n" + struct.pack(">I", 1) + SERVER_INIT, 4)
    assert sent == b"RFB 003.003\n\x01"
    assert machine.result.security_types == (1,)


@pytest.mark.parametrize(
    ("greeting", "reply"),
    [
        (b"RFB 003.889\n", b"RFB 003.008\n"),  # Apple Remote Desktop
        (b"RFB 004.001\n", b"RFB 003.008\n"),  # RealVNC 4
        (b"RFB 003.005\n", b"RFB 003.003\n"),  # RFC 6143: 3.5 is 3.3
    ],
)
def test_version_negotiation(greeting: bytes, reply: bytes) -> None:
    assert RfbClientHandshake().receive(greeting) == reply


def test_not_rfb_is_detected_from_the_first_bytes() -> None:
    with pytest.raises(RfbError, match="not an RFB server: greeting starts b'HTTP'"):
        RfbClientHandshake().receive(b"HTTP")


def test_old_rfb_is_refused() -> None:
    with pytest.raises(RfbError, match=r"unsupported RFB 002\.000"):
        RfbClientHandshake().receive(b"RFB 002.000\n")


def test_vnc_auth_only_names_the_offered_types() -> None:
    machine = RfbClientHandshake()
    machine.receive(b"RFB 003.008\n")
    with pytest.raises(RfbError, match=r"offers VNC Authentication \(2\), VeNCrypt \(19\)"):
        machine.receive(bytes([2, 2, 19]))


def test_zero_security_types_carry_the_reason() -> None:
    machine = RfbClientHandshake()
    machine.receive(b"RFB 003.008\n")
    reason = rfb_string("Too many security failures")
    assert machine.receive(b"\x00" + reason[:10]) == b""  # reason still incomplete
    with pytest.raises(RfbError, match="refused the connection: Too many security failures"):
        machine.receive(reason[10:])


def test_failed_security_result_carries_the_reason() -> None:
    machine = RfbClientHandshake()
    machine.receive(b"RFB 003.008\n" + bytes([1, 1]))
    with pytest.raises(RfbError, match=r"SecurityResult 1\): access denied"):
        machine.receive(struct.pack(">I", 1) + rfb_string("access denied"))


def test_result_before_done_is_an_error() -> None:
    machine = RfbClientHandshake()
    machine.receive(b"RFB 003.008\n")
    with pytest.raises(RuntimeError, match="waiting for the security types"):
        _ = machine.result


def test_rfb_errors_are_one_line_exit_2_errors() -> None:
    assert issubclass(RfbError, ConnectionFailure)
    assert RfbError("x").exit_code == 2


# -- console URLs -----------------------------------------------------------------------------


def test_nova_novnc_url_puts_the_token_in_path() -> None:
    endpoint = parse_console_url("http://127.0.0.1:6080/vnc_auto.html?path=%3Ftoken%3Dabc-123")
    assert endpoint.websocket_url == "ws://127.0.0.1:6080/?token=abc-123"
    assert endpoint.origin == "http://127.0.0.1:6080"
    assert (endpoint.host, endpoint.port) == ("127.0.0.1", 6080)
    assert endpoint.redacted_url == "ws://127.0.0.1:6080/?token=***"


def test_base_url_with_its_own_path_parameter() -> None:
    url = "https://cloud.example:443/vnc_lite.html?path=novnc%2Fwebsockify%3Ftoken%3Dt0k"
    endpoint = parse_console_url(url)
    assert endpoint.websocket_url == "wss://cloud.example:443/novnc/websockify?token=t0k"
    assert endpoint.origin == "https://cloud.example:443"


def test_old_top_level_token_goes_to_noVNCs_default_path() -> None:
    endpoint = parse_console_url("http://h:6080/vnc_lite.html?token=t0k")
    assert endpoint.websocket_url == "ws://h:6080/websockify?token=t0k"
    assert endpoint.port == 6080


def test_websocket_url_is_taken_as_is() -> None:
    endpoint = parse_console_url("wss://h/websockify?token=t0k")
    assert endpoint.websocket_url == "wss://h/websockify?token=t0k"
    assert (endpoint.origin, endpoint.port) == ("https://h", 443)


def test_url_without_token_is_refused() -> None:
    with pytest.raises(ConfigError, match="carries no token"):
        parse_console_url("http://127.0.0.1:6080/vnc_auto.html")


def test_url_errors_never_show_the_token() -> None:
    with pytest.raises(ConfigError) as info:
        parse_console_url("ftp://h/vnc_auto.html?path=%3Ftoken%3Dsecret-token")
    assert "secret-token" not in str(info.value)
    assert redact_url("http://h/?path=%3Ftoken%3Dsecret&x=1") == "http://h/?path=%3Ftoken%3D***&x=1"


def test_userinfo_is_not_forwarded() -> None:
    endpoint = parse_console_url("http://user:pw@h:6080/vnc_auto.html?path=%3Ftoken%3Dt")
    assert "pw" not in endpoint.websocket_url + endpoint.origin


# -- a real RFB peer behind a real websockify ------------------------------------------------

Behaviour = Callable[
    [asyncio.StreamReader, asyncio.StreamWriter, dict[str, bytes]], Awaitable[None]
]


async def _wait_for_eof(reader: asyncio.StreamReader) -> None:
    while await reader.read(4096):
        pass


async def rfb38_none(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: dict[str, bytes]
) -> None:
    writer.write(b"RFB 003.008\n")
    seen["version"] = await reader.readexactly(12)
    writer.write(bytes([2, 2, 1]))  # offers VNC Authentication and None
    seen["security"] = await reader.readexactly(1)
    writer.write(struct.pack(">I", 0))
    seen["client_init"] = await reader.readexactly(1)
    writer.write(SERVER_INIT)
    await writer.drain()
    await _wait_for_eof(reader)


async def rfb37_none(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: dict[str, bytes]
) -> None:
    writer.write(b"RFB 003.007\n")
    seen["version"] = await reader.readexactly(12)
    writer.write(bytes([1, 1]))
    seen["security"] = await reader.readexactly(1)
    seen["client_init"] = await reader.readexactly(1)
    writer.write(SERVER_INIT)
    await _wait_for_eof(reader)


async def rfb33_none(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: dict[str, bytes]
) -> None:
    writer.write(b"RFB 003.003\n")
    seen["version"] = await reader.readexactly(12)
    writer.write(struct.pack(">I", 1))
    seen["client_init"] = await reader.readexactly(1)
    writer.write(SERVER_INIT)
    await _wait_for_eof(reader)


async def vnc_auth_only(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: dict[str, bytes]
) -> None:
    writer.write(b"RFB 003.008\n")
    seen["version"] = await reader.readexactly(12)
    writer.write(bytes([1, 2]))
    await _wait_for_eof(reader)


async def refused(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: dict[str, bytes]
) -> None:
    writer.write(b"RFB 003.008\n")
    seen["version"] = await reader.readexactly(12)
    writer.write(b"\x00" + rfb_string("Too many security failures"))
    await _wait_for_eof(reader)


async def close_at_once(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: dict[str, bytes]
) -> None:
    seen["accepted"] = b"1"


async def silent(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: dict[str, bytes]
) -> None:
    await _wait_for_eof(reader)


BEHAVIOURS: dict[str, Behaviour] = {
    "rfb38": rfb38_none,
    "rfb37": rfb37_none,
    "rfb33": rfb33_none,
    "vncauth": vnc_auth_only,
    "refused": refused,
    "closes": close_at_once,
    "silent": silent,
}


@dataclass
class RfbPeers:
    """One listening port per behaviour; ``seen`` records what each client sent."""

    ports: dict[str, int] = field(default_factory=dict)
    seen: dict[str, list[dict[str, bytes]]] = field(default_factory=dict)


@pytest.fixture(scope="module")
def rfb_peers() -> Iterator[RfbPeers]:
    peers = RfbPeers()
    loop = asyncio.new_event_loop()
    servers: list[asyncio.Server] = []

    def serve(
        name: str, behaviour: Behaviour
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen: dict[str, bytes] = {}
            peers.seen.setdefault(name, []).append(seen)
            try:
                await behaviour(reader, writer, seen)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        return handle

    async def start() -> None:
        for name, behaviour in BEHAVIOURS.items():
            server = await asyncio.start_server(serve(name, behaviour), "127.0.0.1", 0)
            servers.append(server)
            peers.ports[name] = server.sockets[0].getsockname()[1]

    thread = threading.Thread(target=loop.run_forever, name="rfb-peers", daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
    yield peers

    async def stop() -> None:
        for server in servers:
            server.close()

    asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=30)
    loop.close()


def _listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """Wait until 127.0.0.1:``port`` accepts, or ``proc`` exits (start-up readiness only)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


QEMU = shutil.which("qemu-system-x86_64")


def _free_vnc_display() -> int:
    for display in range(50, 100):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", 5900 + display))
            except OSError:
                continue
            return display
    raise RuntimeError("no free VNC display between :50 and :99")


@pytest.fixture(scope="module")
def qemu_vnc_port() -> Iterator[int | None]:
    """A real QEMU VNC server (no guest: ``-machine none``), or None without QEMU."""
    if QEMU is None:
        yield None
        return
    display = _free_vnc_display()
    proc = subprocess.Popen(
        [
            QEMU,
            "-machine",
            "none",
            "-display",
            "none",
            "-nodefaults",
            "-S",
            "-name",
            "guest=novaconsole-probe-test",
            "-vnc",
            f"127.0.0.1:{display}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    port = 5900 + display
    try:
        if not _listening(port, proc):
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            pytest.fail(f"QEMU did not start its VNC server: {stderr}")
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=30)


@dataclass
class Proxy:
    port: int
    log: Path

    def url(self, token: str) -> str:
        """The console URL the way Nova 34 builds it (token inside noVNC's path)."""
        return f"http://127.0.0.1:{self.port}/vnc_auto.html?path=%3Ftoken%3D{token}"


@pytest.fixture(scope="module")
def websockify_proxy(
    rfb_peers: RfbPeers, qemu_vnc_port: int | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """A real websockify process: TokenFile tokens, ExpectOrigin of its own origin."""
    workdir = tmp_path_factory.mktemp("websockify")
    tokens = workdir / "tokens"
    lines = [f"{name}: 127.0.0.1:{port}" for name, port in rfb_peers.ports.items()]
    lines.append(f"nothing-listens: 127.0.0.1:{_free_port()}")
    if qemu_vnc_port is not None:
        lines.append(f"qemu: 127.0.0.1:{qemu_vnc_port}")
    tokens.write_text("\n".join(lines) + "\n")
    port = _free_port()
    log = workdir / "websockify.log"
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "websockify",
                "--token-plugin",
                "TokenFile",
                "--token-source",
                str(tokens),
                "--auth-plugin",
                "ExpectOrigin",
                "--auth-source",
                f"http://127.0.0.1:{port}",
                f"127.0.0.1:{port}",
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        if not _listening(port, proc):
            pytest.fail(f"websockify did not start: {log.read_text()}")
        yield Proxy(port, log)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # websockify forks one child per connection
        proc.wait(timeout=30)


def test_probe_through_websockify_rfb38(websockify_proxy: Proxy, rfb_peers: RfbPeers) -> None:
    probe = probe_console(websockify_proxy.url("rfb38"), timeout=10)
    hs = probe.handshake
    assert (hs.server_version, hs.version, hs.security_type) == ("RFB 003.008", (3, 8), 1)
    assert (hs.width, hs.height, hs.name) == (1024, 768, "instance-00000001")
    assert probe.subprotocol == "binary"
    assert probe.origin == f"http://127.0.0.1:{websockify_proxy.port}"
    assert probe.websocket_url == f"ws://127.0.0.1:{websockify_proxy.port}/?token=***"
    # What the real peer received from us, byte for byte.
    assert rfb_peers.seen["rfb38"][-1] == {
        "version": b"RFB 003.008\n",
        "security": b"\x01",
        "client_init": b"\x01",
    }
    assert probe.as_dict()["handshake"]["pixel_format"]["depth"] == 24


@pytest.mark.parametrize(("token", "version"), [("rfb37", (3, 7)), ("rfb33", (3, 3))])
def test_probe_through_websockify_older_rfb(
    websockify_proxy: Proxy, rfb_peers: RfbPeers, token: str, version: tuple[int, int]
) -> None:
    probe = probe_console(websockify_proxy.url(token), timeout=10)
    assert probe.handshake.version == version
    assert rfb_peers.seen[token][-1]["client_init"] == b"\x01"


def test_non_shared_client_init(websockify_proxy: Proxy, rfb_peers: RfbPeers) -> None:
    probe_console(websockify_proxy.url("rfb38"), timeout=10, shared=False)
    assert rfb_peers.seen["rfb38"][-1]["client_init"] == b"\x00"


def test_wrong_origin_is_refused_in_one_line(websockify_proxy: Proxy) -> None:
    with pytest.raises(ProbeError) as info:
        probe_console(websockify_proxy.url("rfb38"), origin="http://evil.example", timeout=10)
    message = info.value.one_line()
    assert "refused the websocket upgrade" in message
    assert "HTTP 403 Invalid Origin" in message
    assert "token=***" in message


def test_unknown_token_is_dropped_during_the_upgrade(websockify_proxy: Proxy) -> None:
    with pytest.raises(ProbeError, match="closed the connection during the websocket upgrade"):
        probe_console(websockify_proxy.url("no-such-token"), timeout=10)


def test_unreachable_vnc_server_reports_the_close_frame(websockify_proxy: Proxy) -> None:
    with pytest.raises(ProbeError, match="close frame 1011 Failed to connect to downstream server"):
        probe_console(websockify_proxy.url("nothing-listens"), timeout=10)


def test_vnc_server_closing_before_greeting(websockify_proxy: Proxy) -> None:
    with pytest.raises(ProbeError) as info:
        probe_console(websockify_proxy.url("closes"), timeout=10)
    message = info.value.one_line()
    assert "while waiting for the RFB greeting" in message
    assert "token is invalid or expired" in message


def test_vnc_auth_only_through_websockify(websockify_proxy: Proxy) -> None:
    with pytest.raises(
        RfbError, match=r"requires authentication \(offers VNC Authentication \(2\)\)"
    ):
        probe_console(websockify_proxy.url("vncauth"), timeout=10)


def test_refusal_reason_through_websockify(websockify_proxy: Proxy) -> None:
    with pytest.raises(RfbError, match="Too many security failures"):
        probe_console(websockify_proxy.url("refused"), timeout=10)


def test_silent_server_times_out_with_the_stage(websockify_proxy: Proxy) -> None:
    with pytest.raises(ProbeError, match="sent nothing in time while waiting for the RFB greeting"):
        probe_console(websockify_proxy.url("silent"), timeout=0.5)


def test_proxy_not_listening() -> None:
    port = _free_port()
    with pytest.raises(
        ProbeError, match=f"cannot connect to console proxy at 127.0.0.1:{port}: connection refused"
    ):
        probe_console(f"http://127.0.0.1:{port}/vnc_auto.html?path=%3Ftoken%3Dx", timeout=5)


def test_direct_tcp_probe(rfb_peers: RfbPeers) -> None:
    result = probe_vnc_server("127.0.0.1", rfb_peers.ports["rfb33"], timeout=10)
    assert result.version == (3, 3)
    with pytest.raises(ProbeError, match=r"VNC server at 127\.0\.0\.1:\d+ closed the connection"):
        probe_vnc_server("127.0.0.1", rfb_peers.ports["closes"], timeout=10)


def _require(port: int | None) -> int:
    if port is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    return port


def test_real_qemu_vnc_server_directly(qemu_vnc_port: int | None) -> None:
    result = probe_vnc_server("127.0.0.1", _require(qemu_vnc_port), timeout=10)
    assert result.server_version == "RFB 003.008"
    assert result.security_types == (1,)
    assert result.name == "QEMU (novaconsole-probe-test)"
    assert (result.width, result.height) == (640, 480)


def test_real_qemu_vnc_server_through_websockify(
    websockify_proxy: Proxy, qemu_vnc_port: int | None
) -> None:
    _require(qemu_vnc_port)
    probe = probe_console(websockify_proxy.url("qemu"), timeout=10)
    assert probe.handshake.name == "QEMU (novaconsole-probe-test)"
    assert probe.handshake.pixel_format.true_colour
