"""The ``novaconsole`` command line: the console by default, headless commands besides.

Every command returns an exit code: 0 success, 1 a check failed, 2 usage or connection
error. Expected failures are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence

from novaconsole import __version__
from novaconsole.errors import EXIT_OK, EXIT_USAGE, ConfigError, NovaconsoleError
from novaconsole.output import emit_json, render_table
from novaconsole.plugins import PluginManager, get_plugin_manager


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors exit 2 with one line (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def cloud_option_parser() -> _Parser:
    """``--os-cloud`` for a sub-command, so it works after the command name too.

    ``SUPPRESS`` keeps an absent option from overwriting the global one.
    """
    parent = _Parser(add_help=False)
    parent.add_argument(
        "--os-cloud", metavar="NAME", default=argparse.SUPPRESS, help="cloud from clouds.yaml"
    )
    return parent


def build_parser(pm: PluginManager, *, commands: bool = True) -> argparse.ArgumentParser:
    """The full parser: global options, core commands, then plugins' commands.

    ``commands=False`` stops after the global options: ``--plugin NAME`` runs a mode and
    needs none of the sub-commands, whose modules (the lab, provisioning, the VNC bridge)
    would otherwise stay loaded in a daemon that never uses them.
    """
    parser = _Parser(prog="novaconsole", description="The ops console for OpenStack Nova.")
    parser.add_argument("--version", action="version", version=f"novaconsole {__version__}")
    parser.add_argument(
        "--os-cloud", metavar="NAME", help="cloud from clouds.yaml (default: OS_CLOUD)"
    )
    parser.add_argument(
        "--plugin", metavar="NAME", help="run a plugin's own mode (e.g. compute-agent) and exit"
    )
    parser.add_argument("--theme", metavar="NAME", help="console theme (see themes/)")
    parser.add_argument(
        "--readonly", action="store_true", help="console: hide and refuse mutating actions"
    )
    parser.add_argument(
        "--refresh",
        metavar="SECONDS",
        type=float,
        default=None,
        help="console auto-refresh interval",
    )
    parser.add_argument(
        "--graphics",
        choices=["auto", "kitty", "sixel", "cells"],
        default=None,
        help="console screen: Kitty graphics, Sixel or half-block cells (default auto: "
        "ask the terminal; also NOVACONSOLE_GRAPHICS or [console] graphics)",
    )
    pm.hook.novaconsole_add_arguments(parser=parser)
    if not commands:
        return parser
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("plugins", help="list loaded plugins and where they come from")
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser(
        "verify",
        help="the install guide's 'Verify operation' as one command",
        parents=[cloud_option_parser()],
    )
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.add_argument("--timeout", type=float, default=15.0, help="per-call API timeout (s)")
    p.set_defaults(func=_cmd_verify)

    from novaconsole.agents.cli import add_agent_commands
    from novaconsole.lab.cli import add_lab_command
    from novaconsole.provision import add_provision_command

    add_lab_command(sub)
    add_provision_command(sub)
    add_agent_commands(sub, cloud_option_parser())
    pm.hook.novaconsole_add_commands(subparsers=sub)
    return parser


def _cmd_plugins(args: argparse.Namespace) -> int:
    pm: PluginManager = args.plugin_manager
    rows = [
        {"name": p.name, "source": p.source, "location": p.location, "blocked": p.blocked}
        for p in pm.loaded
    ]
    modes = sorted(name for result in pm.hook.novaconsole_plugin_modes() for name in result)
    if args.format == "json":
        emit_json({"plugins": rows, "modes": modes})
    else:
        print(render_table(rows, ["name", "source", "location", "blocked"]))
        print(f"\nplugin modes (--plugin NAME): {', '.join(modes) or 'none'}")
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from novaconsole.verify import run_verify_command

    return run_verify_command(args)


def run_plugin_mode(pm: PluginManager, name: str, rest: Sequence[str]) -> int:
    """Run ``novaconsole --plugin NAME [ARGS...]``."""
    modes: dict[str, object] = {}
    for result in pm.hook.novaconsole_plugin_modes():
        modes.update(result)
    mode = modes.get(name)
    if mode is None or not callable(mode):
        known = ", ".join(sorted(modes)) or "none"
        raise ConfigError(f"no plugin mode named {name!r} (known: {known})")
    return int(mode(list(rest)))


def split_plugin_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``argv`` up to and including ``--plugin NAME`` (or ``--plugin=NAME``), and the rest."""
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        if arg.startswith("--plugin="):
            return list(argv[: i + 1]), list(argv[i + 1 :])
        if arg == "--plugin":
            return list(argv[: i + 2]), list(argv[i + 2 :])
    return list(argv), []


def _names_plugin(head: Sequence[str]) -> bool:
    return bool(head) and (head[-1].startswith("--plugin=") or head[-2:-1] == ["--plugin"])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``novaconsole`` script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        pm = get_plugin_manager()
        # Everything after ``--plugin NAME`` belongs to the mode: argparse would otherwise
        # take a mode option's value (``--config FILE``) for a sub-command name.
        head, tail = split_plugin_argv(argv)
        parser = build_parser(pm, commands=not _names_plugin(head))
        args, rest = parser.parse_known_args(head)
        rest = [*rest, *tail]
        if args.plugin:
            return run_plugin_mode(pm, args.plugin, rest)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        args.plugin_manager = pm
        func = getattr(args, "func", None)
        if func is None:
            from novaconsole.console import run_console

            return run_console(args)
        return int(func(args))
    except NovaconsoleError as exc:
        print(f"novaconsole: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("novaconsole: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_USAGE


def run() -> int:
    """The console script: :func:`main`, then a quick exit.

    At exit CPython runs one last cyclic collection over every object still alive; after
    openstacksdk is loaded that is some 100k objects and ~60 ms, a fifth of ``verify``.
    Nothing needs collecting when the process is about to end, so freeze them first
    (``gc.freeze`` moves them out of the collector's reach; finalisers still run).
    """
    code = main()
    gc.freeze()
    return code
