"""Our console bridge: noVNC's web files and a websockify websocket relay behind tickets.

The websocket side is websockify's own request handler (``WebSockifyRequestHandler``:
HTTP, static files, the RFC 6455 upgrade and framing) in a threading HTTP server of ours.
websockify's ``WebSocketProxy.start_server()`` forks a process per client, so a one-use
ticket marked used in one child is still unused in the next: tickets could not be one use.
Its threaded ``LibProxyServer`` drops the token and auth plugins (websockify issue #644),
and ``ProxyRequestHandler.validate_connection`` stores the target on the shared server
object, a race between threads. Here each client is a thread of one process, tickets live
in one :class:`~novaconsole.vnc.tickets.TicketStore`, and the handler's
``validate_connection`` hook (which websockify runs *before* the upgrade) checks the path,
the Origin (as nova-novncproxy does) and the ticket, answering 400/403/404 over plain HTTP.

Besides the websocket there is an optional plain TCP port for ordinary VNC clients: it
accepts one connection within the ticket TTL and then stops listening.

Nothing here logs a ticket or a Nova token: request lines are logged as method, path
without query, and status; every record of the bridge's logger passes a redacting filter.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import select
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from http.server import HTTPServer
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from novaconsole.errors import ConfigError, ConnectionFailure, NovaconsoleError
from novaconsole.vnc.routes import RelayPeer, SocketPeer, Upstream
from novaconsole.vnc.tickets import Grant, TicketPolicy, TicketRefused, TicketStore

LOG = logging.getLogger("novaconsole.vnc.bridge")

#: The websocket path of a server's console; noVNC's ``path`` parameter points here.
WEBSOCKET_PREFIX = "/websockify/"
#: Seconds the relay waits in ``select`` at most, so deadlines and shutdown are noticed.
POLL_S = 0.5
#: Seconds to open the upstream (Nova's API plus the proxy or the VNC server).
UPSTREAM_TIMEOUT_S = 30.0

_SECRET_PARAM = re.compile(r"((?:token|ticket)(?:=|%3D))[^&#%\s'\"]+", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with any ``token=``/``ticket=`` value replaced by ``***``."""
    return _SECRET_PARAM.sub(r"\1***", text)


class _RedactingFilter(logging.Filter):
    """Rewrites every record of the bridge's logger so no ticket reaches a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = redact(record.getMessage())
        record.msg, record.args = message, None
        return True


if not any(isinstance(f, _RedactingFilter) for f in LOG.filters):
    LOG.addFilter(_RedactingFilter())


def novnc_web_dir() -> Path:
    """noVNC's web files: Debian's ``novnc`` package, else the lab's unpacked copy."""
    candidates = [Path("/usr/share/novnc")]
    with contextlib.suppress(Exception):
        from novaconsole.lab.venvs import default_state_dir

        candidates.append(default_state_dir() / "data" / "novnc")
    for candidate in candidates:
        if (candidate / "vnc_lite.html").is_file():
            return candidate
    raise ConfigError(
        "noVNC's web files are not installed (looked in "
        + ", ".join(str(c) for c in candidates)
        + "): apt-get install novnc"
    )


@dataclass
class SessionRecord:
    """One relayed session, for ``-f json``, tests and the bench (no secrets)."""

    server_id: str
    client: str  # "websocket" or "vnc"
    peer: str
    upstream: str = ""
    started: float = field(default_factory=time.time)
    ended: float | None = None
    end_reason: str = ""
    bytes_to_client: int = 0
    bytes_to_server: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Refused(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _SessionEnd(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _listen_error(exc: OSError, host: str, port: int, what: str) -> ConnectionFailure:
    reason = {
        errno.EADDRINUSE: "address already in use (another process listens there)",
        errno.EADDRNOTAVAIL: "no such address on this host",
        errno.EACCES: "permission denied",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return ConnectionFailure(f"cannot listen on {host}:{port} for the {what}: {reason}")


def _bound_socket(host: str, port: int, what: str) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port} for the {what}: {exc.strerror}"
        ) from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    # SO_REUSEADDR lets a restart reuse a port in TIME_WAIT; it does not let two
    # listeners share a port on Linux, so a taken port is still refused.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise _listen_error(exc, host, port, what) from None
    return sock


def _handler_base() -> type[Any]:
    from websockify.websockifyserver import WebSockifyRequestHandler

    return WebSockifyRequestHandler  # type: ignore[no-any-return]


def _make_handler_class() -> type[Any]:
    base = _handler_base()

    class BridgeRequestHandler(base):  # type: ignore[misc, valid-type]
        """websockify's handler; the checks run in ``validate_connection`` (pre-upgrade)."""

        server: BridgeHTTPServer
        server_version = "novaconsole-bridge"
        sys_version = ""

        # -- logging: our lines only, never a query string ------------------------------

        def log_message(self, format: str, *args: Any) -> None:
            LOG.info("%s %s", self.client_address[0], redact(format % args))

        def log_request(self, code: Any = "-", size: Any = "-") -> None:
            path = urlsplit(getattr(self, "path", "") or "").path
            LOG.info(
                "%s %s %s %s",
                self.client_address[0],
                getattr(self, "command", "-"),
                path,
                getattr(code, "value", code),
            )

        def log_error(self, format: str, *args: Any) -> None:
            LOG.warning("%s %s", self.client_address[0], redact(format % args))

        # -- static files ---------------------------------------------------------------

        def translate_path(self, path: str) -> str:
            # SimpleHTTPRequestHandler's directory is the process's cwd unless told.
            self.directory = str(self.server.web_dir)
            return str(super().translate_path(path))

        def _raw_target(self) -> str:
            # http.server (3.11+) already collapses a leading "//" in self.path; the
            # request line still has what the client sent.
            parts = str(getattr(self, "requestline", "")).split()
            return parts[1] if len(parts) >= 2 else str(self.path)

        def _double_slash(self) -> bool:
            if self._raw_target().startswith("//"):
                # CVE-2021-3654: "Location: //host" would be an open redirect.
                self.send_error(400, "URI must not start with //")
                return True
            return False

        def do_GET(self) -> None:
            if not self._double_slash():
                super().do_GET()

        def do_HEAD(self) -> None:
            if not self._double_slash():
                super().do_HEAD()

        def end_headers(self) -> None:
            # The page's URL carries a ticket: never send it on as a Referer.
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Cache-Control", "no-store")
            super().end_headers()

        # -- admission, before the upgrade ------------------------------------------------

        def handle_upgrade(self) -> None:
            try:
                super().handle_upgrade()
            except _Refused as refused:
                LOG.warning(
                    "%s refused websocket for %s: %s (HTTP %d)",
                    self.client_address[0],
                    urlsplit(self.path).path,
                    refused.reason,
                    refused.code,
                )
                self.send_error(refused.code, refused.reason)
                self.close_connection = True

        def validate_connection(self) -> None:
            if self._raw_target().startswith("//"):
                raise _Refused(400, "URI must not start with //")
            parts = urlsplit(self.path)
            if not parts.path.startswith(WEBSOCKET_PREFIX):
                raise _Refused(404, "no console at this path")
            server_id = parts.path[len(WEBSOCKET_PREFIX) :].strip("/")
            upstream = self.server.bridge.route(server_id)
            if upstream is None:
                raise _Refused(404, "no console for this server on this bridge")
            self.server.bridge.check_origin(self.headers)
            ticket = parse_qs(parts.query).get("token", [""])[0]
            try:
                self.grant = self.server.bridge.tickets.redeem(ticket, server_id)
            except TicketRefused as exc:
                raise _Refused(403, str(exc)) from None
            self.upstream = upstream

        def auth_connection(self) -> None:
            # The ticket is the authentication; websockify's auth plugins are not used.
            return

        # -- the session ----------------------------------------------------------------

        def new_websocket_client(self) -> None:
            bridge = self.server.bridge
            record = SessionRecord(self.grant.server_id, "websocket", self.client_address[0])
            with bridge.session(record):
                try:
                    peer = self.upstream.open(UPSTREAM_TIMEOUT_S)
                except NovaconsoleError as exc:
                    record.end_reason = f"upstream failed: {exc.one_line()}"
                    LOG.warning("session for %s: %s", record.server_id, record.end_reason)
                    raise self.CClose(1011, "console upstream failed") from None
                record.upstream = self.upstream.where
                LOG.info(
                    "session for %s from %s to %s",
                    record.server_id,
                    record.peer,
                    record.upstream,
                )
                try:
                    _relay(_WebSocketSide(self), peer, self.grant, record, bridge.stopping)
                except _SessionEnd as end:
                    raise self.CClose(end.code, end.reason) from None
                finally:
                    peer.close()

    return BridgeRequestHandler


class BridgeHTTPServer(ThreadingMixIn, HTTPServer):
    """A thread per client; shutting down never waits for sessions (they see ``stopping``)."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, sock: socket.socket, bridge: ConsoleBridge, web_dir: Path) -> None:
        self.bridge = bridge
        self.web_dir = web_dir
        # What websockify's handler reads from its server.
        self.only_upgrade = False
        self.file_only = True  # no directory listings
        self.verbose = False
        self.traffic = False
        self.web_auth = False
        self.run_once = False
        self.record = ""
        self.daemon = False
        self.handler_id = 0
        self.host_token = False
        self.logger = LOG
        super().__init__(sock.getsockname()[:2], _make_handler_class(), bind_and_activate=False)
        self.socket.close()
        self.socket = sock
        self.server_address = sock.getsockname()[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            return
        LOG.warning(
            "%s: bridge request failed: %s: %s",
            client_address[0] if client_address else "?",
            type(exc).__name__,
            redact(" ".join(str(exc).split())),
        )


# -- the relay ----------------------------------------------------------------------------


class _WebSocketSide:
    """The browser's side of a session: websockify's framing on the handler."""

    def __init__(self, handler: Any) -> None:
        self._handler = handler
        self.pending = False

    def fileno(self) -> int:
        return int(self._handler.request.fileno())

    def buffered(self) -> bool:
        return bool(self._handler.request.pending())

    def recv(self) -> bytes | None:
        bufs, closed = self._handler.recv_frames()
        data = b"".join(bufs)
        if closed:
            raise _ClientClosed(data)
        return data

    def send(self, data: bytes | None) -> None:
        self.pending = bool(self._handler.send_frames([data] if data else None))


class _SocketSide:
    """A VNC client's side of a session on our TCP port."""

    def __init__(self, peer: SocketPeer) -> None:
        self._peer = peer
        self.pending = False

    def fileno(self) -> int:
        return self._peer.fileno()

    def buffered(self) -> bool:
        return False

    def recv(self) -> bytes | None:
        data = self._peer.recv()
        if data is None:
            raise _ClientClosed(b"")
        return data

    def send(self, data: bytes | None) -> None:
        if data:
            self._peer.sendall(data)


class _ClientClosed(Exception):
    def __init__(self, last: bytes) -> None:
        super().__init__("client closed")
        self.last = last


def _relay(
    client: _WebSocketSide | _SocketSide,
    server: RelayPeer,
    grant: Grant,
    record: SessionRecord,
    stopping: threading.Event,
) -> None:
    """Copy bytes both ways until one side closes, the session cap, idle, or shutdown."""
    last_traffic = time.monotonic()
    while True:
        now = time.monotonic()
        if stopping.is_set():
            record.end_reason = "bridge stopped"
            raise _SessionEnd(1001, record.end_reason)
        if now >= grant.session_deadline:
            record.end_reason = "session lifetime reached"
            raise _SessionEnd(1000, record.end_reason)
        if now - last_traffic >= grant.idle_timeout_s:
            record.end_reason = "idle timeout"
            raise _SessionEnd(1000, record.end_reason)
        wait = min(
            POLL_S, grant.session_deadline - now, grant.idle_timeout_s - (now - last_traffic)
        )
        if client.buffered() or server.buffered():
            readable: Sequence[Any] = [s for s in (client, server) if s.buffered()]
        else:
            readable, writable, _ = select.select(
                [client, server], [client] if client.pending else [], [], max(wait, 0.0)
            )
            if client in writable:
                client.send(None)
        if client in readable:
            try:
                data = client.recv()
            except _ClientClosed as closed:
                if closed.last:
                    server.sendall(closed.last)
                record.end_reason = "client closed"
                return
            if data:
                server.sendall(data)
                record.bytes_to_server += len(data)
                last_traffic = time.monotonic()
        if server in readable:
            data = server.recv()
            if data is None:
                record.end_reason = "VNC server closed"
                if isinstance(client, _WebSocketSide):
                    while client.pending:
                        client.send(None)
                raise _SessionEnd(1000, "Target closed")
            if data:
                client.send(data)
                record.bytes_to_client += len(data)
                last_traffic = time.monotonic()


# -- the bridge -------------------------------------------------------------------------------


class ConsoleBridge:
    """noVNC and websocket relay on one port, optional VNC TCP ports, one ticket store."""

    def __init__(
        self,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        policy: TicketPolicy | None = None,
        web_dir: Path | None = None,
        allowed_origins: Sequence[str] = (),
        public_host: str | None = None,
    ) -> None:
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.tickets = TicketStore(policy)
        self.web_dir = web_dir
        self.allowed_origins = tuple(allowed_origins)
        self.public_host = public_host
        self.stopping = threading.Event()
        self.sessions: list[SessionRecord] = []
        self._routes: dict[str, Upstream] = {}
        self._lock = threading.Condition()
        self._active = 0
        self._httpd: BridgeHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._listeners: list[socket.socket] = []

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> ConsoleBridge:
        """Bind and serve on a thread; a taken port is a one-line ConnectionFailure."""
        if self.web_dir is None:
            self.web_dir = novnc_web_dir()
        sock = _bound_socket(self.listen_host, self.listen_port, "console bridge")
        self._httpd = BridgeHTTPServer(sock, self, self.web_dir)
        thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": POLL_S},
            name="console-bridge",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)
        LOG.info("console bridge listening on %s:%d", *self.address)
        return self

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the websocket and noVNC are served on."""
        if self._httpd is None:
            raise RuntimeError("console bridge not started")
        host, port = self._httpd.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop serving, end every session; idempotent."""
        self.stopping.set()
        for sock in self._listeners:
            with contextlib.suppress(OSError):
                sock.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> ConsoleBridge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- routes, tickets and URLs ------------------------------------------------------

    def add_route(self, upstream: Upstream) -> None:
        """Serve ``upstream.server_id``'s console (replacing any earlier route for it)."""
        with self._lock:
            self._routes[upstream.server_id] = upstream

    def route(self, server_id: str) -> Upstream | None:
        with self._lock:
            return self._routes.get(server_id)

    def issue_ticket(self, server_id: str) -> str:
        """A one-time ticket for ``server_id`` (whose route must have been added)."""
        if self.route(server_id) is None:
            raise ConfigError(f"the console bridge has no route for server {server_id}")
        return self.tickets.issue(server_id)

    def _url_host(self) -> str:
        host = self.public_host or self.address[0]
        if host in ("0.0.0.0", "::", ""):
            host = socket.getfqdn()
        return f"[{host}]" if ":" in host else host

    def websocket_url(self, server_id: str, ticket: str) -> str:
        _, port = self.address
        return f"ws://{self._url_host()}:{port}{WEBSOCKET_PREFIX}{quote(server_id)}?token={ticket}"

    def novnc_url(self, server_id: str, ticket: str) -> str:
        """noVNC's page, connecting to this bridge's websocket for ``server_id``."""
        _, port = self.address
        path = quote(f"{WEBSOCKET_PREFIX.lstrip('/')}{server_id}?token={ticket}", safe="")
        return f"http://{self._url_host()}:{port}/vnc_lite.html?autoconnect=true&path={path}"

    # -- Origin, as nova-novncproxy checks it -------------------------------------------

    def check_origin(self, headers: Any) -> None:
        """No Origin is a non-browser client (allowed); else host and scheme must match."""
        origin = headers.get("Origin")
        if origin is None:
            return
        parts = urlsplit(origin)
        scheme = headers.get("X-Forwarded-Proto") or parts.scheme
        host_header = headers.get("Host") or ""
        expected = {urlsplit(f"//{host_header}").hostname or "", *self.allowed_origins}
        if not parts.hostname or not scheme:
            raise _Refused(403, "Origin header not valid")
        if parts.hostname not in expected:
            raise _Refused(403, "Origin header does not match this host")
        if scheme not in ("http", "ws"):
            raise _Refused(403, "Origin header protocol does not match this host")

    # -- sessions ----------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, record: SessionRecord) -> Iterator[SessionRecord]:
        with self._lock:
            self._active += 1
            self.sessions.append(record)
            self._lock.notify_all()
        try:
            yield record
        finally:
            record.ended = time.time()
            if not record.end_reason:
                record.end_reason = "ended"
            LOG.info("session for %s ended: %s", record.server_id, record.end_reason)
            with self._lock:
                self._active -= 1
                self._lock.notify_all()

    @property
    def active_sessions(self) -> int:
        with self._lock:
            return self._active

    def wait_for_session(self, timeout: float) -> SessionRecord:
        """The first session, once one has started; ConnectionFailure after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self.sessions:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.stopping.is_set():
                    raise ConnectionFailure(
                        f"no client connected to the console bridge on "
                        f"{self.address[0]}:{self.address[1]} within {timeout:g} s "
                        "(the ticket has expired; run the command again)"
                    )
                self._lock.wait(min(remaining, POLL_S))
            return self.sessions[0]

    def wait_until_idle(self) -> None:
        """Block until no session is active (returns at once if none is)."""
        with self._lock:
            while self._active and not self.stopping.is_set():
                self._lock.wait(POLL_S)

    # -- a plain TCP port for VNC clients ----------------------------------------------

    def open_vnc_port(self, server_id: str, port: int = 0) -> tuple[str, int]:
        """Listen for one VNC client for ``server_id`` (within the ticket TTL); (host, port).

        A VNC client cannot present our ticket, so the port itself is the ticket: it takes
        the first connection and stops listening.
        """
        upstream = self.route(server_id)
        if upstream is None:
            raise ConfigError(f"the console bridge has no route for server {server_id}")
        sock = _bound_socket(self.listen_host, port, "VNC port")
        self._listeners.append(sock)
        sock.settimeout(self.tickets.policy.connect_ttl_s)
        thread = threading.Thread(
            target=self._serve_vnc_once, args=(sock, upstream), name="console-vnc", daemon=True
        )
        thread.start()
        self._threads.append(thread)
        host, bound = sock.getsockname()[:2]
        LOG.info("VNC port for %s on %s:%d", server_id, host, bound)
        return str(host), int(bound)

    def _serve_vnc_once(self, listener: socket.socket, upstream: Upstream) -> None:
        try:
            conn, address = listener.accept()
        except (TimeoutError, OSError):
            return
        finally:
            with contextlib.suppress(OSError):
                listener.close()
        conn.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = SocketPeer(conn)
        record = SessionRecord(upstream.server_id, "vnc", str(address[0]))
        policy = self.tickets.policy
        grant = Grant(
            upstream.server_id, time.monotonic() + policy.max_session_s, policy.idle_timeout_s
        )
        with self.session(record):
            try:
                peer = upstream.open(UPSTREAM_TIMEOUT_S)
            except NovaconsoleError as exc:
                record.end_reason = f"upstream failed: {exc.one_line()}"
                client.close()
                return
            record.upstream = upstream.where
            try:
                _relay(_SocketSide(client), peer, grant, record, self.stopping)
            except _SessionEnd:
                pass
            except OSError as exc:
                record.end_reason = f"connection error: {exc.strerror or exc}"
            finally:
                peer.close()
                client.close()
