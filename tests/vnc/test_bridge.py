"""Our console bridge, in this process, against real VNC peers.

The peers are test_probe.py's: small RFB servers in this process that record what they
receive, and a real QEMU VNC server. Clients are the probe (websocket-client, as noVNC
would speak), raw HTTP requests on a socket (to see the status before any upgrade) and
plain TCP for the VNC port. Every log record of the bridge is captured and searched for
the tickets that were issued.
"""

from __future__ import annotations

import logging
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import websocket
from qemu_guest import QEMU, seabios_guest
from test_probe import RfbPeers, qemu_vnc_port, rfb_peers
from test_rfb import _wait_rows

from novaconsole.errors import ConnectionFailure
from novaconsole.vnc.bridge import LOG, ConsoleBridge, redact
from novaconsole.vnc.framebuffer import Rect
from novaconsole.vnc.probe import ProbeError, probe_console, probe_vnc_server
from novaconsole.vnc.routes import TcpRoute
from novaconsole.vnc.session import RfbSession
from novaconsole.vnc.tickets import (
    Refusal,
    TicketPolicy,
    TicketRefused,
    TicketStore,
    ticket_digest,
)
from novaconsole.vnc.vncauth import new_password

__all__ = ["qemu_vnc_port", "rfb_peers"]  # fixtures used by name below

SERVER = "11111111-2222-3333-4444-555555555555"
OTHER = "99999999-8888-7777-6666-555555555555"
QEMU_SERVER = "qemu-server"


@dataclass
class Captured(logging.Handler):
    lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        logging.Handler.__init__(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __hash__(self) -> int:
        return id(self)


@dataclass
class Bridge:
    bridge: ConsoleBridge
    log: Captured
    issued: list[str]

    def ticket(self, server: str = SERVER) -> str:
        ticket = self.bridge.issue_ticket(server)
        self.issued.append(ticket)
        return ticket

    def url(self, server: str = SERVER, ticket: str | None = None) -> str:
        return self.bridge.websocket_url(server, ticket or self.ticket(server))

    @property
    def port(self) -> int:
        return self.bridge.address[1]


@pytest.fixture
def captured() -> Iterator[Captured]:
    handler = Captured()
    LOG.addHandler(handler)
    previous = LOG.level
    LOG.setLevel(logging.DEBUG)
    yield handler
    LOG.removeHandler(handler)
    LOG.setLevel(previous)


def _start(
    rfb_peers: RfbPeers,
    captured: Captured,
    qemu: int | None = None,
    policy: TicketPolicy | None = None,
) -> ConsoleBridge:
    bridge = ConsoleBridge(policy=policy)
    bridge.add_route(TcpRoute(SERVER, "127.0.0.1", rfb_peers.ports["rfb38"]))
    bridge.add_route(TcpRoute(OTHER, "127.0.0.1", rfb_peers.ports["rfb37"]))
    if qemu is not None:
        bridge.add_route(TcpRoute(QEMU_SERVER, "127.0.0.1", qemu))
    return bridge.start()


@pytest.fixture
def bridge(rfb_peers: RfbPeers, qemu_vnc_port: int | None, captured: Captured) -> Iterator[Bridge]:
    b = _start(rfb_peers, captured, qemu_vnc_port)
    issued: list[str] = []
    try:
        yield Bridge(b, captured, issued)
    finally:
        b.close()
    # Whatever a test did, no ticket reached a log line.
    text = "\n".join(captured.lines)
    for ticket in issued:
        assert ticket not in text


def _raw_upgrade(port: int, path: str, origin: str | None = None) -> bytes:
    """A browser-like websocket upgrade request; returns the response head."""
    headers = [
        f"GET {path} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: binary",
    ]
    if origin:
        headers.append(f"Origin: {origin}")
    return _raw(port, "\r\n".join(headers) + "\r\n\r\n")


def _raw(port: int, request: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.partition(b"\r\n\r\n")[0]


# -- tickets, without a network -----------------------------------------------------------


def test_store_keeps_only_the_hash() -> None:
    store = TicketStore()
    ticket = store.issue(SERVER)
    assert len(ticket) >= 43
    assert list(store._tickets) == [ticket_digest(ticket)]
    assert ticket.encode() not in repr(store._tickets).encode()
    grant = store.redeem(ticket, SERVER)
    assert grant.server_id == SERVER
    assert store.outstanding() == 0


def test_store_refusals() -> None:
    now = [0.0]
    store = TicketStore(TicketPolicy(connect_ttl_s=10), clock=lambda: now[0])
    used, late, wrong = store.issue(SERVER), store.issue(SERVER), store.issue(SERVER)
    store.redeem(used, SERVER)
    refusals = {}
    for name, ticket, server in [
        ("missing", "", SERVER),
        ("unknown", "x" * 43, SERVER),
        ("used", used, SERVER),
        ("wrong", wrong, OTHER),
        ("wrong-again", wrong, SERVER),  # burnt by the wrong-server attempt
    ]:
        with pytest.raises(TicketRefused) as info:
            store.redeem(ticket, server)
        refusals[name] = getattr(info.value, "refusal", None)
    now[0] = 10.5
    with pytest.raises(TicketRefused) as info:
        store.redeem(late, SERVER)
    assert getattr(info.value, "refusal", None) is Refusal.EXPIRED
    assert refusals == {
        "missing": Refusal.MISSING,
        "unknown": Refusal.UNKNOWN,
        "used": Refusal.USED,
        "wrong": Refusal.OTHER_SERVER,
        "wrong-again": Refusal.USED,
    }


def test_redact() -> None:
    assert redact("GET /websockify/x?token=abc-DEF_1 HTTP/1.1") == (
        "GET /websockify/x?token=*** HTTP/1.1"
    )
    assert redact("path=websockify%2Fx%3Ftoken%3Dabc") == "path=websockify%2Fx%3Ftoken%3D***"


# -- the bridge against real peers ----------------------------------------------------------


def test_ticket_opens_one_session_then_is_refused(bridge: Bridge, rfb_peers: RfbPeers) -> None:
    ticket = bridge.ticket()
    probe = probe_console(bridge.url(ticket=ticket), timeout=10)
    assert probe.handshake.name == "instance-00000001"
    assert probe.subprotocol == "binary"
    # The relay carried our client's bytes to the VNC server unchanged.
    assert rfb_peers.seen["rfb38"][-1] == {
        "version": b"RFB 003.008\n",
        "security": b"\x01",
        "client_init": b"\x01",
    }
    peers_before = len(rfb_peers.seen["rfb38"])
    with pytest.raises(ProbeError) as info:
        probe_console(bridge.url(ticket=ticket), timeout=10)
    message = info.value.one_line()
    assert "refused the websocket upgrade" in message
    assert "HTTP 403 ticket already used" in message
    assert ticket not in message
    assert len(rfb_peers.seen["rfb38"]) == peers_before  # refused before any upstream
    record = bridge.bridge.sessions[0]
    assert record.server_id == SERVER
    assert record.client == "websocket"
    assert record.bytes_to_server == 14
    assert record.bytes_to_client > 12


def test_unknown_ticket_is_403_before_the_upgrade(bridge: Bridge, rfb_peers: RfbPeers) -> None:
    before = len(rfb_peers.seen.get("rfb38", []))
    head = _raw_upgrade(bridge.port, f"/websockify/{SERVER}?token=forged-ticket-value")
    assert head.startswith(b"HTTP/1.1 403 unknown ticket")
    assert b"101" not in head.split(b"\r\n")[0]
    assert len(rfb_peers.seen.get("rfb38", [])) == before
    head = _raw_upgrade(bridge.port, f"/websockify/{SERVER}")
    assert head.startswith(b"HTTP/1.1 403 no ticket in the request")


def test_expired_ticket_is_refused(rfb_peers: RfbPeers, captured: Captured) -> None:
    bridge = _start(rfb_peers, captured, policy=TicketPolicy(connect_ttl_s=0.1))
    try:
        ticket = bridge.issue_ticket(SERVER)
        time.sleep(0.3)  # past the TTL: the ticket can only be expired now
        with pytest.raises(ProbeError, match="HTTP 403 ticket expired before first connect"):
            probe_console(bridge.websocket_url(SERVER, ticket), timeout=10)
    finally:
        bridge.close()
    assert ticket not in "\n".join(captured.lines)


def test_ticket_is_bound_to_its_server(bridge: Bridge) -> None:
    ticket = bridge.ticket(SERVER)
    with pytest.raises(ProbeError, match="HTTP 403 ticket is for another server"):
        probe_console(bridge.url(OTHER, ticket), timeout=10)
    with pytest.raises(ProbeError, match="HTTP 403 ticket already used"):
        probe_console(bridge.url(SERVER, ticket), timeout=10)


def test_wrong_origin_is_refused_and_the_ticket_survives(bridge: Bridge) -> None:
    ticket = bridge.ticket()
    url = bridge.url(ticket=ticket)
    with pytest.raises(ProbeError, match="HTTP 403 Origin header does not match this host"):
        probe_console(url, origin="http://evil.example", timeout=10)
    with pytest.raises(ProbeError, match="HTTP 403 Origin header protocol does not match"):
        probe_console(url, origin="https://127.0.0.1", timeout=10)
    # A refused Origin did not spend the ticket: its own page still connects.
    assert probe_console(url, origin=f"http://127.0.0.1:{bridge.port}", timeout=10).handshake


def test_no_origin_is_a_non_browser_client(bridge: Bridge) -> None:
    assert probe_console(bridge.url(), origin=None, timeout=10).handshake.version == (3, 8)


def test_double_slash_paths_are_400(bridge: Bridge) -> None:
    head = _raw(bridge.port, "GET //evil.example/%2e%2e HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    head = _raw_upgrade(bridge.port, f"//websockify/{SERVER}?token={bridge.ticket()}")
    assert head.startswith(b"HTTP/1.1 400")


def test_unknown_server_and_path_are_404(bridge: Bridge) -> None:
    assert _raw_upgrade(bridge.port, "/websockify/nope?token=x").startswith(b"HTTP/1.1 404")
    assert _raw_upgrade(bridge.port, "/elsewhere?token=x").startswith(b"HTTP/1.1 404")


def test_novnc_page_is_served_without_listing(bridge: Bridge) -> None:
    head = _raw(bridge.port, "GET /vnc_lite.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"Referrer-Policy: no-referrer" in head
    assert _raw(bridge.port, "GET /core/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").startswith(
        b"HTTP/1.1 404"
    )
    url = bridge.bridge.novnc_url(SERVER, "T")
    assert url.endswith(f"/vnc_lite.html?autoconnect=true&path=websockify%2F{SERVER}%3Ftoken%3DT")


def _launch_head(port: int, path: str, host: str = "127.0.0.1") -> bytes:
    return _raw(port, f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n")


def _header(head: bytes, name: str) -> str:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name.lower():
            return value.strip()
    raise AssertionError(f"no {name} header in {head!r}")


def test_launch_url_is_spent_on_first_load_for_a_cookie(bridge: Bridge) -> None:
    b = bridge.bridge
    launch = b.issue_launch_ticket(SERVER)
    bridge.issued.append(launch)
    url = b.launch_url(SERVER, launch)
    assert url == f"http://127.0.0.1:{bridge.port}/launch/{SERVER}?ticket={launch}"
    path = url.partition(f":{bridge.port}")[2]
    head = _launch_head(bridge.port, path)
    assert head.startswith(b"HTTP/1.1 303")
    # The page the browser goes on to holds no secret; the cookie does, for the
    # websocket's path only, unreadable by scripts, never sent cross-site.
    location = _header(head, "Location")
    assert location == f"/vnc_lite.html?autoconnect=true&path=websockify%2F{SERVER}"
    cookie = _header(head, "Set-Cookie")
    name, _, rest = cookie.partition("=")
    assert name == f"novaconsole_ticket_{bridge.port}"
    websocket_ticket, _, attributes = rest.partition(";")
    bridge.issued.append(websocket_ticket)
    assert websocket_ticket != launch
    assert f"Path=/websockify/{SERVER}" in attributes
    assert "HttpOnly" in attributes
    assert "SameSite=Strict" in attributes
    # The launch URL a second time (a copy from argv, history, a terminal) opens nothing.
    assert _launch_head(bridge.port, path).startswith(b"HTTP/1.1 403 ticket already used")
    # A launch ticket is not a websocket ticket.
    with pytest.raises(ProbeError, match="HTTP 403 ticket is for another server"):
        probe_console(b.websocket_url(SERVER, b.issue_launch_ticket(SERVER)), timeout=10)
    # The cookie opens the session, once.
    header = [f"Cookie: other=1; {name}={websocket_ticket}"]
    ws = websocket.create_connection(
        f"ws://127.0.0.1:{bridge.port}/websockify/{SERVER}",
        timeout=10,
        subprotocols=["binary"],
        header=header,
    )
    try:
        assert ws.recv() == b"RFB 003.008\n"
    finally:
        ws.close()
    with pytest.raises(websocket.WebSocketBadStatusException, match="403"):
        websocket.create_connection(
            f"ws://127.0.0.1:{bridge.port}/websockify/{SERVER}", timeout=10, header=header
        )


def test_launch_form_post_and_file(bridge: Bridge, tmp_path: Path) -> None:
    b = bridge.bridge
    page = b.launch_file(SERVER, directory=tmp_path)
    assert page.parent.parent == tmp_path
    assert page.stat().st_mode & 0o777 == 0o600
    assert page.parent.stat().st_mode & 0o777 == 0o700
    text = page.read_text()
    ticket = text.partition("name='ticket' value='")[2].partition("'")[0]
    bridge.issued.append(ticket)
    assert len(ticket) >= 43
    assert f"action='http://127.0.0.1:{bridge.port}/launch/{SERVER}'" in text
    body = f"ticket={ticket}"
    head = _raw(
        bridge.port,
        f"POST /launch/{SERVER} HTTP/1.1\r\nHost: 127.0.0.1:{bridge.port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}",
    )
    assert head.startswith(b"HTTP/1.1 303")
    bridge.issued.append(_header(head, "Set-Cookie").partition("=")[2].partition(";")[0])
    # Spent: the file that held it is gone with its directory.
    assert not page.exists()
    assert not page.parent.exists()
    # Closing the bridge removes files whose ticket was never used.
    unused = b.launch_file(SERVER, directory=tmp_path)
    b.close()
    assert not unused.exists()


def test_host_header_must_name_the_bridge(bridge: Bridge) -> None:
    """DNS rebinding: a page of rebind.example re-pointed at 127.0.0.1 sends its own name."""
    ticket = bridge.ticket()
    port = bridge.port
    for request in (
        f"GET /vnc_lite.html HTTP/1.1\r\nHost: rebind.example:{port}\r\n\r\n",
        f"GET /launch/{SERVER}?ticket=x HTTP/1.1\r\nHost: rebind.example\r\n\r\n",
        "GET /vnc_lite.html HTTP/1.1\r\n\r\n",
    ):
        assert _raw(port, request).startswith(b"HTTP/1.1 403")
    head = _raw(
        port,
        f"GET /websockify/{SERVER}?token={ticket} HTTP/1.1\r\n"
        f"Host: rebind.example:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://rebind.example:{port}\r\n\r\n",
    )
    assert head.startswith(b"HTTP/1.1 403 Host header names 'rebind.example', not this bridge")
    # Refused before the ticket was looked at: it still opens the session.
    assert probe_console(bridge.url(ticket=ticket), timeout=10).handshake
    for host in ("localhost", "127.0.0.1", "[::1]"):
        assert _launch_head(port, "/vnc_lite.html", host).startswith(b"HTTP/1.1 200"), host
    named = ConsoleBridge(allowed_hosts=["Console.Example"])
    assert named.host_refusal("console.example:6080") is None
    assert named.host_refusal("other.example") is not None


def test_request_lines_are_logged_without_query(bridge: Bridge) -> None:
    ticket = bridge.ticket()
    _raw(bridge.port, f"GET /vnc_lite.html?token={ticket} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    # A malformed request line is logged by http.server with the whole line.
    _raw(bridge.port, f"GET /x?token={ticket} HTTP/9.9\r\n\r\n")
    probe_console(bridge.url(ticket=ticket), timeout=10)
    text = "\n".join(bridge.log.lines)
    assert "GET /vnc_lite.html 200" in text
    assert "token=***" in text
    assert ticket not in text


def test_real_qemu_through_the_bridge(bridge: Bridge, qemu_vnc_port: int | None) -> None:
    if qemu_vnc_port is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    probe = probe_console(bridge.url(QEMU_SERVER), timeout=10)
    assert probe.handshake.name == "QEMU (novaconsole-probe-test)"
    assert (probe.handshake.width, probe.handshake.height) == (640, 480)


def _wait_for_close(ws: websocket.WebSocket) -> str:
    """Read until the bridge's close frame; its reason."""
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return bytes(frame.data[2:]).decode()


def _handshaken(url: str) -> websocket.WebSocket:
    ws = websocket.create_connection(url, timeout=30, subprotocols=["binary"])
    greeting = ws.recv()
    assert greeting == b"RFB 003.008\n"
    return ws


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        (TicketPolicy(idle_timeout_s=0.3), "idle timeout"),
        (TicketPolicy(max_session_s=0.3), "session lifetime reached"),
    ],
)
def test_session_limits_close_the_websocket(
    rfb_peers: RfbPeers, captured: Captured, policy: TicketPolicy, reason: str
) -> None:
    bridge = _start(rfb_peers, captured, policy=policy)
    try:
        ws = _handshaken(bridge.websocket_url(SERVER, bridge.issue_ticket(SERVER)))
        try:
            assert _wait_for_close(ws) == reason
        finally:
            ws.close()
        bridge.wait_until_idle()
        assert bridge.sessions[0].end_reason == reason
    finally:
        bridge.close()


def test_vnc_port_takes_one_client(bridge: Bridge) -> None:
    host, port = bridge.bridge.open_vnc_port(SERVER)
    assert host == "127.0.0.1"
    assert probe_vnc_server(host, port, timeout=10).name == "instance-00000001"
    with pytest.raises(ProbeError, match=f"127.0.0.1:{port}: Connection refused"):
        probe_vnc_server(host, port, timeout=10)
    bridge.bridge.wait_until_idle()
    assert [s.client for s in bridge.bridge.sessions] == ["vnc"]


def test_vnc_auth_response_is_what_qemu_checks(tmp_path: Path) -> None:
    """Our DES answer (the bridge checks clients with the same function) against QEMU's
    own VNC server asking for a password."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    secret = tmp_path / "vnc-password"
    secret.write_text("Zq7pWx3k")
    with seabios_guest("bridge-test-vncauth", vnc_password_file=str(secret)) as port:
        hs = probe_vnc_server("127.0.0.1", port, timeout=10, password="Zq7pWx3k")
        assert hs.security_type == 2
        assert hs.name == "QEMU (bridge-test-vncauth)"
        with pytest.raises(ProbeError, match="SecurityResult 1"):
            probe_vnc_server("127.0.0.1", port, timeout=10, password="wrong123")


def test_vnc_port_with_a_password_serves_the_client_that_knows_it(
    bridge: Bridge, rfb_peers: RfbPeers
) -> None:
    password = new_password()
    assert len(password) == 8
    host, port = bridge.bridge.open_vnc_port(SERVER, password=password)
    before = len(rfb_peers.seen.get("rfb38", []))
    # A client without the password (security None only) is told so and nothing reaches
    # the VNC server; then a wrong password; then the right one gets the console.
    with pytest.raises(ProbeError, match="requires authentication"):
        probe_vnc_server(host, port, timeout=10)
    with pytest.raises(ProbeError, match=r"SecurityResult 1.*wrong password"):
        probe_vnc_server(host, port, timeout=10, password="not-it")
    assert len(rfb_peers.seen.get("rfb38", [])) == before
    hs = probe_vnc_server(host, port, timeout=10, password=password)
    assert hs.name == "instance-00000001"  # the upstream's ServerInit, handed on
    assert hs.security_type == 2
    with pytest.raises(ProbeError, match="Connection refused"):
        probe_vnc_server(host, port, timeout=10, password=password)
    bridge.bridge.wait_until_idle()
    assert [s.client for s in bridge.bridge.sessions] == ["vnc"]
    assert password not in "\n".join(bridge.log.lines)
    assert "VNC port refused a client: wrong VNC password (2 of 3)" in "\n".join(bridge.log.lines)


def test_vnc_port_closes_after_three_wrong_answers(bridge: Bridge) -> None:
    host, port = bridge.bridge.open_vnc_port(SERVER, password=new_password())
    for _ in range(3):
        with pytest.raises(ProbeError, match="wrong password"):
            probe_vnc_server(host, port, timeout=10, password="guess")
    deadline = time.monotonic() + 5
    while True:  # the listener closes right after the third answer
        try:
            socket.create_connection((host, port), timeout=1).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "the VNC port still listens"
        time.sleep(0.05)
    assert bridge.bridge.sessions == []


def test_taken_port_is_one_line(rfb_peers: RfbPeers) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        bridge = ConsoleBridge(listen_port=port)
        with pytest.raises(ConnectionFailure) as info:
            bridge.start()
        assert info.value.one_line() == (
            f"cannot listen on 127.0.0.1:{port} for the console bridge: "
            "address already in use (another process listens there)"
        )
        assert info.value.exit_code == 2
        bridge.add_route(TcpRoute(SERVER, "127.0.0.1", rfb_peers.ports["rfb38"]))
        with pytest.raises(ConnectionFailure, match=f"127.0.0.1:{port} for the VNC port"):
            bridge.open_vnc_port(SERVER, port)


def test_upstream_down_closes_with_1011(bridge: Bridge) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    bridge.bridge.add_route(TcpRoute("dead", "127.0.0.1", dead))
    ws = websocket.create_connection(bridge.url("dead"), timeout=10, subprotocols=["binary"])
    try:
        opcode, frame = ws.recv_data_frame(control_frame=True)
    finally:
        ws.close()
    assert opcode == websocket.ABNF.OPCODE_CLOSE
    assert struct.unpack(">H", frame.data[:2])[0] == 1011
    bridge.bridge.wait_until_idle()
    assert "connection refused" in bridge.bridge.sessions[-1].end_reason.lower()


# -- a real guest screen through the bridge ----------------------------------------------------


def test_guest_screen_and_keys_through_the_bridge(captured: Captured) -> None:
    """SeaBIOS's screen arrives through our websocket as it does over TCP; Escape reaches it."""
    if QEMU is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    with seabios_guest("bridge-test-keys") as port:
        direct = RfbSession.open_tcp("127.0.0.1", port)
        with direct, ConsoleBridge() as bridge:
            bridge.add_route(TcpRoute(SERVER, "127.0.0.1", port))
            ticket = bridge.issue_ticket(SERVER)
            with RfbSession.open_url(bridge.websocket_url(SERVER, ticket)) as bridged:
                _wait_rows(direct, lambda r: r[:2] == [0, 2] and 6 not in r)
                _wait_rows(bridged, lambda r: r[:2] == [0, 2] and 6 not in r)
                top = Rect(0, 0, 720, 48)
                assert bridged.snapshot().crop(top) == direct.snapshot().crop(top)
                assert not bridged.snapshot().is_blank()
                bridged.press("escape")
                rows = _wait_rows(bridged, lambda r: 6 in r)  # SeaBIOS's boot menu
                assert rows[:3] == [0, 2, 4]
                # The other client (shared session) sees the same menu: the key went to QEMU.
                assert 6 in _wait_rows(direct, lambda r: 6 in r)
            bridge.wait_until_idle()
            record = bridge.sessions[0]
            assert record.end_reason == "client closed"
            assert record.bytes_to_client > 1000
    assert ticket not in "\n".join(captured.lines)
