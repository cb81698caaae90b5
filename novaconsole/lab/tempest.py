"""tempest, OpenStack's own API test suite, as the lab's acceptance test.

``novaconsole lab tempest [REGEX]`` installs tempest into a venv of its own (on demand,
never by ``lab up``), writes ``tempest.conf`` from what the lab itself says it is (its
settings and secrets file, its catalog, images, flavors, agents and ``nova.conf``), keeps
a tempest workspace under the lab's state directory and runs ``tempest run`` (stestr).

Which tests run is chosen here, not inside stestr: the selection (a regex, or an include
list under ``tempest-lists/``) is listed by tempest, the exclude list (one regex and its
reason per line) is applied by us, each excluded test is reported with its reason, and
what is left is handed to ``tempest run --load-list``. So nothing is dropped silently.

The admin password reaches tempest only inside ``tempest.conf`` (0600, in the 0700 state
directory), never on a command line or in our output.
"""

from __future__ import annotations

import configparser
import io
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keystoneauth1 import exceptions as ka
from openstack import exceptions as sdk

from novaconsole.errors import ConfigError, ConnectionFailure, NovaconsoleError
from novaconsole.fileutil import atomic_write
from novaconsole.iniconf import IniDocument
from novaconsole.lab.config import LabConfig, load_or_create_secrets
from novaconsole.lab.guest import GUEST_FLAVOR, GUEST_IMAGE
from novaconsole.lab.stack.finish import TEST_FLAVOR, TEST_IMAGE
from novaconsole.lab.venvs import Venv, ensure_venv, on_demand_venvs

#: What an API call to the lab can raise (the lab restarting, a service failing).
API_ERRORS = (ka.ClientException, sdk.SDKException)

LISTS_DIR = Path(__file__).resolve().parent / "tempest-lists"
#: The selections ``--selection`` names: include lists, one regex per line.
SELECTIONS = ("ci", "long")
EXCLUDE_LIST = LISTS_DIR / "exclude.txt"

#: The lab's images and flavors tempest boots (``lab up`` makes them). Servers boot the
#: blank test disk (it fits both flavors: tempest boots ``image_ref`` on the alternate
#: flavor too) on ``nc.small``; rebuilds go to the lab's real guest, a distinct image (or
#: tempest skips its rebuild checks) that needs 128 MB, i.e. ``nc.small`` again. The blank
#: disk prints nothing on the serial console, so console-output tests are excluded.
IMAGE = TEST_IMAGE
IMAGE_ALT = GUEST_IMAGE
FLAVOR = GUEST_FLAVOR
FLAVOR_ALT = TEST_FLAVOR
#: Prefix of everything tempest names (its default); the leftover check looks for it.
PREFIX = "tempest"


@dataclass
class LabFacts:
    """What the lab has, as tempest needs to be told it."""

    identity_uri: str
    region: str
    admin_password: str = field(repr=False)
    services: set[str]
    compute_versions: tuple[str, str]
    placement_versions: tuple[str, str] | None
    image_ref: str
    image_ref_alt: str
    flavor_ref: str
    flavor_ref_alt: str
    hypervisors: int
    hypervisor_type: str
    #: Neutron can create networks and ports that servers get (alive agents/controllers).
    networking: bool
    networking_why: str
    metadata_agent: bool = False
    public_network_id: str | None = None
    public_network_name: str | None = None
    network_extensions: list[str] = field(default_factory=list)
    resize_to_same_host: bool = False
    config_drive: bool = False
    enabled_filters: str | None = None


def _versions(doc: dict[str, Any], key: str = "version") -> tuple[str, str]:
    """``(min, max)`` microversion from a version document (Nova's or Placement's)."""
    version = doc.get(key) or {}
    if isinstance(version, list):
        version = version[0] if version else {}
    low = version.get("min_version") or "1.0"
    high = version.get("version") or version.get("max_version") or low
    return str(low), str(high)


def gather_facts(config: LabConfig, conn: Any) -> LabFacts:
    """Ask the running lab (through ``conn``, its admin connection) what it has."""
    secrets = load_or_create_secrets(config.secrets_file, write=False)
    catalog = conn.service_catalog
    services = {str(s.get("type")) for s in catalog}

    def find(kind: str, finder: Callable[[str], Any], name: str) -> str:
        found = finder(name)
        if found is None:
            raise ConfigError(
                f"the lab in {config.state_dir} has no {kind} {name!r}",
                hint="`novaconsole lab up` creates it",
            )
        return str(found.id)

    compute_doc = conn.compute.get("/").json()
    placement: tuple[str, str] | None = None
    if "placement" in services:
        placement = _versions(conn.placement.get("/").json(), "versions")
    hypervisors = list(conn.compute.hypervisors(details=True))

    facts = LabFacts(
        identity_uri=config.url("keystone", "/v3"),
        region=config.region,
        admin_password=secrets["ADMIN_PASS"],
        services=services,
        compute_versions=_versions(compute_doc),
        placement_versions=placement,
        image_ref=find("image", conn.image.find_image, IMAGE),
        image_ref_alt=find("image", conn.image.find_image, IMAGE_ALT),
        flavor_ref=find("flavor", conn.compute.find_flavor, FLAVOR),
        flavor_ref_alt=find("flavor", conn.compute.find_flavor, FLAVOR_ALT),
        hypervisors=len(hypervisors),
        hypervisor_type=str(getattr(hypervisors[0], "hypervisor_type", "") or "QEMU")
        if hypervisors
        else "QEMU",
        networking=False,
        networking_why="Neutron is not in the lab's catalog",
    )
    if "network" in services:
        agents = list(conn.network.agents())
        alive = [a for a in agents if a.is_alive and a.is_admin_state_up]
        facts.networking = bool(alive)
        facts.networking_why = (
            f"{len(alive)} Neutron agent(s) alive: "
            + ", ".join(sorted({str(a.agent_type) for a in alive}))
            if alive
            else "Neutron answers but no agent or OVN controller is alive (API only)"
        )
        facts.metadata_agent = any("metadata" in str(a.agent_type).lower() for a in alive)
        facts.network_extensions = sorted(str(e.alias) for e in conn.network.extensions())
        external = list(conn.network.networks(is_router_external=True))
        if facts.networking and external:
            facts.public_network_id = str(external[0].id)
            facts.public_network_name = str(external[0].name)

    nova_conf = config.etc / "nova" / "nova.conf"
    if nova_conf.exists():
        doc = IniDocument.load(nova_conf)
        facts.resize_to_same_host = (
            doc.get("DEFAULT", "allow_resize_to_same_host") or ""
        ).lower() == "true"
        facts.enabled_filters = doc.get("filter_scheduler", "enabled_filters")
        mkisofs = doc.get("DEFAULT", "mkisofs_cmd") or "genisoimage"
        facts.config_drive = shutil.which(mkisofs) is not None
    return facts


def _flag(value: bool) -> str:
    return "true" if value else "false"


def render_conf(facts: LabFacts, workspace: Path) -> str:
    """``tempest.conf`` for the lab, each flag saying what the lab really has."""
    multinode = facts.hypervisors >= 2
    resize = multinode or facts.resize_to_same_host
    low, high = facts.compute_versions
    conf: dict[str, dict[str, str]] = {
        "DEFAULT": {
            "log_dir": str(workspace / "logs"),
            "log_file": "tempest.log",
            "debug": "false",
            # tempest's own list of what it created, for `tempest cleanup --resource-list`.
            "record_resources": "true",
            "resource_name_prefix": PREFIX,
        },
        "oslo_concurrency": {"lock_path": str(workspace / "tempest_lock")},
        "auth": {
            "use_dynamic_credentials": "true",
            "create_isolated_networks": _flag(facts.networking),
            "admin_username": "admin",
            "admin_project_name": "admin",
            "admin_password": facts.admin_password,
            "admin_domain_name": "Default",
            "admin_user_domain_name": "Default",
            "admin_project_domain_name": "Default",
        },
        "identity": {
            "uri_v3": facts.identity_uri,
            "auth_version": "v3",
            "region": facts.region,
            "v3_endpoint_type": "public",
            "admin_role": "admin",
            "default_domain_id": "default",
        },
        "identity-feature-enabled": {"api_v2": "false", "api_v3": "true"},
        "service-clients": {"http_timeout": "60"},
        "compute": {
            "image_ref": facts.image_ref,
            "image_ref_alt": facts.image_ref_alt,
            "flavor_ref": facts.flavor_ref,
            "flavor_ref_alt": facts.flavor_ref_alt,
            "min_compute_nodes": str(facts.hypervisors),
            "hypervisor_type": facts.hypervisor_type,
            "min_microversion": low,
            "max_microversion": high,
            "endpoint_type": "public",
            "region": facts.region,
            # TCG guests on 2 shared cores: a boot can take a while under load.
            "build_timeout": "300",
        },
        "compute-feature-enabled": {
            # Moving a server needs a second host (or allow_resize_to_same_host).
            "resize": _flag(resize),
            "cold_migration": _flag(multinode),
            "live_migration": _flag(multinode),
            "block_migration_for_live_migration": _flag(multinode),
            "shelve_migrate": _flag(multinode),
            "console_output": "true",
            "vnc_console": "true",
            "serial_console": "true",
            "spice_console": "false",
            "pause": "true",
            "suspend": "true",
            "shelve": "true",
            "snapshot": "true",
            "rescue": "true",
            # Setting a guest's password needs the QEMU guest agent; the lab's images have none.
            "change_password": "false",
            "config_drive": _flag(facts.config_drive),
            "interface_attach": _flag(facts.networking),
            "metadata_service": _flag(facts.networking and facts.metadata_agent),
            # Volumes: the lab has no Cinder.
            "attach_encrypted_volume": "false",
            "swap_volume": "false",
            "volume_multiattach": "false",
            "volume_backed_live_migration": "false",
        },
        "image": {"region": facts.region, "endpoint_type": "public"},
        "network": {
            "region": facts.region,
            "endpoint_type": "public",
            "project_network_cidr": "10.100.0.0/16",
            "project_network_mask_bits": "28",
        },
        "network-feature-enabled": {
            "floating_ips": _flag(facts.public_network_id is not None),
            "api_extensions": ",".join(facts.network_extensions) or "none",
        },
        "placement": {"region": facts.region, "endpoint_type": "public"},
        # The lab's guests run no sshd: tempest checks the API's answers, not a login.
        "validation": {"run_validation": "false"},
        "service_available": {
            "nova": _flag("compute" in facts.services),
            "glance": _flag("image" in facts.services),
            "neutron": _flag("network" in facts.services and facts.networking),
            "cinder": _flag("volumev3" in facts.services or "block-storage" in facts.services),
            "swift": _flag("object-store" in facts.services),
            "horizon": "false",
        },
    }
    if facts.placement_versions:
        conf["placement"]["min_microversion"] = facts.placement_versions[0]
        conf["placement"]["max_microversion"] = facts.placement_versions[1]
    if facts.public_network_id:
        conf["network"]["public_network_id"] = facts.public_network_id
        conf["network"]["floating_network_name"] = facts.public_network_name or ""
    if facts.enabled_filters:
        conf["compute-feature-enabled"]["scheduler_enabled_filters"] = facts.enabled_filters
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_dict(conf)
    out = io.StringIO()
    out.write(
        "# Written by `novaconsole lab tempest` from the lab's own facts; rewritten each run.\n"
        f"# Networking: {facts.networking_why}.\n"
    )
    parser.write(out)
    return out.getvalue()


@dataclass(frozen=True)
class Exclusion:
    """One exclude-list line: a regex and why the tests it matches cannot pass here."""

    pattern: re.Pattern[str]
    reason: str


def read_list(path: Path) -> list[tuple[re.Pattern[str], str]]:
    """An include or exclude list: ``regex  # comment`` lines (stestr's format)."""
    entries: list[tuple[re.Pattern[str], str]] = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read tempest list {path}: {exc.strerror}") from exc
    for number, raw in enumerate(lines, 1):
        regex, _, comment = raw.partition("#")
        regex = regex.strip()
        if not regex:
            continue
        try:
            entries.append((re.compile(regex), comment.strip()))
        except re.error as exc:
            raise ConfigError(f"{path}:{number}: bad regex {regex!r}: {exc}") from exc
    return entries


def read_exclusions(path: Path = EXCLUDE_LIST) -> list[Exclusion]:
    """The exclude list; every entry must say why (an entry without a reason is an error)."""
    exclusions = []
    for pattern, reason in read_list(path):
        if not reason:
            raise ConfigError(f"{path}: {pattern.pattern!r} has no reason (add `# why`)")
        exclusions.append(Exclusion(pattern, reason))
    return exclusions


def select(
    test_ids: Iterable[str], exclusions: list[Exclusion]
) -> tuple[list[str], dict[str, list[str]]]:
    """Split ``test_ids`` into those to run and, per reason, those excluded."""
    run: list[str] = []
    excluded: dict[str, list[str]] = {}
    for test_id in test_ids:
        hit = next((e for e in exclusions if e.pattern.search(test_id)), None)
        if hit is None:
            run.append(test_id)
        else:
            excluded.setdefault(hit.reason, []).append(test_id)
    return run, excluded


_TOTAL = re.compile(r"^\s*-\s*(Passed|Failed|Skipped|Expected Fail|Unexpected Success):\s*(\d+)")
_RESULT = re.compile(
    r"^\{\d+\}\s+(?P<id>\S+(?: \([^)]*\))?).*\.\.\.\s+(?P<status>ok|FAILED|SKIPPED)"
)


@dataclass
class TempestRun:
    """What a tempest run did."""

    selected: int = 0
    excluded: dict[str, list[str]] = field(default_factory=dict)
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    #: tempest's own skips (a feature flag, a microversion range), per reason.
    skips: dict[str, list[str]] = field(default_factory=dict)
    exit_code: int = 0
    seconds: float = 0.0
    log: str = ""
    leftovers: dict[str, list[str]] = field(default_factory=dict)

    def summary(self) -> str:
        n_excluded = sum(len(v) for v in self.excluded.values())
        return (
            f"tempest: {self.passed} passed, {self.failed} failed, {self.skipped} skipped"
            f" ({self.selected} run, {n_excluded} excluded; {self.seconds:.0f} s)"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "skipped": self.skipped,
            "selected": self.selected,
            "excluded": self.excluded,
            "failures": self.failures,
            "skips": self.skips,
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 1),
            "log": self.log,
            "left_behind": self.leftovers,
        }


def parse_output(lines: Iterable[str], run: TempestRun) -> None:
    """Counts from tempest's closing "Totals" block, failed tests from its trace lines."""
    for line in lines:
        total = _TOTAL.match(line)
        if total:
            kind, count = total.group(1), int(total.group(2))
            if kind == "Passed":
                run.passed = count
            elif kind == "Failed":
                run.failed = count
            elif kind == "Skipped":
                run.skipped = count
            continue
        result = _RESULT.match(line)
        if result and result.group("status") == "FAILED":
            run.failures.append(result.group("id"))
        elif result and result.group("status") == "SKIPPED":
            reason = line.split("... SKIPPED:", 1)[-1].strip() or "no reason given"
            run.skips.setdefault(reason, []).append(result.group("id"))


class Workspace:
    """The lab's tempest workspace: ``<state>/tempest/workspace`` (``tempest init``)."""

    def __init__(self, config: LabConfig, venv: Venv) -> None:
        self.config = config
        self.venv = venv
        self.root = config.state_dir / "tempest"
        self.path = self.root / "workspace"
        self.conf = self.path / "etc" / "tempest.conf"

    @property
    def tempest(self) -> str:
        return str(self.venv.bin / "tempest")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["PATH"] = f"{self.venv.bin}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def init(self) -> None:
        """``tempest init`` once (it refuses a directory that is not empty)."""
        if (self.path / ".stestr.conf").exists():
            return
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.path.exists():
            shutil.rmtree(self.path)  # a half-made workspace from an interrupted init
        argv = [
            self.tempest,
            "init",
            "--workspace-path",
            str(self.root / "workspace.yaml"),
            "--name",
            "novaconsole-lab",
            str(self.path),
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env(), check=False)
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise NovaconsoleError(f"tempest init {self.path} failed: {detail}")

    def write_conf(self, facts: LabFacts) -> None:
        atomic_write(self.conf, render_conf(facts, self.path), mode=0o600)

    def list_tests(self, *, regex: str | None, include: Path | None) -> list[str]:
        argv = [self.tempest, "run", "--config-file", str(self.conf), "--list-tests"]
        if regex:
            argv += ["--regex", regex]
        if include:
            argv += ["--include-list", str(include)]
        proc = subprocess.run(
            argv, cwd=self.path, capture_output=True, text=True, env=self.env(), check=False
        )
        if proc.returncode != 0:
            detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise NovaconsoleError(f"listing tempest's tests failed: {detail}")
        return sorted(line for line in proc.stdout.splitlines() if line.startswith("tempest."))

    def run(self, test_ids: list[str], *, workers: int, echo: Callable[[str], None]) -> TempestRun:
        """``tempest run --load-list`` on ``test_ids``; its output to a log and ``echo``."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        load_list = self.path / "logs" / f"selected-{stamp}.txt"
        atomic_write(load_list, "".join(f"{t}\n" for t in test_ids))
        log_path = self.path / "logs" / f"run-{stamp}.log"
        argv = [
            self.tempest,
            "run",
            "--config-file",
            str(self.conf),
            "--load-list",
            str(load_list),
            "--concurrency",
            str(workers),
        ]
        result = TempestRun(selected=len(test_ids), log=str(log_path))
        started = time.monotonic()
        lines: list[str] = []
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                argv,
                cwd=self.path,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=self.env(),
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                lines.append(line.rstrip("\n"))
                echo(line.rstrip("\n"))
            result.exit_code = proc.wait()
        result.seconds = time.monotonic() - started
        parse_output(lines, result)
        return result

    def cleanup(self) -> str:
        """``tempest cleanup --resource-list``: delete what tempest recorded creating (only
        that: never another user's resources on a shared lab)."""
        if not (self.path / "resource_list.json").exists():
            return "nothing recorded"
        argv = [self.tempest, "cleanup", "--config-file", str(self.conf), "--resource-list"]
        proc = subprocess.run(
            argv, cwd=self.path, capture_output=True, text=True, env=self.env(), check=False
        )
        with (self.path / "logs" / "cleanup.log").open("a") as log:
            log.write(proc.stdout + proc.stderr)
        return "ok" if proc.returncode == 0 else f"exit {proc.returncode}"


def lab_connection(config: LabConfig) -> Any:
    """An admin connection to the lab in ``config`` from its own secrets file (not from
    clouds.yaml, which names whichever lab ran ``lab up`` last)."""
    import openstack.connection

    secrets = load_or_create_secrets(config.secrets_file, write=False)
    return openstack.connection.Connection(
        auth_url=config.url("keystone", "/v3"),
        username="admin",
        password=secrets["ADMIN_PASS"],
        project_name="admin",
        user_domain_name="Default",
        project_domain_name="Default",
        region_name=config.region,
        identity_api_version="3",
        api_timeout=60,
    )


#: What the leftover check looks at, in the order a sweep deletes it.
KINDS = ("servers", "routers", "networks", "security_groups", "projects", "users")


def tempest_resources(conn: Any) -> dict[str, dict[str, str]]:
    """Per kind, ``{id: name}`` of everything whose name has tempest's prefix."""

    def named(items: Iterable[Any]) -> dict[str, str]:
        return {str(i.id): str(i.name) for i in items if str(i.name or "").startswith(f"{PREFIX}-")}

    projects = {str(p.id): str(p.name) for p in conn.identity.projects()}
    found = {
        "servers": named(conn.compute.servers(all_projects=True)),
        "projects": {i: n for i, n in projects.items() if n.startswith(f"{PREFIX}-")},
        "users": named(conn.identity.users()),
        "routers": {},
        "networks": {},
        "security_groups": {},
    }
    if conn.has_service("network"):
        found["routers"] = named(conn.network.routers())
        found["networks"] = named(conn.network.networks())
        # A project's default group outlives the project when tempest's clean-up of it
        # fails: orphans (their project gone, or one of tempest's) count as its own.
        found["security_groups"] = {
            str(g.id): f"{g.name} of project {g.project_id}"
            for g in conn.network.security_groups()
            if g.project_id not in projects or projects[g.project_id].startswith(f"{PREFIX}-")
        }
    return found


def new_resources(
    now: dict[str, dict[str, str]], before: dict[str, dict[str, str]]
) -> dict[str, dict[str, str]]:
    """What appeared since ``before``: tempest's own, created by this run."""
    return {
        kind: {i: n for i, n in now.get(kind, {}).items() if i not in before.get(kind, {})}
        for kind in KINDS
        if set(now.get(kind, {})) - set(before.get(kind, {}))
    }


def wait_for_leftovers(
    conn: Any, before: dict[str, dict[str, str]], timeout: float = 90.0
) -> dict[str, dict[str, str]]:
    """What tempest created in this run and is still there after ``timeout`` (a delete it
    asked for may take a few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            left = new_resources(tempest_resources(conn), before)
        except API_ERRORS as exc:
            if time.monotonic() > deadline:
                raise ConnectionFailure(
                    f"listing resources after tempest's run failed: {' '.join(str(exc).split())}"
                ) from exc
            left = {"unknown": {}}
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(3)


def sweep(conn: Any, left: dict[str, dict[str, str]], log: Callable[[str], None]) -> None:
    """Delete what a run left behind (servers first: their ports hold the networks)."""

    def attempt(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **kwargs)
        except API_ERRORS as exc:
            log(f"deleting {what} failed: {' '.join(str(exc).split())[:200]}")

    compute, network, identity = conn.compute, conn.network, conn.identity
    servers = left.get("servers", {})
    for server_id in servers:
        attempt(f"server {server_id}", compute.delete_server, server_id, ignore_missing=True)
    for server_id in servers:
        server = compute.find_server(server_id, all_projects=True)
        if server is not None:
            attempt(f"server {server_id}", compute.wait_for_delete, server, wait=120)
    for router_id in left.get("routers", {}):
        router = network.get_router(router_id)
        for port in network.ports(device_id=router_id):
            for ip in port.fixed_ips or []:
                what = f"router {router_id}'s interface"
                subnet = ip["subnet_id"]
                attempt(what, network.remove_interface_from_router, router, subnet_id=subnet)
        attempt(f"router {router_id}", network.delete_router, router_id)
    for network_id in left.get("networks", {}):
        for port in network.ports(network_id=network_id):
            attempt(f"port {port.id}", network.delete_port, port.id)
        attempt(f"network {network_id}", network.delete_network, network_id)
    for group_id in left.get("security_groups", {}):
        attempt(f"security group {group_id}", network.delete_security_group, group_id)
    for project_id in left.get("projects", {}):
        if conn.has_service("network"):
            for group in network.security_groups(project_id=project_id):
                attempt(f"security group {group.id}", network.delete_security_group, group.id)
        attempt(f"project {project_id}", identity.delete_project, project_id)
    for user_id in left.get("users", {}):
        attempt(f"user {user_id}", identity.delete_user, user_id)


def _describe(left: dict[str, dict[str, str]]) -> str:
    return "; ".join(f"{kind}: {', '.join(sorted(names.values()))}" for kind, names in left.items())


def run_lab_tempest(
    config: LabConfig,
    *,
    regex: str | None,
    selection: str | None,
    list_only: bool,
    workers: int,
    use_excludes: bool = True,
    log: Callable[[str], None],
    echo: Callable[[str], None],
) -> TempestRun:
    """Configure tempest from the lab, select, run, clean up; the run's result."""
    if not config.ready_file.exists():
        raise ConfigError(
            f"the lab in {config.state_dir} is not up (no READY file)",
            hint="`novaconsole lab up` first",
        )
    if selection is not None and selection not in SELECTIONS:
        raise ConfigError(f"--selection {selection!r}: choose one of {', '.join(SELECTIONS)}")
    if regex and selection:
        raise ConfigError("give a REGEX or --selection, not both")
    if not 1 <= workers <= 8:
        raise ConfigError(f"--workers {workers}: give 1 to 8")
    include = None if regex else LISTS_DIR / f"{selection or 'ci'}.txt"
    exclusions = read_exclusions() if use_excludes else []

    venv = on_demand_venvs(config.venvs_dir)["tempest"]
    if not venv.is_current():
        log(f"installing tempest into {venv.path}")
    ensure_venv(venv, log_path=config.state_dir / "logs" / "install.log")
    workspace = Workspace(config, venv)
    workspace.init()
    conn = lab_connection(config)
    try:
        facts = gather_facts(config, conn)
    except API_ERRORS as exc:
        raise ConnectionFailure(
            f"asking the lab at {config.url('keystone')} for its facts failed: "
            f"{' '.join(str(exc).split())[:200]}",
            hint="`novaconsole lab status`",
        ) from exc
    workspace.write_conf(facts)
    log(f"wrote {workspace.conf} (networking: {facts.networking_why})")

    listed = workspace.list_tests(regex=regex, include=include)
    to_run, excluded = select(listed, exclusions)
    result = TempestRun(selected=len(to_run), excluded=excluded)
    for reason, ids in sorted(excluded.items()):
        log(f"excluded {len(ids)}: {reason}")
    if list_only:
        for test_id in to_run:
            echo(test_id)
        return result
    if not to_run:
        raise ConfigError(
            f"no tempest test matches {regex!r}" if regex else f"{include} selects no test"
        )
    before = tempest_resources(conn)
    ran = workspace.run(to_run, workers=workers, echo=echo)
    ran.excluded = excluded
    for reason, ids in sorted(ran.skips.items()):
        log(f"tempest skipped {len(ids)}: {reason}")
    log(f"cleanup (tempest cleanup --resource-list): {workspace.cleanup()}")
    try:
        left = wait_for_leftovers(conn, before)
    except ConnectionFailure as exc:
        # The run's results stand; that nothing was left behind could not be checked.
        log(f"could not check what tempest left behind: {exc.one_line()}")
        ran.exit_code = ran.exit_code or 1
        return ran
    if left:
        # A run must not leave anything on a shared lab: what has tempest's prefix and
        # appeared during the run is its own. Delete it, say so, and fail the run.
        log(f"tempest left behind (deleting it): {_describe(left)}")
        ran.leftovers = {kind: sorted(names.values()) for kind, names in left.items()}
        sweep(conn, left, log)
        still = wait_for_leftovers(conn, before, timeout=30)
        if still:
            log(f"still there after deleting: {_describe(still)}")
        ran.exit_code = ran.exit_code or 1
    return ran
