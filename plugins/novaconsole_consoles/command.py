"""``novaconsole console SERVER`` and ``novaconsole verify --console [SERVER]``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from novaconsole.errors import EXIT_OK, ConfigError, ConnectionFailure
from novaconsole.output import emit_json
from novaconsole.vnc.bridge import MAX_VNC_AUTH_FAILURES, ConsoleBridge
from novaconsole.vnc.routes import VIA_CHOICES, PeerTransport, checked_proxy_url
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
        "--proxy-url",
        metavar="URL",
        help="with --via nova: reach nova-novncproxy at http(s)://HOST[:PORT] instead of the "
        "host in Nova's console URL (Nova's token is kept)",
    )
    p.add_argument(
        "--listen",
        metavar="ADDR:PORT",
        help="where the bridge (or --vnc port) listens (default 127.0.0.1, any free port)",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--browser",
        action="store_true",
        help="open noVNC in a browser, or print its one-time URL where none can open (the default)",
    )
    mode.add_argument(
        "--url",
        action="store_true",
        help="print noVNC's one-time URL for a script; open no browser",
    )
    mode.add_argument(
        "--vnc",
        action="store_true",
        help="print ADDR:PORT and a one-time password for a VNC client (one connection)",
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
    if args.proxy_url:
        if args.via != "nova":
            raise ConfigError("--proxy-url names nova-novncproxy: it goes with --via nova only")
        checked_proxy_url(args.proxy_url)
    if args.screenshot:
        return _screenshot(args)
    if args.serial:
        return _serial(args)
    console = open_route(
        getattr(args, "os_cloud", None), args.server, args.via, proxy_url=args.proxy_url
    )
    if args.vnc:
        return _serve_vnc(args, console, listen, policy)
    return _serve_browser(args, console, listen, policy)


def _serve_browser(
    args: argparse.Namespace, console: Console, listen: tuple[str, int], policy: TicketPolicy
) -> int:
    """noVNC through the bridge. A browser we open gets a private file, not the URL;
    only where none opens (or ``--url`` asks for it) is the one-time URL printed, on
    stdout alone: it is the product then, and no log line carries it."""
    bridge = ConsoleBridge(listen_host=listen[0], listen_port=listen[1], policy=policy)
    with bridge:
        bridge.add_route(console.route)
        server_id = console.server.id
        opened = False if args.url else open_in_browser(bridge, server_id)
        url = (
            None if opened else bridge.launch_url(server_id, bridge.issue_launch_ticket(server_id))
        )
        if args.format == "json":
            emit_json(describe(console, bridge, url=url, opened_in_browser=opened))
        elif url is not None:
            print(url, flush=True)
        where = f"console of {console.server.name} via {console.route.via} ({console.route.where})"
        if opened:
            _say(
                f"{where}: opened in your browser; one session, first connect within "
                f"{policy.connect_ttl_s:g} s"
            )
        else:
            _say(
                f"{where}: open the URL above in a browser within {policy.connect_ttl_s:g} s; "
                "it is spent on first load (one session), so do not share it"
            )
        return _until_done(bridge, policy)


def _serve_vnc(
    args: argparse.Namespace, console: Console, listen: tuple[str, int], policy: TicketPolicy
) -> int:
    """A TCP port for an ordinary VNC client, behind a one-time VNC password: printed once
    on stdout (the product: the person types it into the client), never logged."""
    from novaconsole.vnc.vncauth import new_password

    bridge = ConsoleBridge(listen_host=listen[0], policy=policy)
    try:
        bridge.add_route(console.route)
        password = new_password()
        host, port = bridge.open_vnc_port(console.server.id, listen[1], password=password)
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if args.format == "json":
            emit_json(
                describe(
                    console,
                    None,
                    vnc=shown,
                    vnc_password=password,
                    ticket_ttl_s=policy.connect_ttl_s,
                )
            )
        else:
            print(shown, flush=True)
            print(f"password {password}", flush=True)
        _say(
            f"console of {console.server.name} via {console.route.via} ({console.route.where}): "
            f"point a VNC client at {shown} with the password above; it takes one "
            f"connection within {policy.connect_ttl_s:g} s and closes after "
            f"{MAX_VNC_AUTH_FAILURES} wrong answers"
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

    console = open_route(
        getattr(args, "os_cloud", None),
        args.server,
        args.via,
        check=False,
        proxy_url=args.proxy_url,
    )
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
