"""``novaconsole console SERVER`` and ``novaconsole verify --console [SERVER]``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from novaconsole.errors import EXIT_OK, ConfigError, ConnectionFailure
from novaconsole.output import emit_json
from novaconsole.vnc.bridge import ConsoleBridge
from novaconsole.vnc.routes import VIA_CHOICES, PeerTransport
from novaconsole.vnc.tickets import TicketPolicy
from novaconsole_consoles.session import (
    Console,
    describe,
    open_in_browser,
    open_route,
    parse_listen,
    settled_frame,
)

#: Seconds for the route to open and the first framebuffer update to arrive.
SCREENSHOT_TIMEOUT_S = 30.0


def add_console_command(subparsers: Any) -> None:
    from novaconsole.cli import cloud_option_parser

    p = subparsers.add_parser(
        "console",
        help="open a server's VNC console through our bridge (noVNC URL or a VNC port)",
        parents=[cloud_option_parser()],
    )
    p.add_argument("server", metavar="SERVER", help="server name or ID")
    p.add_argument(
        "--via",
        choices=VIA_CHOICES,
        default="nova",
        help="nova: through nova-novncproxy (default); direct: straight to the compute "
        "node's VNC port (admin); agent: the compute agent's report",
    )
    p.add_argument(
        "--listen",
        metavar="ADDR:PORT",
        help="where the bridge (or --vnc port) listens (default 127.0.0.1, any free port)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--browser", action="store_true", help="print and open noVNC's URL (the default)"
    )
    mode.add_argument(
        "--vnc", action="store_true", help="print ADDR:PORT for a VNC client (one connection)"
    )
    mode.add_argument("--screenshot", metavar="FILE", help="write the current screen as PNG")
    mode.add_argument(
        "--serial",
        action="store_true",
        help="attach this terminal to the server's serial console (Ctrl-] detaches)",
    )
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.add_argument(
        "--ticket-ttl",
        type=float,
        default=TicketPolicy.connect_ttl_s,
        metavar="SECONDS",
        help=f"time to first connect (default {TicketPolicy.connect_ttl_s:g})",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=TicketPolicy.idle_timeout_s,
        metavar="SECONDS",
        help=f"close a session after this long without traffic (default {TicketPolicy.idle_timeout_s:g})",
    )
    p.set_defaults(func=run_console_command)


def _policy(args: argparse.Namespace) -> TicketPolicy:
    return TicketPolicy(connect_ttl_s=args.ticket_ttl, idle_timeout_s=args.idle_timeout)


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_console_command(args: argparse.Namespace) -> int:
    """Open the console; serve it until the session ends. Exit 0, or 2 with one line."""
    policy = _policy(args)  # a bad option fails before any API call
    listen = parse_listen(args.listen) if args.listen else ("127.0.0.1", 0)
    if args.screenshot:
        return _screenshot(args)
    if args.serial:
        return _serial(args)
    console = open_route(getattr(args, "os_cloud", None), args.server, args.via)
    if args.vnc:
        return _serve_vnc(args, console, listen, policy)
    return _serve_browser(args, console, listen, policy)


def _serve_browser(
    args: argparse.Namespace, console: Console, listen: tuple[str, int], policy: TicketPolicy
) -> int:
    bridge = ConsoleBridge(listen_host=listen[0], listen_port=listen[1], policy=policy)
    with bridge:
        bridge.add_route(console.route)
        url = bridge.novnc_url(console.server.id, bridge.issue_ticket(console.server.id))
        if args.format == "json":
            emit_json(describe(console, bridge, url=url))
        else:
            print(url, flush=True)
        opened = open_in_browser(url)
        _say(
            f"console of {console.server.name} via {console.route.via} ({console.route.where}): "
            + ("opened in your browser; " if opened else "open the URL above in a browser; ")
            + f"it is good for one session, first connect within {policy.connect_ttl_s:g} s"
        )
        return _until_done(bridge, policy)


def _serve_vnc(
    args: argparse.Namespace, console: Console, listen: tuple[str, int], policy: TicketPolicy
) -> int:
    bridge = ConsoleBridge(listen_host=listen[0], policy=policy)
    try:
        bridge.add_route(console.route)
        host, port = bridge.open_vnc_port(console.server.id, listen[1])
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if args.format == "json":
            emit_json(describe(console, None, vnc=shown, ticket_ttl_s=policy.connect_ttl_s))
        else:
            print(shown, flush=True)
        _say(
            f"console of {console.server.name} via {console.route.via} ({console.route.where}): "
            f"point a VNC client at {shown}; it takes one connection within "
            f"{policy.connect_ttl_s:g} s"
        )
        return _until_done(bridge, policy)
    finally:
        bridge.close()


def _until_done(bridge: ConsoleBridge, policy: TicketPolicy) -> int:
    record = bridge.wait_for_session(policy.connect_ttl_s)
    bridge.wait_until_idle()
    _say(
        f"session ended ({record.end_reason}): {record.bytes_to_client} bytes to the client, "
        f"{record.bytes_to_server} to the server"
    )
    return EXIT_OK


def _screenshot(args: argparse.Namespace) -> int:
    """Write the server's current screen as PNG: one framebuffer update, then close."""
    from novaconsole.vnc.png import write_png
    from novaconsole.vnc.session import RfbSession

    console = open_route(getattr(args, "os_cloud", None), args.server, args.via, check=False)
    session = RfbSession(
        PeerTransport(console.route.open(SCREENSHOT_TIMEOUT_S), SCREENSHOT_TIMEOUT_S),
        console.route.where,
    )
    with session:
        console.handshake = session.start()
        frame = settled_frame(session, SCREENSHOT_TIMEOUT_S)
        if frame is None:
            raise ConnectionFailure(
                f"{console.route.where} sent no framebuffer update within "
                f"{SCREENSHOT_TIMEOUT_S:g} s" + (f": {session.error}" if session.error else "")
            )
        path = write_png(args.screenshot, frame.width, frame.height, frame.pixels)
    if args.format == "json":
        emit_json(
            describe(
                console,
                None,
                screenshot=str(path),
                width=frame.width,
                height=frame.height,
                blank=frame.is_blank(),
            )
        )
    else:
        print(path)
    return EXIT_OK


def _serial(args: argparse.Namespace) -> int:
    """``virsh console`` for a Nova server: nova-serialproxy, raw terminal, Ctrl-] detaches."""
    from novaconsole.vnc.routes import serial_console_url
    from novaconsole.vnc.serial import SerialSession, run_raw_terminal

    if args.via != "nova":
        raise ConfigError("--serial goes through nova-serialproxy only (--via nova)")
    console = open_route(getattr(args, "os_cloud", None), args.server, "nova", check=False)
    url = serial_console_url(console.route, console.server)
    session = SerialSession.open_url(url, timeout=SCREENSHOT_TIMEOUT_S)
    reason = run_raw_terminal(
        session,
        banner=f"serial console of {console.server.name} ({session.where}); Ctrl-] detaches",
    )
    if reason:
        raise ConnectionFailure(f"serial console of {console.server.name}: {reason}")
    return EXIT_OK


# -- verify --console -------------------------------------------------------------------------


def add_verify_console_option(subparsers: Any) -> None:
    """Give the core's ``verify`` a ``--console [SERVER]`` that adds our check."""
    verify = getattr(subparsers, "choices", {}).get("verify")
    if verify is None:
        return
    verify.add_argument(
        "--console",
        nargs="?",
        const="",
        default=None,
        metavar="SERVER",
        help="also walk the console path end to end on SERVER (default: the first ACTIVE)",
    )
    original = verify.get_default("func")

    def run_verify_with_console(args: argparse.Namespace) -> int:
        if args.console is not None and getattr(args, "plugin_manager", None) is not None:
            from novaconsole_consoles.check import ConsoleCheckPlugin

            args.plugin_manager.register(
                ConsoleCheckPlugin(args.console or None), name="consoles-verify-check"
            )
        return int(original(args))

    verify.set_defaults(func=run_verify_with_console)
