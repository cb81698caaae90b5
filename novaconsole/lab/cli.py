"""``novaconsole lab up | down | status | tempest``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from novaconsole.errors import EXIT_CHECK_FAILED, EXIT_OK
from novaconsole.output import emit_json, render_table
from novaconsole.progress import LineReporter, summary


def checked_db_url(url: str) -> str:
    """A ``--db`` URL without a password (it would show in the process list and lab.json)."""
    from urllib.parse import urlsplit

    from novaconsole.errors import ConfigError

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port validates it
    except ValueError as exc:
        raise ConfigError(f"--db {url.split('@')[-1]!r} is not a valid URL: {exc}") from exc
    if parts.password:
        raise ConfigError(
            "--db must not carry a password (it would show in the process list)",
            hint="export DB_ROOT_PASS=... and pass mysql+pymysql://root@HOST",
        )
    if parts.scheme not in ("mysql", "mysql+pymysql") or not parts.hostname:
        raise ConfigError(f"--db {url!r}: use mysql+pymysql://USER@HOST[:PORT] or 'sqlite'")
    return url


def _cmd_up(args: argparse.Namespace) -> int:
    from novaconsole.lab.runner import default_config, lab_up, parse_port_overrides

    config = default_config(args.state_dir)
    parse_port_overrides(args.port or [], config)
    if args.db is not None:
        config.db_url = None if args.db == "sqlite" else checked_db_url(args.db)
    if args.service_manager is not None:
        config.service_manager = args.service_manager
    if args.networking is not None:
        config.networking = args.networking
    if args.computes is not None:
        from novaconsole.lab.nodes import check_computes

        config.computes = check_computes(args.computes)
    reporter = LineReporter(verbose=not args.quiet)
    started = time.monotonic()
    what = "planning" if args.dry_run else "bringing up"
    reporter.log(f"{what} the novaconsole lab in {config.state_dir}")
    report = lab_up(
        config, args.plugin_manager, dry_run=args.dry_run, reporter=reporter, log=reporter.log
    )
    if args.format == "json":
        emit_json({**report.as_dict(), "seconds": round(time.monotonic() - started, 2)})
    reporter.log(summary(report))
    if report.ok and not args.dry_run:
        reporter.log(
            "lab is up: `openstack --os-cloud novaconsole-lab compute service list`, "
            "`novaconsole verify --os-cloud novaconsole-lab`, `novaconsole` for the console"
        )
    return report.exit_code


def _cmd_status(args: argparse.Namespace) -> int:
    from novaconsole.lab.runner import default_config, lab_status

    status = lab_status(default_config(args.state_dir), args.plugin_manager)
    if args.format == "json":
        emit_json(status)
    else:
        print(
            f"lab in {status['state_dir']}: {'up' if status['up'] else 'DOWN'} "
            f"(database: {status['database']}; services: {status['services_kept_by']})"
        )
        if status["services"]:
            print(render_table(status["services"], ["service", "state", "pid", "port", "health"]))
        if status["orphans"]:
            from novaconsole.services import Orphan, describe_orphans

            left = describe_orphans(Orphan(o["pid"], o["program"]) for o in status["orphans"])
            print(f"supervisord is not running, but what it started is: {left}")
            print(
                "  `novaconsole lab up` stops and restarts them; `novaconsole lab down` stops them"
            )
        for key, value in [*status["compute"].items(), *status["guest"].items()]:
            print(f"{key}: {value}")
        net = status["networking"]
        down = [n for n, up in net.get("services_running", {}).items() if not up]
        print(
            f"networking: {net['mode']}"
            + (f", datapath {net['datapath']}" if "datapath" in net else "")
        )
        print(f"networking_reason: {net['why']}")
        if "provider" in net:
            print(f"provider_network: {net['provider']}")
            print(f"neutron_database: {net['neutron_database']}")
        if down:
            print(f"networking_down: {', '.join(down)}")
        storage = status["instances_storage"]
        print(
            f"instances_storage: {storage['kind']}"
            + (f" volume {storage['volume']}" if "volume" in storage else "")
            + f" ({storage['why']})"
        )
    return EXIT_OK if status["up"] else EXIT_CHECK_FAILED


def _cmd_down(args: argparse.Namespace) -> int:
    from novaconsole.lab.runner import default_config, lab_down

    result = lab_down(default_config(args.state_dir))
    if args.format == "json":
        emit_json(result)
    else:
        print(f"stopped: {', '.join(result['stopped']) or 'nothing was running'}", file=sys.stderr)
    return EXIT_OK


def _cmd_tempest(args: argparse.Namespace) -> int:
    from novaconsole.lab.runner import default_config
    from novaconsole.lab.tempest import run_lab_tempest

    reporter = LineReporter(verbose=not args.quiet)
    as_json = args.format == "json"

    def echo(line: str) -> None:
        # tempest's own per-test lines (stdout for --list, progress on stderr otherwise)
        if args.list and not as_json:
            print(line)
        elif not args.quiet and not as_json:
            print(line, file=sys.stderr, flush=True)

    result = run_lab_tempest(
        default_config(args.state_dir),
        regex=args.regex,
        selection=args.selection,
        list_only=args.list,
        workers=args.workers,
        use_excludes=not args.no_exclude,
        log=reporter.log,
        echo=echo,
    )
    if as_json:
        emit_json(result.as_dict())
    if args.list:
        return EXIT_OK
    reporter.log(f"tempest's output: {result.log}")
    print(result.summary(), file=sys.stderr if as_json else sys.stdout)
    return result.exit_code


def add_lab_command(sub: Any) -> None:
    """Register ``lab`` on the top-level sub-parsers."""
    p = sub.add_parser("lab", help="a real all-in-one Nova lab on 127.0.0.1")
    actions = p.add_subparsers(dest="lab_command", metavar="ACTION", required=True)
    for name, func, help_text in (
        ("up", _cmd_up, "stand the lab up (re-run: converge, zero changes)"),
        ("status", _cmd_status, "each service with pid, port and health"),
        ("down", _cmd_down, "stop every process the lab started"),
        ("tempest", _cmd_tempest, "run tempest's API tests against the lab (its acceptance test)"),
    ):
        a = actions.add_parser(name, help=help_text)
        a.add_argument(
            "--state-dir", metavar="DIR", help="lab state (default: $XDG_DATA_HOME/novaconsole/lab)"
        )
        a.add_argument("-f", "--format", choices=("table", "json"), default="table")
        a.set_defaults(func=func)
        if name == "up":
            a.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
            a.add_argument(
                "--db", metavar="URL", help="database server admin URL (default: sqlite)"
            )
            a.add_argument("--port", action="append", metavar="NAME=PORT", help="override a port")
            a.add_argument(
                "--service-manager",
                choices=("auto", "systemd", "supervisord"),
                help="who keeps the services running (default auto: systemd where it is "
                "PID 1, else supervisord; remembered for the lab)",
            )
            a.add_argument(
                "--networking",
                choices=("ovn", "none"),
                help="ovn (default: ML2/OVN on Open vSwitch's userspace datapath; Neutron's "
                "database on the local MariaDB) or none (the Neutron API only); remembered",
            )
            a.add_argument(
                "--computes",
                type=int,
                metavar="N",
                help="compute nodes: 1 is this machine's own, each more a host of its own "
                "on it (default 1; remembered for the lab; fewer removes the extra ones)",
            )
            a.add_argument("-q", "--quiet", action="store_true", help="no per-change lines")
        if name == "tempest":
            a.add_argument(
                "regex",
                nargs="?",
                metavar="REGEX",
                help="tests to run (default: the CI selection, tempest-lists/ci.txt)",
            )
            a.add_argument(
                "--selection",
                choices=("ci", "long"),
                help="a selection under novaconsole/lab/tempest-lists/ (default ci)",
            )
            a.add_argument("--list", action="store_true", help="list the selected tests only")
            a.add_argument(
                "--workers", type=int, default=2, metavar="N", help="tempest workers (default 2)"
            )
            a.add_argument(
                "--no-exclude",
                action="store_true",
                help="do not apply tempest-lists/exclude.txt (to see its entries fail)",
            )
            a.add_argument("-q", "--quiet", action="store_true", help="no per-test lines")
