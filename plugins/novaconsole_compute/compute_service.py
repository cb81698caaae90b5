"""nova-compute kept running (systemd or supervisord), restarted when its configuration changes.

nova-compute reads nova.conf and then nova-compute.conf (its per-driver ``state_path``).
The program's environment carries a digest of both files, so a changed file changes the
service's definition and the keeper restarts it; an unchanged one leaves
it running (a re-run changes nothing). With libvirt, nova-compute never exits on SIGTERM
(its libvirt event thread never ends), so the grace period is short and SIGKILL follows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from novaconsole.errors import StepFailed
from novaconsole.iniconf import IniDocument
from novaconsole.services import ServiceSpec
from novaconsole.steps import RunContext, Step
from novaconsole_compute.runtime import (
    compute_conf_path,
    config_digest,
    facts_for,
    keeper_for,
    nova_binary,
)

if TYPE_CHECKING:
    from novaconsole.site import Site

PROGRAM = "nova-compute"
#: Environment variable holding the digest of nova-compute's config files.
DIGEST_ENV = "NOVACONSOLE_CONFIG_DIGEST"
#: Seconds between SIGTERM and SIGKILL (libvirt's nova-compute ignores SIGTERM).
STOP_WAIT = 5

#: Options nova-compute cannot work without, and who provides them in nova.conf.
_REQUIRED = (
    ("DEFAULT", "transport_url", "the message queue (nova-compute talks to nova-conductor)"),
    ("placement", "auth_url", "Placement (nova-compute reports its resources there)"),
)


def compute_spec(site: Site) -> ServiceSpec:
    """How the service keeper runs nova-compute for ``site`` (with the current config digest)."""
    nova_conf = site.nova_conf
    overlay = compute_conf_path(site)
    return ServiceSpec(
        name=PROGRAM,
        argv=(
            str(nova_binary(site, "nova-compute")),
            "--config-file",
            str(nova_conf),
            "--config-file",
            str(overlay),
        ),
        env={DIGEST_ENV: config_digest(nova_conf, overlay)},
        stop_signal="TERM",
        stop_wait=STOP_WAIT,
    )


def missing_required(site: Site) -> list[str]:
    """Options nova-compute needs that nova.conf lacks, as "[section] option (why)"."""
    doc = IniDocument.load(site.nova_conf)
    return [
        f"[{section}] {option} ({why})"
        for section, option, why in _REQUIRED
        if not doc.get(section, option)
    ]


@dataclass
class ComputeServiceObserved:
    """Whether nova-compute's program is as wanted and running."""

    pending: bool
    installed: bool
    state: str | None
    noun: str = "service"


class NovaComputeStep(Step[ComputeServiceObserved]):
    """nova-compute running with the current nova.conf."""

    name = "compute.nova_compute"
    phase = "services"

    def __init__(self, site: Site) -> None:
        self.site = site
        self.description = f"nova-compute running with {site.nova_conf}"

    def check(self, ctx: RunContext) -> ComputeServiceObserved:
        facts_for(ctx, self.site)  # a bad driver/virt_type wish fails before anything runs
        keeper = keeper_for(self.site)
        spec = compute_spec(self.site)
        state = keeper.status().get(PROGRAM)
        return ComputeServiceObserved(
            pending=bool(keeper.pending([spec])),
            installed=keeper.is_installed(PROGRAM),
            state=state.state if state else None,
            noun=keeper.noun,
        )

    def plan(self, ctx: RunContext, observed: ComputeServiceObserved) -> list[str]:
        if observed.pending and observed.installed:
            return ["restart nova-compute (its command or configuration files changed)"]
        if observed.pending:
            return [f"install {observed.noun} nova-compute and start it"]
        if observed.state != "RUNNING":
            return [f"start nova-compute (now {observed.state or 'not running'})"]
        return []

    def apply(self, ctx: RunContext, changes: list[str]) -> None:
        missing = missing_required(self.site)
        if missing:
            raise StepFailed(
                f"{self.site.nova_conf} has no {missing[0]}: nova-compute cannot work",
                hint="provision the controller's nova.conf options first (role controller), "
                "or add them by hand on a separate compute node",
            )
        keeper = keeper_for(self.site)
        changed = keeper.install([compute_spec(self.site)])
        state = keeper.status().get(PROGRAM)
        restart = [PROGRAM] if not changed and state and state.state != "RUNNING" else []
        keeper.apply(restart=restart)

    def verify(self, ctx: RunContext) -> None:
        keeper_for(self.site).wait_running([PROGRAM], timeout=60)
        super().verify(ctx)
