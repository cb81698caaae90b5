"""Where the bridge's sessions go: upstream routes to a server's VNC console.

- ``nova``: ``POST /servers/{id}/remote-consoles`` for a fresh noVNC URL per session, then
  nova-novncproxy's websocket, relayed as is (Nova checks its own token there).
- ``direct`` (admin): the same call for a token, then ``GET /os-console-auth-tokens/{token}``
  (microversion >= 2.31) for the compute node's VNC host and port, and TCP straight there:
  a way past a broken nova-novncproxy.
- ``agent``: the compute agent's ``vnc_target`` command, when the agent bus is installed.

Every route opens a :class:`RelayPeer`: a selectable byte stream of raw RFB. Nova's tokens
never leave this module: not in messages, not in logs.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass
from typing import Any, Protocol

from novaconsole.errors import ConfigError, ConnectionFailure
from novaconsole.vnc.probe import (
    ProbeError,
    RfbHandshake,
    parse_console_url,
    perform_handshake,
    probe_vnc_server,
    redact_url,
)

VIA_CHOICES = ("nova", "direct", "agent")
#: Statuses in which Nova serves a server's console.
CONSOLE_STATUSES = frozenset({"ACTIVE", "PAUSED", "RESCUE", "VERIFY_RESIZE", "PASSWORD"})
AGENT_NEEDED = "this path needs the compute agent (see `novaconsole --plugin compute-agent`)"


class RelayPeer(Protocol):
    """A selectable stream of RFB bytes to the VNC server."""

    def fileno(self) -> int:
        """For ``select``."""
        ...

    def recv(self) -> bytes | None:
        """Bytes that arrived (may be empty); ``None`` once the peer has closed."""
        ...

    def buffered(self) -> bool:
        """True when bytes wait in a user-space buffer ``select`` cannot see."""
        ...

    def sendall(self, data: bytes) -> None:
        """Send all of ``data`` (blocking)."""
        ...

    def abort(self) -> None:
        """Wake a thread blocked reading (shut the stream down); never raises."""
        ...

    def close(self) -> None:
        """Close; never raises."""
        ...


class SocketPeer:
    """RFB over TCP (a compute node's VNC port, or a VNC client of our TCP port)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def recv(self) -> bytes | None:
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            return None
        except BlockingIOError:
            return b""
        return data or None

    def buffered(self) -> bool:
        return False

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.abort()
        with contextlib.suppress(OSError):
            self.sock.close()


class WebSocketPeer:
    """RFB inside websocket messages from nova-novncproxy (a websocket-client connection).

    websocket-client reads exactly the bytes of the frame it decodes, so ``select`` on its
    socket is accurate; only TLS may hold decrypted bytes back (:meth:`buffered`).
    """

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    def fileno(self) -> int:
        return int(self._ws.sock.fileno())

    def recv(self) -> bytes | None:
        import websocket

        try:
            opcode, frame = self._ws.recv_data_frame(control_frame=False)
        except (websocket.WebSocketException, OSError):
            return None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return None
        return bytes(frame.data)

    def buffered(self) -> bool:
        sock = self._ws.sock
        return isinstance(sock, ssl.SSLSocket) and sock.pending() > 0

    def sendall(self, data: bytes) -> None:
        self._ws.send_binary(data)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.abort()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._ws.close(timeout=1.0)


class Upstream(Protocol):
    """One server's console, opened once per bridge session."""

    server_id: str
    via: str

    @property
    def where(self) -> str:
        """What the session connects to, for messages (no token)."""
        ...

    def open(self, timeout: float) -> RelayPeer:
        """A connected stream of raw RFB, before the RFB greeting; or ConnectionFailure."""
        ...

    def check(self, timeout: float) -> RfbHandshake:
        """Open the route and complete an RFB handshake (the pre-flight of a session)."""
        ...


@dataclass(frozen=True)
class ServerInfo:
    """The server a console is for."""

    id: str
    name: str
    status: str
    host: str | None


def find_server(conn: Any, name_or_id: str, cloud: str) -> ServerInfo:
    """The server named or with ID ``name_or_id``, running, or a one-line error."""
    from openstack import exceptions

    try:
        server = conn.compute.find_server(name_or_id, ignore_missing=True)
    except exceptions.DuplicateResource:
        raise ConfigError(
            f"more than one server is named {name_or_id!r} in cloud {cloud!r}: give its ID"
        ) from None
    except exceptions.SDKException as exc:
        raise nova_failure(exc, f"find server {name_or_id!r} in cloud {cloud!r}") from None
    if server is None:
        raise ConfigError(f"no server named or with ID {name_or_id!r} in cloud {cloud!r}")
    info = ServerInfo(
        str(server.id),
        str(server.name),
        str(server.status),
        getattr(server, "compute_host", None) or getattr(server, "hypervisor_hostname", None),
    )
    if info.status not in CONSOLE_STATUSES:
        raise ConfigError(
            f"server {info.name} ({info.id}) in cloud {cloud!r} is {info.status}: "
            "Nova serves a console only while it runs"
            + (f" (start it: openstack server start {info.id})" if info.status == "SHUTOFF" else "")
        )
    return info


def nova_failure(exc: BaseException, what: str, *, secret: str | None = None) -> ConnectionFailure:
    """A one-line error from an SDK failure, with ``secret`` (a Nova token) removed."""
    from novaconsole.cloud import describe_failure

    line = describe_failure(exc, what).one_line()
    if secret:
        line = line.replace(secret, "***")
    return ConnectionFailure(redact_url(line))


def _create_console_url(conn: Any, server: ServerInfo) -> str:
    from openstack import exceptions

    try:
        console = conn.compute.create_server_remote_console(server.id, protocol="vnc", type="novnc")
    except exceptions.SDKException as exc:
        # Nova answers 400/409 for a server whose console is disabled or not VNC.
        raise nova_failure(
            exc, f"Nova would not give a VNC console for server {server.name} ({server.id})"
        ) from None
    url = str(getattr(console, "url", "") or "")
    if not url:
        raise ConnectionFailure(
            f"Nova returned no console URL for server {server.name} ({server.id})"
        )
    return url


def serial_console_url(route: Upstream, server: ServerInfo) -> str:
    """nova-serialproxy's ``ws://HOST:6083/?token=...`` for ``server`` (a secret: never log)."""
    from openstack import exceptions

    conn = getattr(route, "conn", None)
    if conn is None:
        raise ConfigError("the serial console needs a route through Nova's API")
    try:
        console = conn.compute.create_server_remote_console(
            server.id, protocol="serial", type="serial"
        )
    except exceptions.SDKException as exc:
        raise nova_failure(
            exc,
            f"Nova would not give a serial console for server {server.name} ({server.id}) "
            "([serial_console] enabled on its compute node?)",
        ) from None
    url = str(getattr(console, "url", "") or "")
    if not url:
        raise ConnectionFailure(
            f"Nova returned no serial console URL for server {server.name} ({server.id})"
        )
    return url


def checked_proxy_url(url: str) -> str:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--proxy-url {url!r}: expected http(s)://HOST[:PORT]")
    return url


def _on_proxy(console_url: str, proxy_url: str) -> str:
    """Nova's console URL (its path and token) on another nova-novncproxy address: where
    ``novncproxy_base_url`` names a host this machine cannot reach, or a test's port."""
    from urllib.parse import urlsplit, urlunsplit

    proxy = urlsplit(proxy_url)
    ours = urlsplit(console_url)
    return urlunsplit((proxy.scheme, proxy.netloc, ours.path, ours.query, ours.fragment))


def _token_of(url: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    ws = parse_console_url(url).websocket_url
    return parse_qs(urlsplit(ws).query)["token"][0]


class NovaRoute:
    """Through nova-novncproxy: a new Nova console per session (its tokens have a TTL)."""

    via = "nova"

    def __init__(self, conn: Any, server: ServerInfo, proxy_url: str | None = None) -> None:
        self.conn = conn
        self.server = server
        self.server_id = server.id
        self.proxy_url = checked_proxy_url(proxy_url) if proxy_url else None
        self._where = "nova-novncproxy"

    @property
    def where(self) -> str:
        return self._where

    def _endpoint(self) -> Any:
        url = _create_console_url(self.conn, self.server)
        if self.proxy_url:
            url = _on_proxy(url, self.proxy_url)
        endpoint = parse_console_url(url)
        self._where = f"nova-novncproxy at {endpoint.host}:{endpoint.port}"
        return endpoint

    def open(self, timeout: float) -> RelayPeer:
        from novaconsole.vnc.probe import open_websocket

        endpoint = self._endpoint()
        try:
            # The Origin a browser on Nova's own page would send: nova-novncproxy checks it.
            return WebSocketPeer(open_websocket(endpoint, endpoint.origin, timeout))
        except ProbeError as exc:
            if not str(exc).startswith("cannot connect"):
                raise
            source = "--proxy-url" if self.proxy_url else "Nova's console URL"
            reason = str(exc).rpartition(": ")[2]
            raise ProbeError(
                f"nova-novncproxy at {endpoint.host}:{endpoint.port} ({source}) is not "
                f"answering: {reason}; `--via direct` reaches the compute node's VNC server "
                "without it"
            ) from None

    def check(self, timeout: float) -> RfbHandshake:
        peer = self.open(timeout)
        try:
            return _handshake(peer, self.where, timeout)
        finally:
            peer.close()


class DirectRoute:
    """Straight to the compute node's VNC server, as Nova's token records it (admin)."""

    via = "direct"

    def __init__(self, conn: Any, server: ServerInfo) -> None:
        self.conn = conn
        self.server = server
        self.server_id = server.id
        self._where = "the compute node's VNC server"

    @property
    def where(self) -> str:
        return self._where

    def target(self) -> tuple[str, int, str | None]:
        """(host, port, internal_access_path) from ``GET /os-console-auth-tokens/{token}``."""
        from openstack import exceptions

        token = _token_of(_create_console_url(self.conn, self.server))
        try:
            info = self.conn.compute.validate_console_auth_token(token)
        except exceptions.ForbiddenException:
            raise ConnectionFailure(
                "--via direct needs an admin: Nova refused GET /os-console-auth-tokens "
                f"for server {self.server.name} ({self.server.id}) (HTTP 403)"
            ) from None
        except exceptions.SDKException as exc:
            raise nova_failure(exc, "GET /os-console-auth-tokens", secret=token) from None
        host, port = getattr(info, "host", None), getattr(info, "port", None)
        if not host or not port:
            raise ConnectionFailure(
                f"Nova's console token for server {self.server.name} ({self.server.id}) names "
                "no compute host and port (GET /os-console-auth-tokens needs microversion 2.31+)"
            )
        path = getattr(info, "internal_access_path", None) or None
        self._where = f"VNC server at {host}:{port}"
        return str(host), int(port), path

    def open(self, timeout: float) -> RelayPeer:
        host, port, path = self.target()
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ProbeError(f"cannot connect to {self.where}: {exc.strerror or exc}") from None
        if path:
            _connect_through_path(sock, path, self.where)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SocketPeer(sock)

    def check(self, timeout: float) -> RfbHandshake:
        host, port, path = self.target()
        if path:
            peer = self.open(timeout)
            try:
                return _handshake(peer, self.where, timeout)
            finally:
                peer.close()
        return probe_vnc_server(host, port, timeout=timeout)


def _connect_through_path(sock: socket.socket, path: str, where: str) -> None:
    # What nova-novncproxy does for internal_access_path (e.g. a tunnel on the node).
    sock.sendall(f"CONNECT {path} HTTP/1.1\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            raise ProbeError(f"{where} closed the connection during CONNECT {path}")
        reply += chunk
    head, _, rest = reply.partition(b"\r\n\r\n")
    if b" 200" not in head.split(b"\r\n")[0]:
        raise ProbeError(f"{where} refused CONNECT {path}: {head.splitlines()[0]!r}")
    if rest:
        raise ProbeError(f"{where} sent data before the RFB greeting after CONNECT")


class PeerTransport:
    """A :class:`RelayPeer` as the probe's ``Transport`` (for RFB clients over a route)."""

    def __init__(self, peer: RelayPeer, timeout: float) -> None:
        self.peer = peer
        self.timeout = timeout

    def receive(self) -> bytes:
        import select

        from novaconsole.vnc.probe import TransportClosed

        while True:
            if not self.peer.buffered():
                try:
                    ready, _, _ = select.select([self.peer], [], [], self.timeout)
                except (OSError, ValueError):  # closed under us by close()
                    raise TransportClosed() from None
                if not ready:
                    raise TimeoutError()
            data = self.peer.recv()
            if data is None:
                raise TransportClosed()
            if data:
                return data

    def send(self, data: bytes) -> None:
        self.peer.sendall(data)

    def abort(self) -> None:
        self.peer.abort()

    def close(self) -> None:
        self.peer.close()


def _handshake(peer: RelayPeer, where: str, timeout: float) -> RfbHandshake:
    return perform_handshake(PeerTransport(peer, timeout), where)


class AgentRoute:
    """Straight to the guest's VNC server, as the compute agent on its host reports it.

    Needs no admin token and no nova-novncproxy: the console asks the agent on the
    server's compute host (a signed ``vnc_target`` command over the agent bus) for the
    domain's VNC address and port, then connects there like ``direct``.
    """

    via = "agent"

    def __init__(self, server: ServerInfo) -> None:
        self.server = server
        self.server_id = server.id
        self._tcp: TcpRoute | None = None

    @property
    def where(self) -> str:
        if self._tcp is not None:
            return self._tcp.where
        host = self.server.host or "the server's host"
        return f"the compute agent on {host}"

    def target(self) -> TcpRoute:
        """Ask the agent (once per route) where the domain's VNC server listens."""
        if self._tcp is not None:
            return self._tcp
        if not self.server.host:
            raise ConfigError(
                f"--via agent needs server {self.server.name}'s compute host, which Nova shows "
                "only to admins (OS-EXT-SRV-ATTR:host)"
            )
        from novaconsole.agents.paths import console_config_path

        path = console_config_path()
        if not path.exists():
            raise ConfigError(f"{AGENT_NEEDED}: no agents config at {path}")
        from novaconsole.agentbus.bus import ConsoleBus
        from novaconsole.agentbus.settings import BusSettings

        bus = ConsoleBus(BusSettings.load(path))
        bus.start(wait=10.0)
        try:
            reply = bus.request(
                self.server.host, "vnc_target", {"uuid": self.server.id}, timeout=10.0
            )
        finally:
            bus.stop()
        if not reply.ok or not reply.result:
            raise ConnectionFailure(
                f"the compute agent on {self.server.host} could not name server "
                f"{self.server.name}'s VNC server: {reply.error or 'no answer'}"
            )
        self._tcp = TcpRoute(
            self.server.id, str(reply.result["address"]), int(reply.result["port"])
        )
        return self._tcp

    def open(self, timeout: float) -> RelayPeer:
        return self.target().open(timeout)

    def check(self, timeout: float) -> RfbHandshake:
        return self.target().check(timeout)


def agent_route(conn: Any, server: ServerInfo) -> Upstream:
    """The compute agent's route (the agent bus answers ``vnc_target``)."""
    return AgentRoute(server)


def make_route(
    via: str, conn: Any, server: ServerInfo, *, proxy_url: str | None = None
) -> Upstream:
    """The route named ``via`` for ``server`` (``proxy_url``: the nova route's only)."""
    if proxy_url and via != "nova":
        raise ConfigError("--proxy-url names nova-novncproxy: it goes with --via nova only")
    if via == "nova":
        return NovaRoute(conn, server, proxy_url)
    if via == "direct":
        return DirectRoute(conn, server)
    if via == "agent":
        return agent_route(conn, server)
    raise ConfigError(f"--via must be one of {', '.join(VIA_CHOICES)}, not {via!r}")


class TcpRoute:
    """A fixed VNC host and port (tests, and the ``agent`` route's answer)."""

    via = "tcp"

    def __init__(self, server_id: str, host: str, port: int) -> None:
        self.server_id = server_id
        self.host = host
        self.port = port

    @property
    def where(self) -> str:
        return f"VNC server at {self.host}:{self.port}"

    def open(self, timeout: float) -> RelayPeer:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
        except OSError as exc:
            raise ProbeError(f"cannot connect to {self.where}: {exc.strerror or exc}") from None
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SocketPeer(sock)

    def check(self, timeout: float) -> RfbHandshake:
        return probe_vnc_server(self.host, self.port, timeout=timeout)
