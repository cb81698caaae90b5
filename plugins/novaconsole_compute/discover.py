"""``nova-manage cell_v2 discover_hosts``, then wait until the host is registered and mapped.

The guide's trap: a compute host that nova-compute registered but nobody mapped to a cell
is invisible to the scheduler ("Host is not mapped to any cell"). The mapping is read from
the API database directly (``host_mappings``; nova-manage takes ~10 s just to start), and
``discover_hosts`` runs only while the host is not mapped. When an admin cloud is known
(the site's ``os_cloud``, ``OS_CLOUD`` or ``OS_*``), the compute service must also be up.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from novaconsole.cells import host_mapping
from novaconsole.errors import ConfigError, ConnectionFailure, StepFailed
from novaconsole.iniconf import IniDocument
from novaconsole.redact import scrub_secrets
from novaconsole.steps import RunContext, Step
from novaconsole_compute.runtime import facts_for, keeper_for, nova_binary

if TYPE_CHECKING:
    from novaconsole.site import Site

#: Log lines that explain a compute host that never shows up (errors, and the warnings of
#: the guide's traps: conductor or message queue unreachable).
_LOG_PROBLEMS = (
    " ERROR ",
    " CRITICAL ",
    "Timed out waiting for nova-conductor",
    "is unreachable",
    "Refusing to start",
)
#: Seconds between polls while waiting.
POLL = 3.0


def api_db_url(nova_conf: Path) -> str:
    """``[api_database] connection`` from nova.conf (secret: never show it)."""
    url = IniDocument.load(nova_conf).get("api_database", "connection")
    if not url:
        raise ConfigError(
            f"{nova_conf} has no [api_database] connection: discover hosts where the "
            "controller's nova.conf is (nova-manage cell_v2 discover_hosts runs on the controller)"
        )
    return url


def admin_cloud_name(site: Site) -> str | bool | None:
    """The cloud to ask about the compute service: a name, None (``OS_*``), or False (none)."""
    if site.os_cloud:
        return site.os_cloud
    if os.environ.get("OS_CLOUD"):
        return os.environ["OS_CLOUD"]
    if os.environ.get("OS_AUTH_URL"):
        return None
    return False


def last_error_line(log: Path, limit: int = 200_000) -> str | None:
    """The last ERROR/CRITICAL line of a log (scrubbed), for a diagnosis."""
    try:
        with log.open("rb") as fh:
            fh.seek(max(0, log.stat().st_size - limit))
            lines = fh.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if any(mark in line for mark in _LOG_PROBLEMS):
            return scrub_secrets(" ".join(line.split()))[:300]
    return None


@dataclass
class DiscoverObserved:
    """Whether the host is mapped, and what the compute API says of its service."""

    host: str
    cell: str | None
    service: str | None  #: "up", "down", "missing", or None (not asked / no cloud known)
    #: A separate compute node: its nova.conf has no API database (the guide's compute
    #: section), so mapping it is the controller's job; this node waits for its service.
    separate: bool = False


class DiscoverHostsStep(Step[DiscoverObserved]):
    """The compute host registered (service up) and mapped to a cell."""

    name = "compute.discover_hosts"
    phase = "discover"

    def __init__(self, site: Site, timeout: float | None = None) -> None:
        self.site = site
        self.timeout = float(site.discover_timeout if timeout is None else timeout)
        self.description = "compute host registered and mapped to a cell (discover_hosts)"

    # -- observations ------------------------------------------------------------

    def _cloud(self, ctx: RunContext) -> Any:
        name = admin_cloud_name(self.site)
        if name is False:
            return None
        cloud = name if isinstance(name, str) else None
        # The same key as the controller plugin's: one connection (and token) per run.
        key = f"openstacksdk:{cloud or '<env>'}"
        if key not in ctx.cache:
            from novaconsole.cloud import connect

            ctx.cache[key] = connect(cloud)
        return ctx.cache[key]

    def service_state(self, ctx: RunContext, host: str) -> str | None:
        """ "up"/"down"/"missing" for nova-compute on ``host``; None without an admin cloud."""
        conn = self._cloud(ctx)
        if conn is None:
            return None
        from novaconsole.cloud import describe_failure

        try:
            services = list(conn.compute.services(binary="nova-compute", host=host))
        except Exception as exc:  # openstacksdk/keystoneauth failures become one line
            # The mapping alone proves registration (discover_hosts maps only compute
            # nodes nova-compute created); the API's view is a bonus, not a requirement.
            ctx.note(
                "compute service state not checked: "
                + describe_failure(exc, "compute service list").one_line()
            )
            return None
        services = [s for s in services if s.host == host and s.binary == "nova-compute"]
        if not services:
            return "missing"
        return "up" if any(s.state == "up" for s in services) else "down"

    def mapped_cell(self, ctx: RunContext, host: str) -> str | None:
        if not self.site.nova_conf.exists() and ctx.dry_run:
            return None
        return host_mapping(api_db_url(self.site.nova_conf), host)

    def separate_node(self) -> bool:
        """Whether this node's nova.conf lacks the API database (a compute node of its own)."""
        conf = self.site.nova_conf
        return conf.exists() and not IniDocument.load(conf).get("api_database", "connection")

    def check(self, ctx: RunContext) -> DiscoverObserved:
        """The mapping only (milliseconds): a mapped host was registered when it was mapped.

        The compute API's view of the service (its heartbeats) is asked while mapping,
        in :meth:`apply`; on later runs that liveness is ``novaconsole verify``'s job, and
        a re-run stays fast (the first compute API call of a run costs seconds here).
        """
        host = facts_for(ctx, self.site).compute_host
        if self.separate_node():
            if admin_cloud_name(self.site) is False:
                raise ConfigError(
                    f"{self.site.nova_conf} has no [api_database] connection (a separate "
                    f"compute node) and no admin cloud is known: cannot tell whether "
                    f"{host} registered",
                    hint="set os_cloud in the site file (or OS_CLOUD), or run nova-manage "
                    "cell_v2 discover_hosts on the controller",
                )
            return DiscoverObserved(host, None, self.service_state(ctx, host), separate=True)
        try:
            cell = self.mapped_cell(ctx, host)
        except (ConnectionFailure, ConfigError):
            if not ctx.dry_run:
                raise
            cell = None  # dry run before the controller's nova.conf or database exists
        return DiscoverObserved(host, cell, None)

    def plan(self, ctx: RunContext, observed: DiscoverObserved) -> list[str]:
        if observed.separate:
            if observed.service in ("up", None):
                return []
            return [
                f"wait for nova-compute on {observed.host} to register and report up "
                "(the controller then maps it: nova-manage cell_v2 discover_hosts)"
            ]
        if observed.cell is not None:
            return []
        return [f"map compute host {observed.host} to a cell (nova-manage cell_v2 discover_hosts)"]

    # -- action ------------------------------------------------------------------

    def discover(self, ctx: RunContext) -> None:
        """One run of ``nova-manage cell_v2 discover_hosts --verbose`` (output logged)."""
        argv = [
            str(nova_binary(self.site, "nova-manage")),
            "--config-file",
            str(self.site.nova_conf),
            "cell_v2",
            "discover_hosts",
            "--verbose",
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        secrets = self.site.secrets.values()
        for line in proc.stdout.splitlines():
            if line.strip():
                ctx.log(f"  {scrub_secrets(line.strip(), secrets)}")
        # 2: a concurrent run mapped the same host first; the next check sees the mapping.
        if proc.returncode not in (0, 2):
            tail = scrub_secrets(" ".join((proc.stdout + proc.stderr).split())[-300:], secrets)
            raise StepFailed(
                f"nova-manage cell_v2 discover_hosts failed (exit {proc.returncode}) "
                f"with {self.site.nova_conf}: {tail}"
            )

    def _log(self) -> Path:
        return keeper_for(self.site).log_dir / "nova-compute.log"

    def _timeout(self, host: str, service: str | None) -> StepFailed:
        log = self._log()
        if service == "missing":
            what = f"nova-compute on host {host!r} did not register within {self.timeout:.0f} s"
        elif service == "down":
            what = (
                f"nova-compute on host {host!r} is registered but down after {self.timeout:.0f} s"
            )
        else:
            what = (
                f"compute host {host!r} is not mapped to any cell after {self.timeout:.0f} s "
                "of nova-manage cell_v2 discover_hosts (the guide's 'Host is not mapped to "
                "any cell' trap): nova-compute has not created its compute node"
            )
        error = last_error_line(log)
        return StepFailed(
            f"{what}; see {log}" + (f"; last error: {error}" if error else ""),
            hint="check nova-compute's log (AMQP unreachable, privsep, libvirt), then run "
            "nova-manage cell_v2 discover_hosts --verbose",
        )

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        host = facts_for(ctx, self.site).compute_host
        deadline = time.monotonic() + self.timeout
        if self.separate_node():
            service = self.service_state(ctx, host)
            while service not in (None, "up"):
                if time.monotonic() > deadline:
                    raise self._timeout(host, service)
                time.sleep(POLL)
                service = self.service_state(ctx, host)
            ctx.note(
                f"compute host {host} is up; map it to a cell from the controller: "
                "nova-manage cell_v2 discover_hosts (or [scheduler] "
                "discover_hosts_in_cells_interval there)"
            )
            return
        if admin_cloud_name(self.site) is False:
            ctx.note(
                "no admin cloud known (os_cloud, OS_CLOUD, OS_AUTH_URL): "
                "compute service state not checked, only its cell mapping"
            )
        service = self.service_state(ctx, host)
        cell = self.mapped_cell(ctx, host)
        while cell is None:
            # discover_hosts maps compute nodes; with a cloud, wait for the service first
            # (a cheap API call) instead of starting nova-manage (~10 s) in vain.
            if service in (None, "up"):
                self.discover(ctx)
                cell = self.mapped_cell(ctx, host)
                if cell is not None:
                    break
            if time.monotonic() > deadline:
                raise self._timeout(host, service)
            time.sleep(POLL)
            service = self.service_state(ctx, host)
        ctx.log(f"  compute host {host} is mapped to cell {cell}")
        while service not in (None, "up"):
            if time.monotonic() > deadline:
                raise self._timeout(host, service)
            time.sleep(POLL)
            service = self.service_state(ctx, host)
