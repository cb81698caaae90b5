"""nova-compute under a real supervisord (in a temporary directory, not the lab's).

nova-compute here is the real one from the lab venv, with the fake driver and a message
queue that does not answer: it starts and keeps waiting for nova-conductor, which is all
the supervisor needs to show, start, leave alone and restart it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from compute_helpers import context

from novaconsole.lab.venvs import Venv
from novaconsole.services import Supervisor
from novaconsole.site import Site
from novaconsole.steps import Status, run_step
from novaconsole_compute.compute_service import (
    DIGEST_ENV,
    PROGRAM,
    NovaComputeStep,
    compute_spec,
    missing_required,
)
from novaconsole_compute.runtime import compute_conf_path, keeper_for

SECRET = "Rabbit-S3cret-never-shown"
NOVA_CONF = f"""\
[DEFAULT]
transport_url = rabbit://openstack:{SECRET}@127.0.0.1:1/
compute_driver = fake.FakeDriver
host = node1-fake

[placement]
auth_url = http://127.0.0.1:1/identity
"""


def _write_conf(site: Site, text: str = NOVA_CONF) -> None:
    site.nova_conf.parent.mkdir(parents=True, exist_ok=True)
    site.nova_conf.write_text(text)
    compute_conf_path(site).write_text(f"[DEFAULT]\nstate_path = {site.state_path}\n")
    site.state_path.mkdir(parents=True, exist_ok=True)


def test_spec_reads_both_files_and_carries_no_secret(site: Site) -> None:
    assert site.nova_bin_dir is not None
    (site.nova_bin_dir / "nova-compute").write_text("")
    _write_conf(site)
    spec = compute_spec(site)
    assert spec.argv[1:] == (
        "--config-file",
        str(site.nova_conf),
        "--config-file",
        str(compute_conf_path(site)),
    )
    assert spec.stop_signal == "TERM"
    assert spec.stop_wait <= 10  # libvirt's nova-compute ignores SIGTERM: SIGKILL soon
    assert SECRET not in " ".join(spec.argv) + " ".join(spec.env.values())
    before = spec.env[DIGEST_ENV]
    site.nova_conf.write_text(NOVA_CONF + "\n[compute]\nx = 1\n")
    assert compute_spec(site).env[DIGEST_ENV] != before


def test_missing_queue_is_diagnosed_in_one_line(site: Site) -> None:
    assert site.nova_bin_dir is not None
    (site.nova_bin_dir / "nova-compute").write_text("")
    _write_conf(site, "[DEFAULT]\nhost = x\n")
    assert missing_required(site)[0].startswith("[DEFAULT] transport_url")
    result = run_step(NovaComputeStep(site), context(site, driver="fake"))
    assert result.status is Status.FAILED
    assert result.error is not None
    assert "\n" not in result.error
    assert str(site.nova_conf) in result.error
    assert "transport_url" in result.error


@pytest.fixture
def real_site(site: Site, lab_venvs: dict[str, Venv]) -> Iterator[Site]:
    """The temporary site with the lab venv's real nova-compute and supervisord."""
    bin_dir = lab_venvs["openstack"].bin
    site.nova_bin_dir = bin_dir
    site.supervisor_bin_dir = bin_dir
    _write_conf(site)
    yield site
    supervisor = Supervisor(site.services_dir, bin_dir)
    assert supervisor.stop_all(timeout=30) == []


def _pid(supervisor: Supervisor) -> int | None:
    state = supervisor.status().get(PROGRAM)
    return state.pid if state else None


def test_started_left_alone_and_restarted_on_change(real_site: Site) -> None:
    site = real_site
    step = NovaComputeStep(site)
    supervisor = keeper_for(site)
    assert isinstance(supervisor, Supervisor)  # no systemd as PID 1 on the test machine

    dry = run_step(step, context(site, driver="fake", dry_run=True))
    assert dry.status is Status.PLANNED
    assert supervisor.daemon_pid() is None  # a dry run starts nothing

    started = run_step(step, context(site, driver="fake"))
    assert started.status is Status.CHANGED, started.error
    first = _pid(supervisor)
    assert first is not None
    cmdline = Path(f"/proc/{first}/cmdline").read_bytes().decode()
    assert "nova-compute" in cmdline
    assert SECRET not in cmdline

    again = run_step(step, context(site, driver="fake"))
    assert again.status is Status.OK, again.changes
    assert _pid(supervisor) == first

    site.nova_conf.write_text(NOVA_CONF + "\n[compute]\ncpu_allocation_ratio = 2.0\n")
    restarted = run_step(step, context(site, driver="fake"))
    assert restarted.status is Status.CHANGED, restarted.error
    assert restarted.changes == [
        "restart nova-compute (its command or configuration files changed)"
    ]
    second = _pid(supervisor)
    assert second is not None
    assert second != first

    # Stopped behind our back: the next run starts it again.
    supervisor.ctl("stop", PROGRAM)
    deadline = time.monotonic() + 30
    while _pid(supervisor) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    revived = run_step(step, context(site, driver="fake"))
    assert revived.status is Status.CHANGED, revived.error
    assert revived.changes[0].startswith("start nova-compute")
