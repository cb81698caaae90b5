"""``novaconsole verify``: the install guide's "Verify operation" as one command.

Four built-in checks (compute services up, catalog endpoints, an active image, a hypervisor
up and mapped to a cell) plus any that plugins return from ``novaconsole_verify_checks``
run concurrently on threads over one authenticated connection. Each check is split into
a fetch (API calls) and a pure ``evaluate_*`` function over plain rows, so the judgement
is testable on observed data without a cloud.
"""

from __future__ import annotations

import argparse
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novaconsole.cloud import connect, default_cloud_name, describe_failure
from novaconsole.errors import EXIT_CHECK_FAILED, EXIT_OK, ConfigError, NovaconsoleError
from novaconsole.output import emit_json, render_table

#: Service types the guide's ``openstack catalog list`` step expects.
REQUIRED_SERVICE_TYPES: tuple[str, ...] = ("identity", "image", "compute", "placement")
#: Binaries the guide expects in ``openstack compute service list``.
REQUIRED_BINARIES: tuple[str, ...] = ("nova-conductor", "nova-scheduler", "nova-compute")

Row = Mapping[str, Any]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: a verdict, one line for people, and the facts behind it."""

    name: str
    ok: bool
    summary: str
    #: What was observed (JSON-serialisable), so ``-f json`` can be compared with other tools.
    facts: Mapping[str, Any] = field(default_factory=dict)
    #: Wall time of the check, filled in by the runner.
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The result as plain JSON-ready data."""
        return {
            "name": self.name,
            "ok": self.ok,
            "summary": self.summary,
            "duration_s": round(self.duration_s, 3),
            "facts": dict(self.facts),
        }


@dataclass(frozen=True)
class Check:
    """A named check: ``run(conn)`` gets an authenticated openstacksdk ``Connection``.

    ``run`` may raise; the runner turns any exception into a failed :class:`CheckResult`
    with a one-line message, so one broken check never hides the others.
    """

    name: str
    run: Callable[[Any], CheckResult]
    description: str = ""


@dataclass(frozen=True)
class VerifyReport:
    """All check results of one ``verify`` run."""

    cloud: str
    results: tuple[CheckResult, ...]
    elapsed_s: float
    #: Where the time went: ``connect`` (SDK import + cloud config), ``auth``, ``checks``.
    phases_s: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return all(r.ok for r in self.results)

    def as_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return {
            "cloud": self.cloud,
            "ok": self.ok,
            "elapsed_s": round(self.elapsed_s, 3),
            "phases_s": {k: round(v, 3) for k, v in self.phases_s.items()},
            "checks": [r.as_dict() for r in self.results],
        }


# -- pure evaluation over observed rows ---------------------------------------------------


def _service_label(row: Row) -> str:
    return f"{row.get('binary')}@{row.get('host')}"


def evaluate_compute_services(rows: Sequence[Row]) -> CheckResult:
    """Every compute service is up, and the guide's three binaries are all registered.

    ``rows`` are ``os-services`` entries with ``binary``, ``host``, ``zone``, ``status``
    and ``state`` keys (what ``openstack compute service list`` shows).
    """
    name = "compute-services"
    facts: dict[str, Any] = {"services": [dict(r) for r in rows]}
    problems: list[str] = []
    down = [_service_label(r) for r in rows if r.get("state") != "up"]
    if down:
        problems.append(f"not up: {', '.join(down)}")
    present = {r.get("binary") for r in rows}
    missing = [b for b in REQUIRED_BINARIES if b not in present]
    if missing:
        problems.append(f"not registered: {', '.join(missing)}")
    facts["down"] = down
    facts["missing_binaries"] = missing
    if problems:
        return CheckResult(name, False, "; ".join(problems), facts)
    labels = ", ".join(_service_label(r) for r in rows)
    return CheckResult(name, True, f"{len(rows)} up: {labels}", facts)


def evaluate_catalog(entries: Sequence[Row], interface: str = "public") -> CheckResult:
    """The token's catalog has an ``interface`` endpoint for each required service type.

    ``entries`` are keystone catalog entries (``type``, ``name``, ``endpoints`` with
    ``interface``, ``region`` and ``url``), as ``openstack catalog list`` shows them.
    """
    name = "catalog"
    by_type: dict[str, list[Row]] = {}
    for entry in entries:
        by_type.setdefault(str(entry.get("type")), []).extend(entry.get("endpoints") or [])
    endpoints = [
        {
            "type": str(entry.get("type")),
            "name": entry.get("name"),
            "interface": ep.get("interface"),
            "region": ep.get("region") or ep.get("region_id"),
            "url": ep.get("url"),
        }
        for entry in entries
        for ep in entry.get("endpoints") or []
    ]
    missing = [t for t in REQUIRED_SERVICE_TYPES if not by_type.get(t)]
    no_interface = [
        t
        for t in REQUIRED_SERVICE_TYPES
        if by_type.get(t) and not any(ep.get("interface") == interface for ep in by_type[t])
    ]
    facts: dict[str, Any] = {
        "service_types": sorted(by_type),
        "endpoints": endpoints,
        "missing": missing,
        "interface": interface,
        "missing_interface": no_interface,
    }
    problems = []
    if missing:
        problems.append(f"no endpoint for: {', '.join(missing)}")
    if no_interface:
        problems.append(f"no {interface} endpoint for: {', '.join(no_interface)}")
    if problems:
        return CheckResult(name, False, "; ".join(problems), facts)
    summary = ", ".join(
        f"{t} {next(ep['url'] for ep in endpoints if ep['type'] == t and ep['interface'] == interface)}"
        for t in REQUIRED_SERVICE_TYPES
    )
    return CheckResult(name, True, summary, facts)


def evaluate_images(rows: Sequence[Row]) -> CheckResult:
    """At least one image is ``active`` (rows: ``id``, ``name``, ``status``)."""
    name = "images"
    active = [r for r in rows if r.get("status") == "active"]
    facts = {"images": [dict(r) for r in rows], "active": len(active)}
    if not rows:
        return CheckResult(name, False, "no image visible to this project", facts)
    if not active:
        states = ", ".join(f"{r.get('name') or r.get('id')} ({r.get('status')})" for r in rows)
        return CheckResult(name, False, f"no active image: {states}", facts)
    names = ", ".join(str(r.get("name") or r.get("id")) for r in active)
    return CheckResult(name, True, f"{len(active)} of {len(rows)} active: {names}", facts)


def evaluate_hypervisors(
    hypervisors: Sequence[Row], services: Sequence[Row] | None = None
) -> CheckResult:
    """At least one hypervisor is up and mapped to a cell; no up nova-compute is unmapped.

    ``os-hypervisors`` only lists compute nodes whose host has a host mapping: the API
    looks each node's service up through ``HostMapping.get_by_host`` and skips the node
    on ``HostMappingNotFound`` (nova/api/openstack/compute/hypervisors.py
    ``_get_hypervisors`` and ``target_host_cell`` in nova/compute/api.py). So a listed
    hypervisor is mapped, and its ``state`` is its compute service's liveness. A
    nova-compute service that is up but has no listed hypervisor is the guide's "host is
    not mapped to any cell" trap (``os-services`` reads every cell, mapped or not).

    ``hypervisors`` rows: ``id``, ``hostname``, ``host`` (service host), ``type``,
    ``host_ip``, ``state``, ``status``; ``services`` rows as for
    :func:`evaluate_compute_services`.
    """
    name = "hypervisors"
    up = [h for h in hypervisors if h.get("state") == "up"]
    mapped_hosts = {h.get("host") for h in hypervisors} | {h.get("hostname") for h in hypervisors}
    unmapped = sorted(
        str(s.get("host"))
        for s in services or ()
        if s.get("binary") == "nova-compute"
        and s.get("state") == "up"
        and s.get("host") not in mapped_hosts
    )
    facts: dict[str, Any] = {
        "hypervisors": [dict(h) for h in hypervisors],
        "up": len(up),
        "unmapped_compute_hosts": unmapped,
    }
    hint = "run `nova-manage cell_v2 discover_hosts`"
    problems = []
    if not hypervisors:
        problems.append("no hypervisor listed (no compute host is mapped to a cell)")
    elif not up:
        down = ", ".join(str(h.get("hostname")) for h in hypervisors)
        problems.append(f"no hypervisor up: {down}")
    if unmapped:
        problems.append(f"nova-compute up but not mapped to any cell: {', '.join(unmapped)}")
    if problems:
        if not hypervisors or unmapped:
            problems.append(hint)
        return CheckResult(name, False, "; ".join(problems), facts)
    labels = ", ".join(f"{h.get('hostname')} ({h.get('type') or '?'})" for h in up)
    return CheckResult(
        name, True, f"{len(up)} of {len(hypervisors)} up and mapped: {labels}", facts
    )


# -- fetching (API calls) -----------------------------------------------------------------


def evaluate_networking(
    agents: Sequence[Row], networks: Sequence[Row], *, in_catalog: bool = True
) -> CheckResult:
    """Neutron's agents (or OVN's controllers, which Neutron lists as agents) alive, and a
    network a server can use (ACTIVE, up, with a subnet)."""
    if not in_catalog:
        return CheckResult(
            "networking", True, "not applicable: no network service in the catalog", {}
        )
    dead = [f"{a['type']}@{a['host']}" for a in agents if not a["alive"]]
    usable = [n["name"] for n in networks if n["status"] == "ACTIVE" and n["subnets"] and n["up"]]
    facts = {"agents": list(agents), "usable_networks": usable}
    if not agents:
        return CheckResult(
            "networking",
            False,
            "Neutron reports no agents or OVN controllers: nothing wires ports "
            "(API server only, or its mechanism driver is down)",
            facts,
        )
    if dead:
        return CheckResult("networking", False, f"agents not alive: {', '.join(dead)}", facts)
    if not usable:
        return CheckResult(
            "networking", False, "no usable network (ACTIVE, up, with a subnet)", facts
        )
    return CheckResult(
        "networking",
        True,
        f"{len(agents)} agents alive; {len(usable)} usable networks ({', '.join(usable[:3])})",
        facts,
    )


def agent_rows(agents: Iterable[Any]) -> list[dict[str, Any]]:
    return [{"type": a.agent_type, "host": a.host, "alive": bool(a.is_alive)} for a in agents]


def network_rows(networks: Iterable[Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": n.name,
            "status": n.status,
            "up": bool(n.is_admin_state_up),
            "subnets": list(n.subnet_ids or []),
        }
        for n in networks
    ]


def service_rows(services: Iterable[Any]) -> list[dict[str, Any]]:
    """openstacksdk ``compute.Service`` resources as the rows the evaluators take."""
    return [
        {
            "id": s.id,
            "binary": s.binary,
            "host": s.host,
            "zone": s.availability_zone,
            "status": s.status,
            "state": s.state,
        }
        for s in services
    ]


def hypervisor_rows(hypervisors: Iterable[Any]) -> list[dict[str, Any]]:
    """openstacksdk ``compute.Hypervisor`` resources (detailed) as evaluator rows."""
    return [
        {
            "id": h.id,
            "hostname": h.name,
            "host": (h.service_details or {}).get("host"),
            "type": h.hypervisor_type,
            "host_ip": h.host_ip,
            "state": h.state,
            "status": h.status,
        }
        for h in hypervisors
    ]


def image_rows(images: Iterable[Any]) -> list[dict[str, Any]]:
    """openstacksdk ``image.Image`` resources as evaluator rows."""
    return [{"id": i.id, "name": i.name, "status": i.status} for i in images]


class _Observations:
    """Per-run memo of API reads, so two checks needing the service list share one call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: list[dict[str, Any]] | None = None

    def services(self, conn: Any) -> list[dict[str, Any]]:
        with self._lock:  # the second caller waits for the first one's answer
            if self._services is None:
                self._services = service_rows(conn.compute.services())
            return self._services


def _catalog_interface(conn: Any) -> str:
    value = conn.config.get_interface()
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value or "public")


def builtin_checks() -> list[Check]:
    """The guide's four checks (a fresh set per run: they share a memo of API reads)."""
    seen = _Observations()

    def compute_services(conn: Any) -> CheckResult:
        return evaluate_compute_services(seen.services(conn))

    def catalog(conn: Any) -> CheckResult:
        access = conn.session.auth.get_access(conn.session)
        return evaluate_catalog(access.service_catalog.catalog, _catalog_interface(conn))

    def images(conn: Any) -> CheckResult:
        return evaluate_images(image_rows(conn.image.images()))

    def hypervisors(conn: Any) -> CheckResult:
        # Services first (shared with the other check): nova-api validates a new token
        # with Keystone once and caches it, so the hypervisor list that follows is quick,
        # where two concurrent first requests would each pay for a validation.
        services = seen.services(conn)
        rows = hypervisor_rows(conn.compute.hypervisors(details=True))
        return evaluate_hypervisors(rows, services)

    def networking(conn: Any) -> CheckResult:
        access = conn.session.auth.get_access(conn.session)
        types = {entry.get("type") for entry in access.service_catalog.catalog}
        if "network" not in types:
            return evaluate_networking([], [], in_catalog=False)
        return evaluate_networking(
            agent_rows(conn.network.agents()), network_rows(conn.network.networks())
        )

    return [
        Check("compute-services", compute_services, "every nova service is up"),
        Check("catalog", catalog, "identity, image, compute, placement endpoints"),
        Check("images", images, "at least one active image"),
        Check("hypervisors", hypervisors, "a hypervisor up and mapped to a cell"),
        Check("networking", networking, "Neutron's agents alive and a usable network"),
    ]


_UNREACHABLE_URL = re.compile(r"Unable to establish connection to (\S+?):? ")


def _failure_line(exc: Exception, what: str) -> str:
    """One line for a failed check; names the URL when a service could not be reached."""
    line = describe_failure(exc, what).one_line()
    match = _UNREACHABLE_URL.search(str(exc))
    if line.endswith("cannot connect") and match:
        line += f" to {match.group(1)}"
    return line


def _run_one(check: Check, conn: Any) -> CheckResult:
    start = time.perf_counter()
    try:
        result = check.run(conn)
    except NovaconsoleError as exc:
        result = CheckResult(check.name, False, exc.one_line())
    except Exception as exc:  # a check's failure is a verdict, not a crash
        result = CheckResult(check.name, False, _failure_line(exc, check.name))
    duration = time.perf_counter() - start
    return CheckResult(check.name, result.ok, result.summary, result.facts, duration)


def run_checks(conn: Any, checks: Sequence[Check]) -> list[CheckResult]:
    """Run ``checks`` concurrently on threads; results in the order of ``checks``."""
    if not checks:
        return []
    with ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="verify") as pool:
        return list(pool.map(lambda c: _run_one(c, conn), checks))


def authenticate(conn: Any, where: str) -> None:
    """Get a token (and catalog) up front, so auth failures are exit 2, not check failures."""
    try:
        conn.session.auth.get_access(conn.session)
    except Exception as exc:
        raise describe_failure(exc, where) from exc


def agents_config_path() -> Path:
    """The console's agents.toml (:func:`novaconsole.agents.paths.console_config_path`)."""
    from novaconsole.agents.paths import console_config_path

    return console_config_path()


def agent_checks() -> list[Check]:
    """``compute-agents`` where agents are configured (their config file exists), else none.

    Imported lazily: without agents, verify never loads the bus (pika, cryptography).
    """
    if not agents_config_path().exists():
        return []
    from novaconsole.agents.checks import agents_check

    return [agents_check()]


def collect_checks(plugin_manager: Any | None) -> list[Check]:
    """Built-in checks, then plugins' (``novaconsole_verify_checks``), names unique."""
    checks = builtin_checks()
    checks.extend(agent_checks())
    if plugin_manager is not None:
        for contributed in plugin_manager.hook.novaconsole_verify_checks():
            checks.extend(contributed or ())
    names = [c.name for c in checks]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"verify checks with the same name: {', '.join(duplicates)}")
    return checks


def verify(
    cloud: str | None, *, timeout: float = 15.0, plugin_manager: Any | None = None
) -> VerifyReport:
    """Connect to ``cloud``, authenticate, and run every check concurrently."""
    if not timeout > 0:
        raise ConfigError(f"verify: --timeout must be a positive number of seconds, not {timeout}")
    start = time.perf_counter()
    name = default_cloud_name(cloud)
    # Before connecting: a check may start work of its own that overlaps the SDK's import
    # and the login (compute-agents reads the agent bus meanwhile).
    checks = collect_checks(plugin_manager)
    try:
        conn = connect(name, fallback_to_lab=True, timeout=timeout)
    except NovaconsoleError:
        raise
    except Exception as exc:  # e.g. keystoneauth's MissingRequiredOptions for bare OS_*
        raise describe_failure(exc, f"cloud {name or 'from OS_* environment'!r}") from exc
    label = name or ("OS_* environment" if conn.config.name == "envvars" else conn.config.name)
    auth_url = (conn.config.get_auth_args() or {}).get("auth_url")
    where = f"cloud {label!r}" + (f" (auth URL {auth_url})" if auth_url else "")
    connected = time.perf_counter()
    authenticate(conn, where)
    authenticated = time.perf_counter()
    results = run_checks(conn, checks)
    done = time.perf_counter()
    phases = {
        "connect": connected - start,
        "auth": authenticated - connected,
        "checks": done - authenticated,
    }
    return VerifyReport(label, tuple(results), done - start, phases)


def render_report(report: VerifyReport) -> str:
    """The table form: one row per check, then a one-line verdict."""
    rows = [
        {"check": r.name, "result": "PASS" if r.ok else "FAIL", "summary": r.summary}
        for r in report.results
    ]
    failed = sum(not r.ok for r in report.results)
    verdict = (
        f"cloud {report.cloud!r}: {len(report.results) - failed} passed, {failed} failed "
        f"in {report.elapsed_s:.2f} s"
    )
    return render_table(rows, ["check", "result", "summary"]) + "\n\n" + verdict


def run_verify_command(args: argparse.Namespace) -> int:
    """``novaconsole verify``: exit 0 all pass, 1 a check failed, 2 usage/connection error."""
    # keystoneauth and the SDK warn through logging; unconfigured, Python's last-resort
    # handler would print those warnings next to our one-line error. A NullHandler stops
    # that and still lets records propagate to any handler the application configured.
    for logger_name in ("keystoneauth", "openstack"):
        logging.getLogger(logger_name).addHandler(logging.NullHandler())
    report = verify(
        args.os_cloud,
        timeout=args.timeout,
        plugin_manager=getattr(args, "plugin_manager", None),
    )
    if args.format == "json":
        emit_json(report.as_dict())
    else:
        print(render_report(report))
    return EXIT_OK if report.ok else EXIT_CHECK_FAILED
