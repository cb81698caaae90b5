"""Probe a noVNC console URL: websocket to nova-novncproxy, then the RFB handshake.

Nova hands out console URLs like ``http://HOST:6080/vnc_auto.html?path=%3Ftoken%3D...``
(``ConsoleAuthToken.access_url`` puts the token inside noVNC's ``path`` parameter) or,
from older deployments, ``.../vnc_lite.html?token=...``. nova-novncproxy is a websockify
``WebSocketProxy``: it completes the websocket upgrade first and only then validates the
token (hashed in the cell database, ``[consoleauth] token_ttl``) and the ``Origin`` header
(host must match ``Host`` or ``[console] allowed_origins``, scheme must match the base
URL's). On failure it just drops the connection, so the client cannot tell those causes
apart; the error says so and points at nova-novncproxy's log.

:class:`RfbClientHandshake` is the RFB 3.3/3.7/3.8 client handshake as a sans-I/O state
machine (bytes in, bytes out) up to ServerInit; transports feed it from a websocket or a
plain TCP socket. Only security type None is supported: nova-novncproxy offers None to
clients even when it speaks VeNCrypt to the compute node.
"""

from __future__ import annotations

import contextlib
import enum
import re
import socket
import struct
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlsplit

from novaconsole.errors import ConfigError, ConnectionFailure

#: The RFB security type this probe can complete.
SECURITY_NONE = 1
SECURITY_VNC_AUTH = 2

#: IANA RFB security type names, for messages.
SECURITY_TYPE_NAMES: dict[int, str] = {
    0: "Invalid",
    1: "None",
    2: "VNC Authentication",
    5: "RA2",
    6: "RA2ne",
    16: "Tight",
    17: "Ultra",
    18: "TLS",
    19: "VeNCrypt",
    20: "GTK-VNC SASL",
    21: "MD5 hash",
    22: "Colin Dean xvp",
    30: "Apple Remote Desktop",
}

#: ServerInit desktop names longer than this are treated as a protocol error.
MAX_NAME_LENGTH = 1 << 20
#: Failure reasons longer than this are treated as a protocol error.
MAX_REASON_LENGTH = 1 << 16

_GREETING = re.compile(rb"RFB (\d{3})\.(\d{3})\n")
_TOKEN_IN_URL = re.compile(r"(token(?:=|%3D))[^&#%\s]+", re.IGNORECASE)


class ProbeError(ConnectionFailure):
    """The console could not be reached or its handshake failed (one line, exit 2)."""


class RfbError(ProbeError):
    """The RFB peer broke the protocol or refused us; raised by the state machine."""


def redact_url(url: str) -> str:
    """``url`` with any console token replaced by ``***`` (tokens grant console access)."""
    return _TOKEN_IN_URL.sub(r"\1***", url)


def security_type_label(code: int) -> str:
    """``"VNC Authentication (2)"`` style label for a security type."""
    return f"{SECURITY_TYPE_NAMES.get(code, 'unknown')} ({code})"


# -- console URL ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsoleEndpoint:
    """Where a noVNC page would open its websocket, and the Origin a browser would send."""

    websocket_url: str
    origin: str
    host: str
    port: int

    @property
    def redacted_url(self) -> str:
        """The websocket URL without its token, safe to print."""
        return redact_url(self.websocket_url)


def parse_console_url(url: str) -> ConsoleEndpoint:
    """Turn a console URL from Nova (or a ``ws://``/``wss://`` URL) into its websocket.

    noVNC opens ``ws(s)://HOST:PORT/`` + its ``path`` parameter (default ``websockify``);
    a top-level ``token`` parameter (pre-1.1 noVNC URLs) is appended to that path.
    """
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"console URL {redact_url(url)!r} is malformed: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise ConfigError(
            f"console URL {redact_url(url)!r} is not an http(s):// or ws(s):// URL with a host"
        )
    secure = scheme in ("https", "wss")
    netloc = parts.netloc.rpartition("@")[2]  # never forward userinfo
    if scheme in ("ws", "wss"):
        websocket_url = f"{scheme}://{netloc}{parts.path or '/'}"
        if parts.query:
            websocket_url += f"?{parts.query}"
    else:
        query = parse_qs(parts.query)
        path = query.get("path", ["websockify"])[0]
        token = query.get("token", [""])[0]
        if token and "token=" not in path:
            path += ("&" if "?" in path else "?") + f"token={quote(token, safe='')}"
        websocket_url = f"{'wss' if secure else 'ws'}://{netloc}/{path.lstrip('/')}"
    ws_query = parse_qs(urlsplit(websocket_url).query)
    if not ws_query.get("token", [""])[0]:
        raise ConfigError(
            f"console URL {redact_url(url)!r} carries no token "
            "(expected ...?path=%3Ftoken%3D... or ...?token=...)"
        )
    origin = f"{'https' if secure else 'http'}://{netloc}"
    return ConsoleEndpoint(websocket_url, origin, parts.hostname, port or (443 if secure else 80))


# -- the RFB client handshake (sans I/O) ---------------------------------------------------


@dataclass(frozen=True)
class PixelFormat:
    """RFB PIXEL_FORMAT from ServerInit."""

    bits_per_pixel: int
    depth: int
    big_endian: bool
    true_colour: bool
    red_max: int
    green_max: int
    blue_max: int
    red_shift: int
    green_shift: int
    blue_shift: int

    def pack(self) -> bytes:
        """The 16 bytes of PIXEL_FORMAT on the wire (ServerInit, SetPixelFormat)."""
        return struct.pack(
            ">BBBBHHHBBBxxx",
            self.bits_per_pixel,
            self.depth,
            int(self.big_endian),
            int(self.true_colour),
            self.red_max,
            self.green_max,
            self.blue_max,
            self.red_shift,
            self.green_shift,
            self.blue_shift,
        )


@dataclass(frozen=True)
class RfbHandshake:
    """What the handshake learnt: versions, security, and the ServerInit message."""

    server_version: str
    version: tuple[int, int]
    security_types: tuple[int, ...]
    security_type: int
    width: int
    height: int
    pixel_format: PixelFormat
    name: str

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data."""
        return asdict(self)


class HandshakeState(enum.Enum):
    """Where the client is; each value says what it is waiting for (used in messages)."""

    PROTOCOL_VERSION = "the RFB greeting (ProtocolVersion)"
    SECURITY_TYPES = "the security types"
    SECURITY_TYPE_33 = "the security type (RFB 3.3)"
    VNC_AUTH_CHALLENGE = "the VNC Authentication challenge"
    SECURITY_RESULT = "the SecurityResult"
    SERVER_INIT = "ServerInit"
    DONE = "nothing (handshake complete)"


class RfbClientHandshake:
    """RFB client handshake up to ServerInit, fed with bytes as they arrive.

    :meth:`receive` takes whatever bytes came from the server (any split) and returns the
    bytes to send back (possibly empty). Protocol violations and refusals raise
    :class:`RfbError`. After :attr:`state` is ``DONE``, :attr:`result` holds the outcome.
    """

    def __init__(self, *, shared: bool = True, password: str | None = None) -> None:
        self.state = HandshakeState.PROTOCOL_VERSION
        self._shared = shared
        #: With a password, VNC Authentication is chosen when offered (our --vnc port).
        self._password = password
        self._chosen = SECURITY_NONE
        self._buffer = bytearray()
        self._server_version = ""
        self._version = (0, 0)
        self._security_types: tuple[int, ...] = ()
        self._result: RfbHandshake | None = None

    @property
    def unconsumed(self) -> bytes:
        """Bytes received after ServerInit (the first server messages), for the RFB client."""
        return bytes(self._buffer) if self.state is HandshakeState.DONE else b""

    @property
    def result(self) -> RfbHandshake:
        """The outcome; only valid once :attr:`state` is ``DONE``."""
        if self._result is None:
            raise RuntimeError(f"RFB handshake not complete: waiting for {self.state.value}")
        return self._result

    def receive(self, data: bytes) -> bytes:
        """Consume server bytes; return the client's reply bytes (may be empty)."""
        if self.state is HandshakeState.DONE:
            return b""  # framebuffer messages would follow; the probe does not read them
        self._buffer += data
        out = bytearray()
        while self._step(out):
            pass
        return bytes(out)

    # Each _on_* returns False when more bytes are needed, True after consuming a message.

    def _step(self, out: bytearray) -> bool:
        if self.state is HandshakeState.DONE:
            return False
        handler = {
            HandshakeState.PROTOCOL_VERSION: self._on_protocol_version,
            HandshakeState.SECURITY_TYPES: self._on_security_types,
            HandshakeState.SECURITY_TYPE_33: self._on_security_type_33,
            HandshakeState.VNC_AUTH_CHALLENGE: self._on_vnc_auth_challenge,
            HandshakeState.SECURITY_RESULT: self._on_security_result,
            HandshakeState.SERVER_INIT: self._on_server_init,
        }[self.state]
        return handler(out)

    def _take(self, n: int) -> bytes | None:
        if len(self._buffer) < n:
            return None
        chunk = bytes(self._buffer[:n])
        del self._buffer[:n]
        return chunk

    def _peek_string(self, offset: int, what: str) -> tuple[str, int] | None:
        """A U32-length-prefixed string at ``offset``: (text, total bytes) or None."""
        if len(self._buffer) < offset + 4:
            return None
        (length,) = struct.unpack_from(">I", self._buffer, offset)
        if length > MAX_REASON_LENGTH:
            raise RfbError(f"RFB {what} of {length} bytes is implausible; not an RFB server?")
        end = offset + 4 + length
        if len(self._buffer) < end:
            return None
        text = bytes(self._buffer[offset + 4 : end]).decode("utf-8", "replace")
        return " ".join(text.split()), end - offset

    def _on_protocol_version(self, out: bytearray) -> bool:
        if not b"RFB ".startswith(bytes(self._buffer[:4])):
            raise RfbError(f"not an RFB server: greeting starts {bytes(self._buffer[:16])!r}")
        greeting = self._take(12)
        if greeting is None:
            return False
        match = _GREETING.fullmatch(greeting)
        if match is None:
            raise RfbError(f"not an RFB server: greeting {greeting!r}")
        major, minor = int(match.group(1)), int(match.group(2))
        self._server_version = greeting.decode("ascii").strip()
        if major < 3:
            raise RfbError(f"unsupported {self._server_version} (need RFB 3.3 or later)")
        # RFC 6143 7.1.1: answer with the highest version both sides speak; 3.4-3.6 are 3.3.
        if (major, minor) >= (3, 8):
            self._version = (3, 8)
        elif (major, minor) == (3, 7):
            self._version = (3, 7)
        else:
            self._version = (3, 3)
        out += b"RFB %03d.%03d\n" % self._version
        self.state = (
            HandshakeState.SECURITY_TYPE_33
            if self._version == (3, 3)
            else HandshakeState.SECURITY_TYPES
        )
        return True

    def _on_security_types(self, out: bytearray) -> bool:
        if not self._buffer:
            return False
        count = self._buffer[0]
        if count == 0:
            reason = self._peek_string(1, "failure reason")
            if reason is None:
                return False
            raise RfbError(f"VNC server refused the connection: {reason[0] or 'no reason given'}")
        types = self._take(1 + count)
        if types is None:
            return False
        self._security_types = tuple(types[1:])
        self._choose_none(out)
        return True

    def _on_security_type_33(self, out: bytearray) -> bool:
        if len(self._buffer) < 4:
            return False
        (chosen,) = struct.unpack_from(">I", self._buffer, 0)
        if chosen == 0:
            reason = self._peek_string(4, "failure reason")
            if reason is None:
                return False
            raise RfbError(f"VNC server refused the connection: {reason[0] or 'no reason given'}")
        del self._buffer[:4]
        self._security_types = (chosen,)
        if chosen == SECURITY_VNC_AUTH and self._password is not None:
            self._chosen = chosen
            self.state = HandshakeState.VNC_AUTH_CHALLENGE
            return True
        if chosen != SECURITY_NONE:
            raise self._auth_required()
        # RFB 3.3: the server chose None; no SecurityResult follows.
        self._send_client_init(out)
        return True

    def _choose_none(self, out: bytearray) -> None:
        if self._password is not None and SECURITY_VNC_AUTH in self._security_types:
            self._chosen = SECURITY_VNC_AUTH
            out.append(SECURITY_VNC_AUTH)
            self.state = HandshakeState.VNC_AUTH_CHALLENGE
            return
        if SECURITY_NONE not in self._security_types:
            raise self._auth_required()
        out.append(SECURITY_NONE)
        if self._version == (3, 8):
            self.state = HandshakeState.SECURITY_RESULT
        else:  # RFC 6143 7.2.1: 3.7 sends no SecurityResult for None
            self._send_client_init(out)

    def _auth_required(self) -> RfbError:
        offered = ", ".join(security_type_label(t) for t in self._security_types)
        return RfbError(
            f"VNC server requires authentication (offers {offered}); "
            "the probe only speaks security type None (1)"
        )

    def _on_vnc_auth_challenge(self, out: bytearray) -> bool:
        from novaconsole.vnc.vncauth import vnc_auth_response

        challenge = self._take(16)
        if challenge is None:
            return False
        out += vnc_auth_response(self._password or "", challenge)
        self.state = HandshakeState.SECURITY_RESULT
        return True

    def _on_security_result(self, out: bytearray) -> bool:
        if len(self._buffer) < 4:
            return False
        (status,) = struct.unpack_from(">I", self._buffer, 0)
        if status != 0 and self._version < (3, 8):
            # Before 3.8 a failed SecurityResult carries no reason.
            raise RfbError(f"VNC security handshake failed (SecurityResult {status})")
        if status != 0:
            reason = self._peek_string(4, "failure reason")
            if reason is None:
                return False
            raise RfbError(
                f"VNC security handshake failed (SecurityResult {status}): "
                f"{reason[0] or 'no reason given'}"
            )
        del self._buffer[:4]
        self._send_client_init(out)
        return True

    def _send_client_init(self, out: bytearray) -> None:
        out.append(1 if self._shared else 0)
        self.state = HandshakeState.SERVER_INIT

    def _on_server_init(self, out: bytearray) -> bool:
        if len(self._buffer) < 24:
            return False
        width, height = struct.unpack_from(">HH", self._buffer, 0)
        (bpp, depth, big_endian, true_colour, r_max, g_max, b_max, r_sh, g_sh, b_sh) = (
            struct.unpack_from(">BBBBHHHBBB", self._buffer, 4)
        )
        (name_length,) = struct.unpack_from(">I", self._buffer, 20)
        if name_length > MAX_NAME_LENGTH:
            raise RfbError(f"ServerInit name of {name_length} bytes is implausible")
        if len(self._buffer) < 24 + name_length:
            return False
        name = bytes(self._buffer[24 : 24 + name_length]).decode("utf-8", "replace")
        del self._buffer[: 24 + name_length]
        pixel_format = PixelFormat(
            bpp, depth, bool(big_endian), bool(true_colour), r_max, g_max, b_max, r_sh, g_sh, b_sh
        )
        self._result = RfbHandshake(
            server_version=self._server_version,
            version=self._version,
            security_types=self._security_types,
            security_type=self._chosen,
            width=width,
            height=height,
            pixel_format=pixel_format,
            name=name,
        )
        self.state = HandshakeState.DONE
        return True


# -- transports ------------------------------------------------------------------------------


class TransportClosed(Exception):
    """The peer closed the connection; ``detail`` says how (close code and reason)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail


class Transport(Protocol):
    """A byte stream to the RFB server."""

    def receive(self) -> bytes:
        """At least one byte; raises :class:`TransportClosed` or ``TimeoutError``."""
        ...

    def send(self, data: bytes) -> None:
        """Send all of ``data``."""
        ...

    def close(self) -> None:
        """Close, politely if possible; never raises."""
        ...


class SocketTransport:
    """RFB straight over TCP (a compute node's VNC port, e.g. 127.0.0.1:5900)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def receive(self) -> bytes:
        try:
            data = self._sock.recv(65536)
        except ConnectionResetError as exc:
            raise TransportClosed("connection reset") from exc
        if not data:
            raise TransportClosed()
        return data

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def abort(self) -> None:
        """Wake a thread blocked in :meth:`receive` (it then raises TransportClosed)."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()


class WebSocketTransport:
    """RFB inside binary websocket messages (what noVNC does through websockify)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    def receive(self) -> bytes:
        import websocket

        while True:
            try:
                opcode, frame = self._ws.recv_data_frame(control_frame=False)
            except websocket.WebSocketTimeoutException as exc:
                raise TimeoutError() from exc
            except (websocket.WebSocketConnectionClosedException, ConnectionResetError) as exc:
                raise TransportClosed() from exc
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                raise TransportClosed(_close_frame_detail(bytes(frame.data)))
            if frame.data:
                return bytes(frame.data)

    def send(self, data: bytes) -> None:
        self._ws.send_binary(data)

    def abort(self) -> None:
        """Wake a thread blocked in :meth:`receive` (it then raises TransportClosed)."""
        with contextlib.suppress(Exception):
            self._ws.abort()

    def close(self) -> None:
        # Closing is best effort: the probe already has its answer.
        with contextlib.suppress(Exception):
            self._ws.close(timeout=1.0)


def _close_frame_detail(payload: bytes) -> str:
    if len(payload) < 2:
        return "close frame"
    (code,) = struct.unpack(">H", payload[:2])
    reason = payload[2:].decode("utf-8", "replace").strip()
    return f"close frame {code}{(' ' + reason) if reason else ''}"


def perform_handshake(
    transport: Transport, where: str, *, shared: bool = True, password: str | None = None
) -> RfbHandshake:
    """Drive :class:`RfbClientHandshake` over ``transport``; errors name ``where``."""
    machine = RfbClientHandshake(shared=shared, password=password)
    while machine.state is not HandshakeState.DONE:
        waiting_for = machine.state
        try:
            data = transport.receive()
        except TransportClosed as exc:
            detail = f" ({exc.detail})" if exc.detail else ""
            hint = ""
            if waiting_for is HandshakeState.PROTOCOL_VERSION:
                hint = (
                    ": for nova-novncproxy this means the token is invalid or expired, "
                    "the Origin is not allowed, or the compute node's VNC server is "
                    "unreachable (its log says which)"
                )
            raise ProbeError(
                f"{where} closed the connection while waiting for {waiting_for.value}{detail}{hint}"
            ) from None
        except TimeoutError:
            raise ProbeError(
                f"{where} sent nothing in time while waiting for {waiting_for.value}"
            ) from None
        try:
            reply = machine.receive(data)
        except RfbError as exc:
            raise RfbError(f"{where}: {exc}") from None
        if reply:
            transport.send(reply)
    return machine.result


# -- the probe -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsoleProbe:
    """A completed websocket + RFB handshake through a console proxy."""

    #: The websocket URL with its token redacted.
    websocket_url: str
    origin: str | None
    subprotocol: str | None
    handshake: RfbHandshake
    elapsed_s: float

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (no token)."""
        return {
            "websocket_url": self.websocket_url,
            "origin": self.origin,
            "subprotocol": self.subprotocol,
            "handshake": self.handshake.as_dict(),
            "elapsed_s": round(self.elapsed_s, 3),
        }


def open_websocket(endpoint: ConsoleEndpoint, origin: str | None, timeout: float) -> Any:
    """A websocket-client connection to ``endpoint`` (subprotocol ``binary``), or ProbeError.

    The bridge's ``nova`` route relays through it, so its failures are the probe's lines.
    """
    import websocket

    where = f"console proxy at {endpoint.host}:{endpoint.port}"
    try:
        return websocket.create_connection(
            endpoint.websocket_url,
            timeout=timeout,
            subprotocols=["binary"],
            origin=origin,
            suppress_origin=origin is None,
            enable_multithread=False,
        )
    except websocket.WebSocketBadStatusException as exc:
        status = f"HTTP {exc.status_code}"
        if exc.status_message:
            status += f" {' '.join(str(exc.status_message).split())}"
        raise ProbeError(
            f"{where} refused the websocket upgrade of {endpoint.redacted_url}: {status}"
        ) from None
    except ConnectionRefusedError:
        raise ProbeError(f"cannot connect to {where}: connection refused") from None
    except socket.gaierror as exc:
        raise ProbeError(
            f"cannot resolve {endpoint.host!r} from the console URL ({exc.strerror}); "
            "novncproxy_base_url must name a host this machine can resolve"
        ) from None
    except (websocket.WebSocketTimeoutException, TimeoutError):
        raise ProbeError(
            f"{where} did not answer the websocket upgrade within {timeout:g} s"
        ) from None
    except (websocket.WebSocketConnectionClosedException, ConnectionResetError):
        raise ProbeError(
            f"{where} closed the connection during the websocket upgrade of "
            f"{endpoint.redacted_url} (a websockify token plugin refusing the token does this)"
        ) from None
    except websocket.WebSocketException as exc:
        raise ProbeError(
            f"{where}: websocket upgrade failed: {' '.join(str(exc).split())}"
        ) from None
    except OSError as exc:
        raise ProbeError(f"cannot connect to {where}: {exc.strerror or exc}") from None


_open_websocket = open_websocket  # the name before the bridge shared it


def probe_console(
    url: str,
    *,
    origin: str | None = "",
    timeout: float = 10.0,
    shared: bool = True,
) -> ConsoleProbe:
    """Open ``url``'s websocket (subprotocol ``binary``) and complete the RFB handshake.

    ``origin`` defaults to the console page's own origin, as a browser would send; pass
    another value to test ``[console] allowed_origins``, or ``None`` to send no Origin
    (nova-novncproxy accepts that as a non-browser client).
    """
    if not timeout > 0:
        raise ConfigError(f"probe timeout must be a positive number of seconds, not {timeout}")
    start = time.perf_counter()
    endpoint = parse_console_url(url)
    sent_origin = endpoint.origin if origin == "" else origin
    ws = open_websocket(endpoint, sent_origin, timeout)
    transport = WebSocketTransport(ws)
    where = f"console proxy at {endpoint.host}:{endpoint.port}"
    try:
        handshake = perform_handshake(transport, where, shared=shared)
    finally:
        transport.close()
    return ConsoleProbe(
        websocket_url=endpoint.redacted_url,
        origin=sent_origin,
        subprotocol=ws.getsubprotocol(),
        handshake=handshake,
        elapsed_s=time.perf_counter() - start,
    )


def probe_vnc_server(
    host: str, port: int, *, timeout: float = 10.0, shared: bool = True, password: str | None = None
) -> RfbHandshake:
    """Complete the RFB handshake with a VNC server directly over TCP."""
    where = f"VNC server at {host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        raise ProbeError(f"cannot connect to {where}: {exc.strerror or exc}") from None
    transport = SocketTransport(sock)
    try:
        return perform_handshake(transport, where, shared=shared, password=password)
    finally:
        transport.close()
