"""The compute options in nova.conf: planned, applied, idempotent, and nothing else touched."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from compute_helpers import context, make_facts

from novaconsole.iniconf import IniDocument
from novaconsole.site import Site
from novaconsole.steps import Status, run_step
from novaconsole_compute.novaconf import (
    PRIVSEP_SECTIONS,
    ComputeConfStep,
    compute_options,
    novncproxy_base_url,
    serialproxy_base_url,
    vnc_server_listen,
)

# What the controller plugin (and an operator) put in the same nova.conf.
CONTROLLER_TEXT = """\
[DEFAULT]
# an operator's comment stays
enabled_apis = osapi_compute,metadata
transport_url = rabbit://openstack:S3cret-Rabbit@127.0.0.1:5672/
my_ip = 127.0.0.1
state_path = /var/lib/nova

[vnc]
enabled = true
server_listen = $my_ip
novncproxy_port = 6080

[api_database]
connection = sqlite:////tmp/nova_api.sqlite
"""


def test_options_for_libvirt(site: Site) -> None:
    wanted = compute_options(site, make_facts(site, "libvirt", "qemu"), "HELPER")
    assert wanted["DEFAULT"] == {"compute_driver": "libvirt.LibvirtDriver", "host": "node1"}
    assert wanted["libvirt"] == {
        "virt_type": "qemu",
        "cpu_mode": "host-model",
        "cpu_model_extra_flags": "-arch-capabilities",
    }
    assert wanted["vnc"]["novncproxy_base_url"] == "http://127.0.0.1:6080/vnc_auto.html"
    for section in PRIVSEP_SECTIONS:
        assert wanted[section] == {"helper_command": "HELPER"}


def test_options_for_fake(site: Site) -> None:
    wanted = compute_options(site, make_facts(site, "fake"), "HELPER")
    assert wanted["DEFAULT"]["compute_driver"] == "fake.FakeDriver"
    assert wanted["DEFAULT"]["host"] == "node1-fake"
    assert "libvirt" not in wanted


def test_cpu_mode_can_be_left_to_nova(site: Site) -> None:
    site.libvirt_cpu_mode = ""
    wanted = compute_options(site, make_facts(site), "HELPER")
    assert wanted["libvirt"] == {"virt_type": "kvm"}


def test_site_nova_options_win_and_old_names_count(site: Site) -> None:
    site.nova_options = {
        "vnc": {"vncserver_listen": "10.0.0.31"},
        "libvirt": {"cpu_mode": "host-passthrough"},
        "glance": {"api_servers": "http://x:9292"},  # not ours: left to the controller
    }
    wanted = compute_options(site, make_facts(site), "HELPER")
    assert wanted["vnc"]["server_listen"] == "10.0.0.31"
    assert wanted["libvirt"]["cpu_mode"] == "host-passthrough"
    assert "glance" not in wanted


def test_vnc_listen_and_proxy_url() -> None:
    all_in_one = Site(controller_host="127.0.0.1", my_ip="127.0.0.1")
    assert vnc_server_listen(all_in_one) == "127.0.0.1"
    compute_node = Site(controller_host="controller", my_ip="10.0.0.31")
    assert vnc_server_listen(compute_node) == "0.0.0.0"  # the guide's compute node
    assert novncproxy_base_url(compute_node) == "http://controller:6080/vnc_auto.html"
    assert novncproxy_base_url(Site(controller_host="fd00::1")).startswith("http://[fd00::1]:")


def test_plan_apply_idempotent_and_preserving(site: Site) -> None:
    site.nova_conf.parent.mkdir(parents=True)
    site.nova_conf.write_text(CONTROLLER_TEXT)
    step = ComputeConfStep(site)

    dry = run_step(step, context(site, dry_run=True))
    assert dry.status is Status.PLANNED
    assert site.nova_conf.read_text() == CONTROLLER_TEXT  # a dry run changes nothing
    assert not Path(site.state_path).exists()
    assert "nova.conf: set [libvirt] virt_type = kvm" in dry.changes

    done = run_step(step, context(site))
    assert done.status is Status.CHANGED, done.error
    assert done.changes == dry.changes

    doc = IniDocument.load(site.nova_conf)
    assert doc.get("DEFAULT", "compute_driver") == "libvirt.LibvirtDriver"
    assert doc.get("DEFAULT", "host") == "node1"
    assert doc.get("vnc", "server_proxyclient_address") == "127.0.0.1"
    helper = doc.get("nova_sys_admin", "helper_command")
    assert helper == f"{site.nova_bin_dir}/privsep-helper --config-file {site.nova_conf}"
    # The controller's keys and the operator's comment are all still there.
    text = site.nova_conf.read_text()
    for line in CONTROLLER_TEXT.splitlines():
        if line and "server_listen" not in line:
            assert line in text
    assert stat.S_IMODE(site.nova_conf.stat().st_mode) == 0o640
    overlay = IniDocument.load(site.nova_conf.with_name("nova-compute.conf"))
    assert overlay.get("DEFAULT", "state_path") == str(site.state_path)
    assert (site.state_path / "instances").is_dir()

    again = run_step(step, context(site))
    assert again.status is Status.OK
    assert again.changes == []


def test_plans_never_show_secrets(site: Site) -> None:
    site.nova_conf.parent.mkdir(parents=True)
    site.nova_conf.write_text(CONTROLLER_TEXT)
    result = run_step(ComputeConfStep(site), context(site))
    assert "S3cret-Rabbit" not in " ".join(result.changes)


def test_switching_driver_changes_host_and_state_path(site: Site) -> None:
    step = ComputeConfStep(site)
    assert run_step(step, context(site, driver="libvirt")).status is Status.CHANGED
    switched = run_step(step, context(site, driver="fake"))
    assert switched.status is Status.CHANGED, switched.error
    assert "nova.conf: change [DEFAULT] host: node1 -> node1-fake" in switched.changes
    overlay = IniDocument.load(site.nova_conf.with_name("nova-compute.conf"))
    assert overlay.get("DEFAULT", "state_path") == str(site.state_path / "fake-compute")
    # [DEFAULT] state_path of nova.conf is the controller's: never touched here.
    assert IniDocument.load(site.nova_conf).get("DEFAULT", "state_path") is None


def test_unresolvable_proxy_host_is_noted(site: Site) -> None:
    site.novncproxy_base_url = "http://controller.invalid:6080/vnc_auto.html"
    ctx = context(site, dry_run=True)
    run_step(ComputeConfStep(site), ctx)
    assert any("controller.invalid" in note and "resolve" in note for note in ctx.notes)


def test_missing_privsep_helper_is_one_line(site: Site) -> None:
    assert site.nova_bin_dir is not None
    (site.nova_bin_dir / "privsep-helper").unlink()
    result = run_step(ComputeConfStep(site), context(site))
    assert result.status is Status.FAILED
    assert result.error is not None
    assert "privsep-helper not found in nova_bin_dir" in result.error
    assert not site.nova_conf.exists()  # nothing half-written


@pytest.mark.parametrize("mode", [0o644, 0o600])
def test_wrong_mode_is_repaired(site: Site, mode: int) -> None:
    step = ComputeConfStep(site)
    run_step(step, context(site))
    site.nova_conf.chmod(mode)
    result = run_step(step, context(site))
    assert result.status is Status.CHANGED
    assert f"chmod 0640 {site.nova_conf}" in result.changes
    assert stat.S_IMODE(site.nova_conf.stat().st_mode) == 0o640


def test_serial_console_off_by_default_leaves_its_section_alone(site: Site) -> None:
    wanted = compute_options(site, make_facts(site, "libvirt", "qemu"), "HELPER")
    assert "serial_console" not in wanted


def test_serial_console_options_are_the_compute_nodes(site: Site) -> None:
    site.serial_console = True
    site.serial_port_range = "10000:10099"
    site.controller_host = "controller"
    site.my_ip = "10.0.0.31"
    wanted = compute_options(site, make_facts(site, "libvirt", "qemu"), "HELPER")
    assert wanted["serial_console"] == {
        "enabled": "true",
        "port_range": "10000:10099",
        "base_url": "ws://controller:6083/",
        "proxyclient_address": "10.0.0.31",
    }
    assert serialproxy_base_url(Site(controller_host="fd00::1")) == "ws://[fd00::1]:6083/"
    site.serialproxy_base_url = "wss://console.example.org/serial/"
    wanted = compute_options(site, make_facts(site, "libvirt", "qemu"), "HELPER")
    assert wanted["serial_console"]["base_url"] == "wss://console.example.org/serial/"
