"""``verify --console``: Nova's console API, nova-novncproxy, the compute node's VNC server
and our bridge, walked end to end on one server: an RFB session through the bridge that
must receive a framebuffer update showing something (not one colour).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from novaconsole.hookspecs import hookimpl
from novaconsole.verify import Check, CheckResult
from novaconsole.vnc.bridge import ConsoleBridge
from novaconsole.vnc.routes import CONSOLE_STATUSES, NovaRoute, find_server
from novaconsole.vnc.session import RfbSession
from novaconsole_consoles.session import settled_frame

CHECK_NAME = "console"
TIMEOUT_S = 30.0


def run_console_check(conn: Any, server: str | None) -> CheckResult:
    """Handshake with ``server``'s VNC server through our bridge and nova-novncproxy."""
    cloud = str(getattr(conn.config, "name", "") or "cloud")
    if server is None:
        running = [s for s in conn.compute.servers() if s.status in CONSOLE_STATUSES]
        if not running:
            return CheckResult(
                CHECK_NAME,
                False,
                "no running server to open a console on (boot one, or name one: "
                "verify --console SERVER)",
            )
        server = str(running[0].id)
    info = find_server(conn, server, cloud)
    route = NovaRoute(conn, info)
    with ConsoleBridge() as bridge:
        bridge.add_route(route)
        ticket = bridge.issue_ticket(info.id)
        with RfbSession.open_url(bridge.websocket_url(info.id, ticket), timeout=TIMEOUT_S) as rfb:
            settled = settled_frame(rfb, TIMEOUT_S)
            updated = settled is not None
            frame = settled or rfb.snapshot()
            hs = rfb.handshake
            error = rfb.error
        sessions = [s.as_dict() for s in bridge.sessions]
    via = f"through our bridge and {route.where}"
    facts = {
        "server": {"id": info.id, "name": info.name, "status": info.status},
        "upstream": route.where,
        "handshake": hs.as_dict(),
        "framebuffer_update": updated,
        "blank": frame.is_blank(),
        "sessions": sessions,
    }
    size = f"{hs.width}x{hs.height}"
    if not updated:
        reason = f": {error}" if error else ""
        return CheckResult(
            CHECK_NAME,
            False,
            f"{info.name}: RFB handshake done but no framebuffer update within "
            f"{TIMEOUT_S:g} s {via}{reason}",
            facts,
        )
    if frame.is_blank():
        return CheckResult(
            CHECK_NAME,
            False,
            f"{info.name}: its {size} screen is blank (one colour) {via}",
            facts,
        )
    return CheckResult(
        CHECK_NAME,
        True,
        f"{info.name}: RFB {hs.version[0]}.{hs.version[1]} {size} {hs.name!r}, "
        f"a non-blank screen {via}",
        facts,
    )


class ConsoleCheckPlugin:
    """Registered by ``verify --console`` only: the check needs a server to look at."""

    def __init__(self, server: str | None) -> None:
        self.server = server

    @hookimpl
    def novaconsole_verify_checks(self) -> Sequence[Check]:
        server = self.server
        return [
            Check(
                CHECK_NAME,
                lambda conn: run_console_check(conn, server),
                "a server's console through Nova, nova-novncproxy and our bridge",
            )
        ]
