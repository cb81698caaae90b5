"""The guide's "finalize installation": the Nova controller services started and kept running.

nova-api (the ``nova.wsgi.osapi_compute`` WSGI app under gunicorn), nova-conductor,
nova-scheduler and nova-novncproxy, each with ``--config-file NOVA_CONF`` and a log file of
its own, kept running by systemd units or supervisord (:mod:`novaconsole.services`). The step
restarts the services when nova.conf changed since they were started (a digest of the file
is recorded with each start), refuses a port that something else holds, and re-running
changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime
import filecmp
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novaconsole.errors import ConfigError, NovaconsoleError, StepFailed
from novaconsole.fileutil import atomic_write
from novaconsole.iniconf import IniDocument
from novaconsole.redact import scrub_secrets
from novaconsole.services import (
    ServiceKeeper,
    ServiceSpec,
    ServiceState,
    choose_service_manager,
    keeper_for_site,
    port_owner,
    wsgi_service,
)
from novaconsole.site import Site
from novaconsole.steps import RunContext, Step
from novaconsole_controller.novaconf import nova_conf_digest
from novaconsole_controller.schema import nova_manage_path, query_rows

SERVICE_NAMES = ("nova-api", "nova-conductor", "nova-scheduler", "nova-novncproxy")
#: Run as well when the site enables Nova's serial console.
SERIAL_PROXY = "nova-serialproxy"
#: Run as well when the site serves Nova's metadata API (``Site.metadata_api``).
METADATA_API = "nova-metadata-api"
API = "nova-api"
#: How long services get to be RUNNING and to answer on their ports.
START_TIMEOUT = 120.0


def service_names(site: Site) -> tuple[str, ...]:
    """The controller services this site runs."""
    serial = (SERIAL_PROXY,) if site.serial_console else ()
    metadata = (METADATA_API,) if site.metadata_api else ()
    return (*SERVICE_NAMES, *serial, *metadata)


def nova_bin_dir(site: Site) -> Path:
    """Where nova's commands are (``site.nova_bin_dir`` or next to nova-manage on PATH)."""
    return site.nova_bin_dir or nova_manage_path(site).parent


def keeper_for(site: Site) -> ServiceKeeper:
    """The service keeper of the controller services (shared with other owners).

    supervisord comes from the venv nova runs from when the site does not say where.
    """
    if (
        site.supervisor_bin_dir is None
        and site.nova_bin_dir is None
        and choose_service_manager(site.service_manager, site.services_dir) == "supervisord"
    ):
        site = dataclasses.replace(site, supervisor_bin_dir=nova_bin_dir(site))
    return keeper_for_site(site)


def paste_ini_source(site: Site) -> Path:
    """nova's ``api-paste.ini`` shipped in the venv (``<prefix>/etc/nova/api-paste.ini``)."""
    bin_dir = nova_bin_dir(site)
    for candidate in (
        bin_dir.parent / "etc" / "nova" / "api-paste.ini",
        Path("/usr/share/nova/api-paste.ini"),
        Path("/etc/nova/api-paste.ini"),
    ):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"nova's api-paste.ini not found under {bin_dir.parent / 'etc' / 'nova'}")


def service_specs(site: Site, *, write_shim: bool) -> list[ServiceSpec]:
    """The four controller services. ``write_shim=False`` (dry runs) writes nothing."""
    bin_dir = nova_bin_dir(site)
    conf = str(site.nova_conf)
    if (
        not (site.novnc_web / "vnc.html").is_file()
        and not (site.novnc_web / "vnc_auto.html").is_file()
    ):
        raise ConfigError(
            f"noVNC web files not found in {site.novnc_web} (nova-novncproxy needs them)",
            hint="install the Debian package novnc or set novnc_web in the site file",
        )
    shim_dir = site.services_dir / "wsgi"
    env = {
        "OS_NOVA_CONFIG_DIR": str(site.nova_conf.parent),
        "OS_NOVA_CONFIG_FILES": f"api-paste.ini;{site.nova_conf.name}",
    }

    def wsgi(name: str, module: str, port: int) -> ServiceSpec:
        if write_shim:
            return wsgi_service(
                name,
                module=module,
                port=port,
                bin_dir=bin_dir,
                shim_dir=shim_dir,
                env=env,
                host=site.my_ip,
            )
        # wsgi_service writes its shim module; build the same spec in a scratch directory
        # and point it at the real one, so a dry run leaves no file behind.
        with tempfile.TemporaryDirectory() as scratch:
            spec = wsgi_service(
                name,
                module=module,
                port=port,
                bin_dir=bin_dir,
                shim_dir=Path(scratch),
                env=env,
                host=site.my_ip,
            )
            argv = tuple(str(shim_dir) if a == scratch else a for a in spec.argv)
            return dataclasses.replace(spec, argv=argv)

    api = wsgi(API, "nova.wsgi.osapi_compute", site.nova_api_port)
    metadata = [wsgi(METADATA_API, "nova.wsgi.metadata", site.metadata_port)]
    serial = [
        ServiceSpec(
            SERIAL_PROXY,
            (str(bin_dir / "nova-serialproxy"), "--config-file", conf),
            port=site.serialproxy_port,
        )
    ]
    return [
        api,
        ServiceSpec("nova-conductor", (str(bin_dir / "nova-conductor"), "--config-file", conf)),
        ServiceSpec("nova-scheduler", (str(bin_dir / "nova-scheduler"), "--config-file", conf)),
        ServiceSpec(
            "nova-novncproxy",
            (
                str(bin_dir / "nova-novncproxy"),
                "--config-file",
                conf,
                "--web",
                str(site.novnc_web),
            ),
            port=site.novncproxy_port,
        ),
        *(serial if site.serial_console else []),
        *(metadata if site.metadata_api else []),
    ]


@dataclass
class ServicesObserved:
    """Program files that differ, program states, and whether nova.conf changed."""

    pending: list[str]
    states: dict[str, ServiceState]
    conf_changed: bool
    paste_ini_stale: bool
    not_running: list[str] = field(default_factory=list)
    noun: str = "service"


class NovaServicesStep(Step[ServicesObserved]):
    """Keep nova-api, nova-conductor, nova-scheduler and nova-novncproxy running (and
    nova-serialproxy where the site enables the serial console)."""

    name = "controller.services"
    phase = "services"

    def __init__(self, site: Site) -> None:
        self.site = site
        self.description = ", ".join(service_names(site)) + " running"
        self.digest_file = site.services_dir / "controller-nova-conf.sha256"

    @property
    def paste_ini(self) -> Path:
        return self.site.nova_conf.parent / "api-paste.ini"

    def _recorded_digest(self) -> str | None:
        try:
            return self.digest_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def check(self, ctx: RunContext) -> ServicesObserved:
        specs = service_specs(self.site, write_shim=False)
        keeper = keeper_for(self.site)
        states = keeper.status()
        names = service_names(self.site)
        not_running = [n for n in names if n not in states or states[n].state != "RUNNING"]
        for spec in specs:
            if spec.port and spec.name in not_running and port_owner(self.site.my_ip, spec.port):
                raise StepFailed(
                    f"port {spec.port} on {self.site.my_ip} is already taken by another "
                    f"process ({spec.name} needs it)"
                )
        source = paste_ini_source(self.site)
        stale = not self.paste_ini.is_file() or not filecmp.cmp(source, self.paste_ini, False)
        current = nova_conf_digest(self.site.nova_conf)
        return ServicesObserved(
            pending=keeper.pending(specs),
            states=states,
            conf_changed=current is not None and current != self._recorded_digest(),
            paste_ini_stale=stale,
            not_running=not_running,
            noun=keeper.noun,
        )

    def plan(self, ctx: RunContext, observed: ServicesObserved) -> list[str]:
        changes = []
        if observed.paste_ini_stale:
            changes.append(f"copy nova's api-paste.ini to {self.paste_ini}")
        changes += [f"write {observed.noun} {name}" for name in observed.pending]
        start = [n for n in observed.not_running if n not in observed.pending]
        if start:
            changes.append(f"start {', '.join(start)}")
        running = [
            n
            for n in service_names(self.site)
            if n not in observed.not_running and n not in observed.pending
        ]
        if (observed.conf_changed or observed.paste_ini_stale) and running:
            changes.append(f"restart {', '.join(running)} (nova.conf changed since they started)")
        return changes

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        observed = self.check(ctx)
        if observed.paste_ini_stale:
            shutil.copyfile(paste_ini_source(self.site), self.paste_ini)
        specs = service_specs(self.site, write_shim=True)
        keeper = keeper_for(self.site)
        digest = nova_conf_digest(self.site.nova_conf)
        changed = keeper.install(specs)
        restart = []
        if observed.conf_changed or observed.paste_ini_stale:
            restart = [
                n for n in service_names(self.site) if n not in changed and n in observed.states
            ]
        # Not running but configured (stopped, FATAL): start them again.
        restart += [
            n
            for n in observed.not_running
            if n in observed.states and n not in changed and n not in restart
        ]
        started = datetime.datetime.now(datetime.UTC).replace(tzinfo=None, microsecond=0)
        try:
            keeper.apply(restart=restart)
            keeper.wait_running(service_names(self.site), timeout=START_TIMEOUT)
        except NovaconsoleError as exc:
            raise StepFailed(f"{self.name}: {exc.one_line()}") from None
        self._wait_healthy(keeper, specs, started)
        if digest is not None:
            atomic_write(self.digest_file, digest + "\n", mode=0o600)
        ctx.log(f"{self.name}: kept running by {keeper.describe()}")

    def _log_hint(self, name: str) -> str:
        """The last error line of a service's log (scrubbed), and where the log is."""
        log = self.site.services_dir / "logs" / f"{name}.log"
        try:
            lines = log.read_text(errors="replace").splitlines()[-200:]
        except OSError:
            lines = []
        errors = [ln for ln in lines if " ERROR " in ln or "Error" in ln]
        last = scrub_secrets(errors[0], self.site.secrets.values())[-220:] if errors else ""
        return f"{last + '; ' if last else ''}see {log}"

    def _wait_healthy(
        self, keeper: ServiceKeeper, specs: list[ServiceSpec], started: datetime.datetime
    ) -> None:
        """Ports answer, and conductor/scheduler reported themselves in the services table.

        nova takes ~10 s to import, longer than the keepers' start windows, so a service
        that dies on start-up (bad credentials, no broker) shows up only here.
        """
        deadline = time.monotonic() + START_TIMEOUT
        waiting = {spec.name for spec in specs}
        main_url = IniDocument.load(self.site.nova_conf).get("database", "connection")
        while waiting:
            states = keeper.status()
            for name in sorted(waiting):
                state = states.get(name)
                if state is None or state.state in ("BACKOFF", "FATAL", "EXITED", "STOPPED"):
                    raise StepFailed(
                        f"{name} is {state.state if state else 'missing'}: {self._log_hint(name)}"
                    )
            for spec in specs:
                answering = spec.port is not None and port_owner(self.site.my_ip, spec.port)
                if spec.name in waiting and answering:
                    waiting.discard(spec.name)
            reported = _reported_since(main_url, started) if main_url else set()
            waiting -= reported
            if not waiting:
                return
            if time.monotonic() > deadline:
                name = sorted(waiting)[0]
                raise StepFailed(
                    f"{name} did not come up within {START_TIMEOUT:.0f}s: {self._log_hint(name)}"
                )
            time.sleep(1.0)


def _reported_since(main_url: str, since: datetime.datetime) -> set[str]:
    """Binaries (nova-conductor, nova-scheduler) whose service record is newer than ``since``."""
    rows = query_rows(
        main_url,
        "SELECT `binary`, created_at, updated_at FROM services WHERE deleted = 0 "
        "AND `binary` IN ('nova-conductor', 'nova-scheduler')",
    )
    found: set[str] = set()
    for binary, created, updated in rows or []:
        stamps = [_as_datetime(v) for v in (created, updated) if v]
        if any(s is not None and s >= since - datetime.timedelta(seconds=2) for s in stamps):
            found.add(str(binary))
    return found


def _as_datetime(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None)
    try:
        return datetime.datetime.fromisoformat(str(value)).replace(tzinfo=None)
    except ValueError:
        return None


def service_steps(site: Site) -> list[Step[Any]]:
    """The services step (systemd units where systemd runs, else supervisord)."""
    return [NovaServicesStep(site)]
