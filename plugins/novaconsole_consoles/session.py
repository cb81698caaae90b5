"""Console sessions: a server's route, the bridge that serves it, and opening a browser."""

from __future__ import annotations

import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any

from novaconsole.errors import ConfigError
from novaconsole.vnc.bridge import ConsoleBridge
from novaconsole.vnc.probe import RfbHandshake
from novaconsole.vnc.routes import ServerInfo, Upstream, find_server, make_route

#: Seconds for Nova's API, the proxy and the RFB handshake of the pre-flight.
PREFLIGHT_TIMEOUT_S = 30.0


@dataclass
class Console:
    """A server's console route, checked with one RFB handshake."""

    cloud: str
    server: ServerInfo
    route: Upstream
    #: From the pre-flight, or the session's own handshake when there was none.
    handshake: RfbHandshake | None


def _quiet_sdk_logs() -> None:
    # keystoneauth logs request URLs (the direct route's carries a Nova token) at DEBUG;
    # unconfigured, Python's last-resort handler would print its warnings next to ours.
    for name in ("keystoneauth", "openstack"):
        logging.getLogger(name).addHandler(logging.NullHandler())


def open_route(
    cloud: str | None,
    server: str,
    via: str = "nova",
    *,
    check: bool = True,
    proxy_url: str | None = None,
) -> Console:
    """Connect to ``cloud``, find ``server`` (name or ID), build the route and (unless the
    caller's own session checks it at once) complete one RFB handshake over it."""
    from novaconsole.cloud import connect, default_cloud_name, describe_failure

    _quiet_sdk_logs()
    name = default_cloud_name(cloud)
    label = name or "from OS_* environment"
    try:
        conn = connect(name, fallback_to_lab=True, timeout=PREFLIGHT_TIMEOUT_S)
        conn.session.auth.get_access(conn.session)
    except ConfigError:
        raise
    except Exception as exc:
        raise describe_failure(exc, f"cloud {label!r}") from exc
    info = find_server(conn, server, name or label)
    route = make_route(via, conn, info, proxy_url=proxy_url)
    handshake = route.check(PREFLIGHT_TIMEOUT_S) if check else None
    return Console(name or label, info, route, handshake)


def parse_listen(text: str) -> tuple[str, int]:
    """``ADDR:PORT``, ``[V6]:PORT`` or ``:PORT`` (127.0.0.1) as (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen {text!r}: expected ADDR:PORT, e.g. 127.0.0.1:6081")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port_text)


def graphical_browser_available() -> bool:
    """True where ``webbrowser`` would open a window, not a text browser in our terminal."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def open_in_browser(bridge: ConsoleBridge, server_id: str) -> bool:
    """Open ``server_id``'s console in a graphical browser if there is one; True if one
    was started.

    The browser is given the path of a private file (:meth:`ConsoleBridge.launch_file`)
    that posts a launch ticket, never a URL with a ticket: a browser's arguments are
    readable by every user of the machine (``/proc/PID/cmdline``) for as long as it runs.
    """
    if not graphical_browser_available():
        return False
    import webbrowser

    path = bridge.launch_file(server_id)
    try:
        return bool(webbrowser.open(path.as_uri(), new=1))
    except webbrowser.Error:
        return False


def settled_frame(
    rfb: Any, timeout: float, *, quiet_s: float = 0.5, settle_s: float = 2.0
) -> Any | None:
    """The screen once updates pause for ``quiet_s`` (at most ``settle_s`` after the first
    update); None if no update came within ``timeout``.

    QEMU's first update to a new client can be a cleared screen with the text following
    at once, so "the current screen" is the one after the burst, not the first update; a
    blinking cursor never pauses, hence the cap.
    """
    import time

    if not rfb.wait_for_update(timeout):
        return None
    deadline = time.monotonic() + settle_s
    seen = rfb.update_count
    while (left := deadline - time.monotonic()) > 0:
        if not rfb.wait_for_update(min(quiet_s, left), after=seen):
            break
        seen = rfb.update_count
    return rfb.snapshot()


# -- the TUI's bridge (one per process) ---------------------------------------------------

_TUI_BRIDGE: ConsoleBridge | None = None
_TUI_LOCK = threading.Lock()


def tui_bridge() -> ConsoleBridge:
    """The process's bridge on 127.0.0.1 (started on first use, lives with the process)."""
    global _TUI_BRIDGE
    with _TUI_LOCK:
        if _TUI_BRIDGE is None:
            _TUI_BRIDGE = ConsoleBridge().start()
        return _TUI_BRIDGE


def open_console_url(server_id: str, cloud: str | None, via: str = "nova") -> str:
    """Route ``server_id`` through the process's bridge and open it in a browser if there
    is one (then the answer holds no ticket); else its one-time launch URL to show."""
    console = open_route(cloud, server_id, via)
    bridge = tui_bridge()
    bridge.add_route(console.route)
    if open_in_browser(bridge, console.server.id):
        return f"opened in your browser (bridge {bridge.address[0]}:{bridge.address[1]})"
    return bridge.launch_url(console.server.id, bridge.issue_launch_ticket(console.server.id))


def describe(console: Console, bridge: ConsoleBridge | None, **extra: Any) -> dict[str, Any]:
    """The session for ``-f json``."""
    data: dict[str, Any] = {
        "cloud": console.cloud,
        "server": {
            "id": console.server.id,
            "name": console.server.name,
            "status": console.server.status,
        },
        "via": console.route.via,
        "upstream": console.route.where,
        "handshake": console.handshake.as_dict() if console.handshake else None,
    }
    if bridge is not None:
        policy = bridge.tickets.policy
        data["bridge"] = {
            "address": f"{bridge.address[0]}:{bridge.address[1]}",
            "ticket_ttl_s": policy.connect_ttl_s,
            "max_session_s": policy.max_session_s,
            "idle_timeout_s": policy.idle_timeout_s,
        }
    data.update(extra)
    return data
