"""nova.conf step: the guide's sections, Nova 34's additions, old names translated."""

from __future__ import annotations

import stat

import pytest
from controller_helpers import assert_no_secret

from novaconsole.errors import ConfigError
from novaconsole.iniconf import IniDocument
from novaconsole.site import Site
from novaconsole.steps import RunContext, Status, run_steps
from novaconsole_controller.novaconf import NovaConfStep, translate_options

GUIDE_SECTIONS = (
    ("DEFAULT", "enabled_apis", "osapi_compute,metadata"),
    ("DEFAULT", "my_ip", "127.0.0.1"),
    ("api", "auth_strategy", "keystone"),
    ("keystone_authtoken", "www_authenticate_uri", "http://127.0.0.1:5000"),
    ("keystone_authtoken", "auth_url", "http://127.0.0.1:5000"),
    ("keystone_authtoken", "memcached_servers", "127.0.0.1:11211"),
    ("keystone_authtoken", "auth_type", "password"),
    ("keystone_authtoken", "project_name", "service"),
    ("keystone_authtoken", "username", "nova"),
    ("keystone_authtoken", "password", "Nova-Pw-2"),
    ("vnc", "enabled", "true"),
    ("vnc", "server_listen", "$my_ip"),
    ("vnc", "server_proxyclient_address", "$my_ip"),
    ("glance", "api_servers", "http://127.0.0.1:9292"),
    ("placement", "username", "placement"),
    ("placement", "password", "Placement-Pw-4"),
    ("service_user", "send_service_user_token", "true"),
    ("service_user", "username", "nova"),
    ("conductor", "workers", "1"),
    ("scheduler", "workers", "1"),
)


def test_writes_every_guide_section_and_nova34_needs(site: Site, ctx: RunContext) -> None:
    report = run_steps([NovaConfStep(site)], ctx)
    assert report.results[0].status is Status.CHANGED, report.results[0].error
    doc = IniDocument.load(site.nova_conf)
    for section, option, value in GUIDE_SECTIONS:
        assert doc.get(section, option) == value, (section, option)
    assert doc.get("DEFAULT", "transport_url") == "rabbit://openstack:Rabbit-Pw-3@127.0.0.1:5672/"
    assert doc.get("api_database", "connection") == f"sqlite:///{site.sqlite_dir}/nova_api.sqlite"
    assert doc.get("database", "connection") == f"sqlite:///{site.sqlite_dir}/nova.sqlite"
    assert doc.get("oslo_concurrency", "lock_path") == str(site.lock_path)
    assert stat.S_IMODE(site.nova_conf.stat().st_mode) == 0o640
    assert site.lock_path.is_dir()
    # The plan and the log show what changes, never a secret.
    assert_no_secret(" ".join(report.results[0].changes + ctx.cache["lines"]))
    assert "set [keystone_authtoken] password (secret, not shown)" in report.results[0].changes


def test_second_run_changes_nothing(site: Site, ctx: RunContext) -> None:
    step = NovaConfStep(site)
    assert run_steps([step], ctx).results[0].status is Status.CHANGED
    mtime = site.nova_conf.stat().st_mtime_ns
    again = run_steps([step], ctx)
    assert again.results[0].status is Status.OK
    assert site.nova_conf.stat().st_mtime_ns == mtime


def test_dry_run_writes_nothing(site: Site) -> None:
    report = run_steps([NovaConfStep(site)], RunContext(dry_run=True))
    assert report.results[0].status is Status.PLANNED
    assert f"create {site.nova_conf} (mode 0640)" in report.results[0].changes
    assert not site.nova_conf.exists()
    assert not site.state_path.exists()


def test_operator_edits_survive_and_drift_is_repaired(site: Site, ctx: RunContext) -> None:
    site.nova_conf.parent.mkdir(parents=True)
    site.nova_conf.write_text(
        "# operator notes\n[DEFAULT]\ndebug = true\nmy_ip = 10.9.9.9\n\n"
        "[libvirt]\nvirt_type = kvm\n\n[vnc]\nserver_listen = 0.0.0.0\n"
    )
    report = run_steps([NovaConfStep(site)], ctx)
    assert "change [DEFAULT] my_ip: 10.9.9.9 -> 127.0.0.1" in report.results[0].changes
    doc = IniDocument.load(site.nova_conf)
    assert site.nova_conf.read_text().startswith("# operator notes\n[DEFAULT]\ndebug = true\n")
    assert doc.get("libvirt", "virt_type") == "kvm"
    # server_listen is a compute-node option too: the value there is kept.
    assert doc.get("vnc", "server_listen") == "0.0.0.0"


def test_old_guide_names_are_translated_with_a_note(site: Site, ctx: RunContext) -> None:
    site.nova_options = {
        "vnc": {"vncserver_listen": "0.0.0.0", "vncserver_proxyclient_address": "$my_ip"},
        "keystone_authtoken": {
            "auth_uri": "http://controller:5000",
            "auth_url": "http://controller:35357",
        },
        "DEFAULT": {
            "use_neutron": "True",
            "firewall_driver": "nova.virt.firewall.NoopFirewallDriver",
        },
        "my_section": {"custom_option": "kept"},
    }
    run_steps([NovaConfStep(site)], ctx)
    doc = IniDocument.load(site.nova_conf)
    assert doc.get("vnc", "server_listen") == "0.0.0.0"
    assert doc.get("vnc", "vncserver_listen") is None
    assert doc.get("keystone_authtoken", "www_authenticate_uri") == "http://controller:5000"
    assert doc.get("keystone_authtoken", "auth_url") == "http://controller:5000"
    assert doc.get("DEFAULT", "use_neutron") is None
    assert doc.get("DEFAULT", "firewall_driver") is None
    assert doc.get("my_section", "custom_option") == "kept"
    assert "translated [vnc] vncserver_listen to [vnc] server_listen (Nova 34 name)" in ctx.notes
    assert (
        "translated [keystone_authtoken] auth_uri to [keystone_authtoken] "
        "www_authenticate_uri (Nova 34 name)" in ctx.notes
    )
    assert any("port 35357 to 5000" in n for n in ctx.notes)
    assert any(n.startswith("dropped [DEFAULT] use_neutron") for n in ctx.notes)
    assert any(n.startswith("dropped [DEFAULT] firewall_driver") for n in ctx.notes)


def test_guide_placeholders_in_site_options_take_the_secret(site: Site) -> None:
    translated = translate_options({"neutron": {"password": "NEUTRON_PASS"}}, site)
    want = translated.options["neutron"]["password"]
    assert not isinstance(want, str)
    assert want is not None
    assert want.value == "Neutron-Pw-5"
    assert want.secret


def test_neutron_section_only_with_neutron_url(site: Site, ctx: RunContext) -> None:
    run_steps([NovaConfStep(site)], ctx)
    assert "neutron" not in IniDocument.load(site.nova_conf).sections()
    site.neutron_url = "http://127.0.0.1:9696"
    run_steps([NovaConfStep(site)], ctx)
    doc = IniDocument.load(site.nova_conf)
    assert doc.get("neutron", "endpoint_override") == "http://127.0.0.1:9696"
    assert doc.get("neutron", "username") == "neutron"
    assert doc.get("neutron", "service_metadata_proxy") == "false"


def test_missing_secret_writes_nothing(site: Site) -> None:
    del site.secrets["RABBIT_PASS"]
    report = run_steps([NovaConfStep(site)], RunContext())
    assert report.results[0].status is Status.FAILED
    assert report.results[0].error == (
        "secret RABBIT_PASS is not set (from test site) (hint: export RABBIT_PASS=...)"
    )
    assert not site.nova_conf.exists()


def test_bad_site_option_is_refused_without_partial_write(site: Site, ctx: RunContext) -> None:
    run_steps([NovaConfStep(site)], ctx)
    before = site.nova_conf.read_text()
    site.my_ip = "10.0.0.11"
    site.nova_options = {"DEFAULT": {"bad option": "x"}}
    report = run_steps([NovaConfStep(site)], ctx)
    assert report.results[0].status is Status.FAILED
    assert site.nova_conf.read_text() == before


def test_placement_falls_back_to_nova_user_with_a_note(site: Site, ctx: RunContext) -> None:
    del site.secrets["PLACEMENT_PASS"]
    run_steps([NovaConfStep(site)], ctx)
    assert IniDocument.load(site.nova_conf).get("placement", "username") == "nova"
    assert "PLACEMENT_PASS is not set: [placement] authenticates as the nova user" in ctx.notes


@pytest.mark.parametrize("name", ["NOVA_PASS", "NOVA_DBPASS"])
def test_each_needed_secret_is_named_when_missing(site: Site, name: str) -> None:
    site.database_url = "mysql+pymysql://root@127.0.0.1"
    del site.secrets[name]
    with pytest.raises(ConfigError, match=f"secret {name} is not set"):
        NovaConfStep(site).check(RunContext())


def test_compute_node_gets_the_shared_options_without_database_access(
    site: Site, ctx: RunContext
) -> None:
    """A separate compute node's nova.conf: queue, Keystone, Placement; no DB URLs."""
    from novaconsole.plugins import get_plugin_manager

    pm = get_plugin_manager(environ={})
    steps = [
        step
        for result in pm.hook.novaconsole_provision_steps(role="compute", site=site)
        for step in result
        if step.name.startswith("controller.")
    ]
    assert [s.name for s in steps] == ["controller.nova_conf.compute_node"]
    report = run_steps(steps, ctx)
    assert report.results[0].status is Status.CHANGED, report.results[0].error
    text = site.nova_conf.read_text()
    assert "transport_url = rabbit://" in text
    assert "[placement]" in text
    assert "[keystone_authtoken]" in text
    assert "[api_database]" not in text
    assert "[database]" not in text
    assert "novncproxy_port" not in text
    assert run_steps(steps, ctx).results[0].status is Status.OK


def test_serialproxy_options_only_when_the_serial_console_is_on(
    site: Site, ctx: RunContext
) -> None:
    run_steps([NovaConfStep(site)], ctx)
    assert IniDocument.load(site.nova_conf).get("serial_console", "serialproxy_port") is None
    site.serial_console = True
    site.serialproxy_port = 16083
    report = run_steps([NovaConfStep(site)], ctx)
    assert "set [serial_console] serialproxy_port = 16083" in report.results[0].changes
    doc = IniDocument.load(site.nova_conf)
    assert doc.get("serial_console", "serialproxy_host") == "127.0.0.1"
    assert doc.get("serial_console", "serialproxy_port") == "16083"
    # enabled, port_range, base_url, proxyclient_address: the compute node's, not ours.
    assert doc.get("serial_console", "enabled") is None
    # A compute node's share of the controller's options runs no proxy.
    run_steps([NovaConfStep(site, for_compute_node=True)], ctx)
    assert IniDocument.load(site.nova_conf).get("serial_console", "serialproxy_port") == "16083"
