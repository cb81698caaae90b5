"""Keystone entities for the guide: the controller plugin's step vs the 22 ``openstack`` calls.

The same entities both ways, on the lab's real Keystone, in the same run: a project, three
service users (nova, placement, glance) each with roles ``admin`` and ``service`` on it,
three service entities and nine endpoints — 1 + 3 + 6 + 3 + 9 = 22 CLI calls. Each side
gets its own throw-away names (``ncbench-cli-*`` / ``ncbench-sdk-*``, a region of its own),
removed afterwards. The CLI side passes throw-away passwords of throw-away users on its
command line (the CLI offers no other non-interactive way); the plugin never does.

    python -m bench keystone_vs_cli [--cloud novaconsole-lab] [--write]

``--write`` records the result in the "keystone" section of bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench._common import LAB_OPENSTACK, RESULTS, write_section
from novaconsole.cloud import LAB_CLOUD, connect
from novaconsole.site import Site
from novaconsole.steps import RunContext, Status, run_steps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "plugins"))

from novaconsole_controller.identity import (
    IdentityStep,
    IdentityWanted,
    ServiceIdentity,
    remove_identity,
)

GOAL_RATIO = 10.0
SECTION = "## keystone"
#: (service, type, port, path) as in the guide, with today's URLs.
GUIDE_SERVICES = (
    ("nova", "compute", 8774, "/v2.1"),
    ("placement", "placement", 8778, ""),
    ("glance", "image", 9292, ""),
)


def wanted_for(prefix: str) -> tuple[IdentityWanted, dict[str, str]]:
    """The guide's entities under unique names, and a throw-away password per user."""
    services = tuple(
        ServiceIdentity(
            f"{prefix}-{name}",
            f"{name.upper()}_PASS",
            f"{prefix}-{name}",
            f"{prefix}-{kind}",
            f"benchmark {name}",
            f"http://127.0.0.1:{port}{path}",
        )
        for name, kind, port, path in GUIDE_SERVICES
    )
    passwords = {s.secret: secrets.token_urlsafe(12) for s in services}
    return IdentityWanted(f"{prefix}-service", "default", f"{prefix}-region", services), passwords


def cli_commands(wanted: IdentityWanted, passwords: dict[str, str]) -> list[list[str]]:
    """The 22 ``openstack`` calls an operator types for the same entities."""
    cmds = [["project", "create", "--domain", "default", wanted.project]]
    for svc in wanted.services:
        cmds.append(
            ["user", "create", "--domain", "default", "--password", passwords[svc.secret], svc.user]
        )
        for role in ("admin", "service"):
            cmds.append(["role", "add", "--project", wanted.project, "--user", svc.user, role])
        cmds.append(["service", "create", "--name", svc.name, svc.type])
        for interface in ("public", "internal", "admin"):
            cmds.append(
                ["endpoint", "create", "--region", wanted.region, svc.name, interface, svc.url]
            )
    return cmds


def run_cli(
    openstack: Path, cloud: str, wanted: IdentityWanted, passwords: dict[str, str]
) -> float:
    """Time the 22 CLI calls (the region is created beforehand, untimed, as in the guide)."""
    start = time.monotonic()
    for cmd in cli_commands(wanted, passwords):
        proc = subprocess.run(
            [
                str(openstack),
                "--os-cloud",
                cloud,
                *cmd,
                *([] if cmd[1] == "add" else ["-f", "value"]),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"openstack {cmd[0]} {cmd[1]} failed: {proc.stderr.strip()[-200:]}")
    return time.monotonic() - start


def run_plugin(
    cloud: str, wanted: IdentityWanted, passwords: dict[str, str]
) -> tuple[float, float]:
    """Time the plugin's step: first run (creates all), second run (zero changes)."""
    site = Site(os_cloud=cloud, region=wanted.region, secrets=passwords)
    times = []
    for expected in (Status.CHANGED, Status.OK):
        ctx = RunContext()
        start = time.monotonic()
        report = run_steps([IdentityStep(site, wanted)], ctx)
        times.append(time.monotonic() - start)
        for client in ctx.cache.values():
            client.close()
        result = report.results[0]
        if result.status is not expected:
            raise SystemExit(f"plugin step: {result.status.value} ({result.error})")
    return times[0], times[1]


def report(cli_s: float, first_s: float, again_s: float, command: str) -> str:
    """The Markdown section for RESULTS.md (also printed)."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ratio = cli_s / first_s
    verdict = "met" if ratio >= GOAL_RATIO else "NOT met"
    load = os.getloadavg()[0]
    return "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command}`  ",
            f"Date: {now}; machine: {os.cpu_count()} CPUs, {platform.machine()}, "
            f"Python {platform.python_version()}; load average {load:.1f} at the end.  ",
            "Entities: 1 project, 3 users (nova, placement, glance) with admin + service roles, "
            "3 services, 9 endpoints, on the lab's Keystone.",
            "",
            "| what | seconds |",
            "|---|---:|",
            f"| openstack CLI, 22 calls | {cli_s:.2f} |",
            f"| plugin IdentityStep, first run (check, plan, apply, verify) | {first_s:.2f} |",
            f"| plugin IdentityStep, re-run (zero changes) | {again_s:.2f} |",
            "",
            f"Ratio (CLI / plugin first run): **{ratio:.1f}x** (goal >= {GOAL_RATIO:.0f}x: "
            f"{verdict}). Per CLI call: {cli_s / 22:.2f} s.",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run both sides once on the same Keystone; print the table; ``--write`` records it."""
    parser = argparse.ArgumentParser(prog="python -m bench keystone_vs_cli")
    parser.add_argument("--cloud", default=LAB_CLOUD)
    parser.add_argument("--openstack", type=Path, default=LAB_OPENSTACK)
    parser.add_argument("--write", action="store_true", help="update bench/RESULTS.md")
    args = parser.parse_args(list(argv) if argv is not None else [])
    tag = secrets.token_hex(3)
    cli_wanted, cli_passwords = wanted_for(f"ncbench-cli-{tag}")
    sdk_wanted, sdk_passwords = wanted_for(f"ncbench-sdk-{tag}")
    conn = connect(args.cloud)
    try:
        for role in ("admin", "service"):
            if conn.identity.find_role(role) is None:
                conn.identity.create_role(name=role)
        conn.identity.create_region(id=cli_wanted.region)
        cli_s = run_cli(args.openstack, args.cloud, cli_wanted, cli_passwords)
        first_s, again_s = run_plugin(args.cloud, sdk_wanted, sdk_passwords)
    finally:
        for wanted in (cli_wanted, sdk_wanted):
            remove_identity(conn, wanted)
            conn.identity.delete_region(wanted.region, ignore_missing=True)
        conn.close()
    command = "python -m bench keystone_vs_cli" + (" " + " ".join(argv) if argv else "")
    text = report(cli_s, first_s, again_s, command.replace(" --write", ""))
    print(text)
    if args.write:
        write_section("keystone", text)
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
