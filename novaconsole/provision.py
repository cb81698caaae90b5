"""``novaconsole provision controller|compute``: run a role's steps from a site file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from novaconsole.errors import ConfigError
from novaconsole.output import emit_json
from novaconsole.plugins import PluginManager
from novaconsole.progress import LineReporter, summary
from novaconsole.site import Site, load_site
from novaconsole.steps import RunContext, RunReport, Step, order_by_phase, run_steps

ROLES = ("controller", "compute")


def collect_steps(pm: PluginManager, role: str, site: Site) -> list[Step[Any]]:
    """All plugins' steps for ``role``, after the ordering hook had its say."""
    # pluggy returns the last registered plugin's results first; restore registration
    # order (built-ins first), then let phases interleave the plugins' steps.
    results = pm.hook.novaconsole_provision_steps(role=role, site=site)
    steps = order_by_phase(step for result in reversed(results) for step in result)
    pm.hook.novaconsole_order_steps(role=role, steps=steps)
    if not steps:
        raise ConfigError(f"no plugin provides steps for role {role!r} (is it blocked?)")
    return steps


def provision(
    pm: PluginManager, role: str, site: Site, *, dry_run: bool, reporter: LineReporter
) -> RunReport:
    """Run ``role``'s steps for ``site`` with live progress."""
    ctx = RunContext(dry_run=dry_run, log=reporter.log)
    try:
        return run_steps(collect_steps(pm, role, site), ctx, reporter)
    finally:
        for closer in ctx.cache.values():
            close = getattr(closer, "close", None)
            if callable(close):
                close()


def _cmd_provision(args: argparse.Namespace) -> int:
    site = load_site(Path(args.site))
    reporter = LineReporter()
    report = provision(
        args.plugin_manager, args.role, site, dry_run=args.dry_run, reporter=reporter
    )
    if args.format == "json":
        emit_json(report.as_dict())
    reporter.log(summary(report))
    return report.exit_code


def add_provision_command(sub: Any) -> None:
    """Register ``provision`` on the top-level sub-parsers."""
    p = sub.add_parser("provision", help="provision a controller or compute node from a site file")
    p.add_argument("role", choices=ROLES)
    p.add_argument("--site", required=True, metavar="FILE", help="site file (TOML)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("-f", "--format", choices=("table", "json"), default="table")
    p.set_defaults(func=_cmd_provision)
