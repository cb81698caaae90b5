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
from novaconsole.vnc.tickets import (
    Grant,
    TicketPolicy,
    TicketRefused,
    TicketStore,
    ticket_digest,
)

LOG = logging.getLogger("novaconsole.vnc.bridge")

#: The websocket path of a server's console; noVNC's ``path`` parameter points here.
WEBSOCKET_PREFIX = "/websockify/"
#: A launch URL's path: its one-time ticket is exchanged for the websocket's ticket in a
#: cookie, so the ticket a browser's URL (argv, history, a printed line) carries is spent
#: the moment the page loads.
LAUNCH_PREFIX = "/launch/"
#: Bytes of a launch form's body we read at most (it holds one ticket).
MAX_FORM_BYTES = 4096
#: Seconds the relay waits in ``select`` at most, so deadlines and shutdown are noticed.
POLL_S = 0.5
#: Seconds to open the upstream (Nova's API plus the proxy or the VNC server).
UPSTREAM_TIMEOUT_S = 30.0
#: Seconds a VNC client has to answer the password challenge on our TCP port.
VNC_AUTH_TIMEOUT_S = 10.0
#: Wrong or missing answers after which the TCP port stops listening.
MAX_VNC_AUTH_FAILURES = 3

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

        def _refuse_host(self) -> bool:
            reason = self.server.bridge.host_refusal(self.headers.get("Host"))
            if reason is None:
                return False
            LOG.warning("%s refused %s: %s", self.client_address[0], self.command, reason)
            self.send_error(403, reason)
            return True

        def do_GET(self) -> None:
            if self._double_slash() or self._refuse_host():
                return
            if urlsplit(self.path).path.startswith(LAUNCH_PREFIX):
                query = urlsplit(self.path).query
                self._launch(parse_qs(query).get("ticket", [""])[0])
                return
            super().do_GET()

        def do_HEAD(self) -> None:
            if not self._double_slash() and not self._refuse_host():
                super().do_HEAD()

        def do_POST(self) -> None:
            if self._double_slash() or self._refuse_host():
                return
            if not urlsplit(self.path).path.startswith(LAUNCH_PREFIX):
                self.send_error(405, "only a launch form may be posted")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_FORM_BYTES:
                self.send_error(400, "launch form too large or without a length")
                return
            form = parse_qs(self.rfile.read(length).decode("ascii", "replace"))
            self._launch(form.get("ticket", [""])[0])

        def _launch(self, ticket: str) -> None:
            """Spend a launch ticket: the websocket's ticket goes into a cookie, and the
            browser is sent on to noVNC's page, whose URL then holds no secret."""
            bridge = self.server.bridge
            server_id = urlsplit(self.path).path[len(LAUNCH_PREFIX) :].strip("/")
            if bridge.route(server_id) is None:
                self.send_error(404, "no console for this server on this bridge")
                return
            try:
                bridge.tickets.redeem(ticket, launch_key(server_id))
            except TicketRefused as exc:
                LOG.warning("%s refused launch for %s: %s", self.client_address[0], server_id, exc)
                self.send_error(403, str(exc))
                return
            bridge.launched(ticket)
            websocket_ticket = bridge.tickets.issue(server_id)
            ttl = max(1, int(bridge.tickets.policy.connect_ttl_s))
            self.send_response(303)
            self.send_header("Location", bridge.novnc_path(server_id))
            self.send_header(
                "Set-Cookie",
                f"{bridge.cookie_name}={websocket_ticket}; Path={WEBSOCKET_PREFIX}"
                f"{quote(server_id)}; Max-Age={ttl}; HttpOnly; SameSite=Strict",
            )
            self.send_header("Content-Length", "0")
            self.end_headers()

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
            reason = self.server.bridge.host_refusal(self.headers.get("Host"))
            if reason is not None:
                raise _Refused(403, reason)
            self.server.bridge.check_origin(self.headers)
            # ?token= from non-browser clients (our TUI, scripts); a browser that came
            # through a launch URL presents it in the cookie that launch set.
            ticket = parse_qs(parts.query).get("token", [""])[0]
            if not ticket:
                ticket = _cookie(self.headers, self.server.bridge.cookie_name)
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
            # websockify's WebSocketProxy sets TCP_NODELAY on both sockets; without it
            # each frame's tail waited for the browser's delayed ACK (Nagle): a full
            # screen relayed at a quarter of the speed (bench/RESULTS.md).
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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


def launch_key(server_id: str) -> str:
    """What a launch ticket is bound to in the store (never a websocket's server id)."""
    return f"launch:{server_id}"


def _cookie(headers: Any, name: str) -> str:
    from http.cookies import CookieError, SimpleCookie

    jar: SimpleCookie = SimpleCookie()
    for header in headers.get_all("Cookie") or ():
        with contextlib.suppress(CookieError):
            jar.load(header)
    morsel = jar.get(name)
    return morsel.value if morsel is not None else ""


def _is_ip_literal(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


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


def _runtime_dir() -> str | None:
    import os

    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return runtime if runtime and os.path.isdir(runtime) else None


def _remove_launch_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


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
        allowed_hosts: Sequence[str] = (),
    ) -> None:
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.tickets = TicketStore(policy)
        self.web_dir = web_dir
        self.allowed_origins = tuple(allowed_origins)
        self.public_host = public_host
        self.allowed_hosts = tuple(h.lower() for h in allowed_hosts)
        self.stopping = threading.Event()
        self._launch_files: dict[bytes, Path] = {}
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
        with self._lock:
            files, self._launch_files = list(self._launch_files.values()), {}
        for path in files:
            _remove_launch_file(path)
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

    @property
    def cookie_name(self) -> str:
        """The websocket ticket's cookie; browsers do not keep cookies apart by port, so
        each bridge's has its port in its name."""
        return f"novaconsole_ticket_{self.address[1]}"

    def novnc_path(self, server_id: str) -> str:
        """noVNC's page for ``server_id`` with no ticket (the cookie carries it)."""
        path = quote(f"{WEBSOCKET_PREFIX.lstrip('/')}{server_id}", safe="")
        return f"/vnc_lite.html?autoconnect=true&path={path}"

    def issue_launch_ticket(self, server_id: str) -> str:
        """A one-time ticket for :meth:`launch_url` (a websocket refuses it)."""
        if self.route(server_id) is None:
            raise ConfigError(f"the console bridge has no route for server {server_id}")
        return self.tickets.issue(launch_key(server_id))

    def launch_url(self, server_id: str, ticket: str) -> str:
        """The URL a person opens: spent on first load, exchanged for a cookie there."""
        _, port = self.address
        return f"http://{self._url_host()}:{port}{LAUNCH_PREFIX}{quote(server_id)}?ticket={ticket}"

    def launch_file(self, server_id: str, directory: Path | None = None) -> Path:
        """A private HTML file that posts a fresh launch ticket to this bridge.

        A browser opened with this file's path has no secret in its arguments (other
        users read those in /proc); the file is mode 0600 in a 0700 directory, removed
        once its ticket is spent, when the ticket expires, or when the bridge closes.
        """
        import html
        import os
        import tempfile

        ticket = self.issue_launch_ticket(server_id)
        _, port = self.address
        action = f"http://{self._url_host()}:{port}{LAUNCH_PREFIX}{quote(server_id)}"
        folder = Path(
            tempfile.mkdtemp(prefix="novaconsole-console-", dir=directory or _runtime_dir())
        )
        path = folder / "console.html"
        page = (
            "<!doctype html><html><head><meta charset='utf-8'>"
            "<meta name='referrer' content='no-referrer'><title>console</title></head>"
            f"<body><form method='post' action='{html.escape(action, quote=True)}'>"
            f"<input type='hidden' name='ticket' value='{html.escape(ticket, quote=True)}'>"
            "<noscript><button>open the console</button></noscript></form>"
            "<script>document.forms[0].submit()</script></body></html>"
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(page)
        with self._lock:
            self._launch_files[ticket_digest(ticket)] = path
        timer = threading.Timer(self.tickets.policy.connect_ttl_s, self._expire_launch, (ticket,))
        timer.daemon = True
        timer.start()
        return path

    def launched(self, ticket: str) -> None:
        """A launch ticket was spent: its file, if any, has done its work."""
        self._expire_launch(ticket)

    def _expire_launch(self, ticket: str) -> None:
        with self._lock:
            path = self._launch_files.pop(ticket_digest(ticket), None)
        if path is not None:
            _remove_launch_file(path)

    # -- DNS rebinding: the Host header must name this bridge ---------------------------

    def host_refusal(self, host_header: str | None) -> str | None:
        """None if ``Host`` names this bridge; else why not (the 403's reason).

        A page from another site whose name was re-pointed at 127.0.0.1 (DNS rebinding)
        is same-origin with us as far as its browser knows, but sends its own name as
        Host. IP literals cannot be rebound; names are accepted only if they are ours.
        """
        if not host_header:
            return "no Host header"
        hostname = urlsplit(f"//{host_header}").hostname
        if not hostname:
            return "Host header not valid"
        if _is_ip_literal(hostname):
            return None
        names = {"localhost", self.listen_host.lower(), *self.allowed_hosts}
        if self.public_host:
            names.add(self.public_host.lower())
        if self.listen_host in ("0.0.0.0", "::", ""):
            names.update({socket.getfqdn().lower(), socket.gethostname().lower()})
        if hostname.lower().rstrip(".") in names:
            return None
        return f"Host header names {hostname!r}, not this bridge"

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

    def open_vnc_port(
        self, server_id: str, port: int = 0, *, password: str | None = None
    ) -> tuple[str, int]:
        """Listen for one VNC client for ``server_id`` (within the ticket TTL); (host, port).

        A VNC client cannot present our ticket. With ``password`` (what ``console --vnc``
        does: a fresh one, printed once) the port asks for RFB's VNC Authentication and
        serves the first client that answers it, closing after
        :data:`MAX_VNC_AUTH_FAILURES` wrong answers; without one the port itself is the
        ticket: the first connection gets the console.
        """
        upstream = self.route(server_id)
        if upstream is None:
            raise ConfigError(f"the console bridge has no route for server {server_id}")
        sock = _bound_socket(self.listen_host, port, "VNC port")
        self._listeners.append(sock)
        thread = threading.Thread(
            target=self._serve_vnc_port,
            args=(sock, upstream, password),
            name="console-vnc",
            daemon=True,
        )
        thread.start()
        self._threads.append(thread)
        host, bound = sock.getsockname()[:2]
        LOG.info(
            "VNC port for %s on %s:%d (%s)",
            server_id,
            host,
            bound,
            "VNC Authentication" if password else "first connection",
        )
        return str(host), int(bound)

    def _accept_vnc_client(
        self, listener: socket.socket, password: str | None
    ) -> tuple[socket.socket, Any, int] | None:
        """The client the port serves (socket, address, ClientInit's shared flag, or -1
        when the client's handshake is still to come); None when the port gives up."""
        from novaconsole.vnc.vncauth import VncAuthFailed, serve_vnc_auth

        deadline = time.monotonic() + self.tickets.policy.connect_ttl_s
        failures = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.stopping.is_set():
                return None
            listener.settimeout(min(left, POLL_S))
            try:
                conn, address = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return None
            if password is None:
                return conn, address, -1
            conn.settimeout(VNC_AUTH_TIMEOUT_S)
            try:
                serve_vnc_auth(conn, password)
                shared = conn.recv(1)
                if len(shared) != 1:
                    raise VncAuthFailed("the client closed the connection before ClientInit")
                return conn, address, shared[0]
            except (VncAuthFailed, OSError) as exc:
                failures += 1
                reason = "no answer in time" if isinstance(exc, TimeoutError) else str(exc)
                LOG.warning(
                    "%s: VNC port refused a client: %s (%d of %d)",
                    address[0],
                    reason,
                    failures,
                    MAX_VNC_AUTH_FAILURES,
                )
                with contextlib.suppress(OSError):
                    conn.close()
                if failures >= MAX_VNC_AUTH_FAILURES:
                    LOG.warning("VNC port closed after %d refused clients", failures)
                    return None

    def _serve_vnc_port(
        self, listener: socket.socket, upstream: Upstream, password: str | None
    ) -> None:
        try:
            accepted = self._accept_vnc_client(listener, password)
        finally:
            with contextlib.suppress(OSError):
                listener.close()
        if accepted is None:
            return
        conn, address, shared = accepted
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
                if shared >= 0:
                    # We answered the client's handshake ourselves; now the server's, and
                    # hand its ServerInit on, so the relay starts where both sides agree.
                    client.sendall(_upstream_handshake(peer, bool(shared), upstream.where))
                _relay(_SocketSide(client), peer, grant, record, self.stopping)
            except _SessionEnd:
                pass
            except NovaconsoleError as exc:
                record.end_reason = f"upstream handshake failed: {exc.one_line()}"
            except OSError as exc:
                record.end_reason = f"connection error: {exc.strerror or exc}"
            finally:
                peer.close()
                client.close()


def _upstream_handshake(peer: RelayPeer, shared: bool, where: str) -> bytes:
    """RFB client handshake with the VNC server behind ``peer``; the ServerInit bytes
    (and anything after them) for our client."""
    from novaconsole.vnc.probe import HandshakeState, ProbeError, RfbClientHandshake
    from novaconsole.vnc.routes import PeerTransport
    from novaconsole.vnc.vncauth import server_init_bytes

    machine = RfbClientHandshake(shared=shared)
    transport = PeerTransport(peer, UPSTREAM_TIMEOUT_S)
    while machine.state is not HandshakeState.DONE:
        try:
            data = transport.receive()
        except Exception:
            raise ProbeError(
                f"{where} closed or went quiet while waiting for {machine.state.value}"
            ) from None
        reply = machine.receive(data)
        if reply:
            transport.send(reply)
    return server_init_bytes(machine.result) + machine.unconsumed
