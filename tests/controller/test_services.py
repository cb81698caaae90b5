"""Services step: specs, plan, dry run, and a port held by someone else."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from novaconsole.errors import ConfigError
from novaconsole.lab.venvs import Venv
from novaconsole.site import Site
from novaconsole.steps import RunContext, Status, run_steps
from novaconsole_controller.services import NovaServicesStep, service_specs


@pytest.fixture
def services_site(site: Site, lab_venvs: dict[str, Venv], tmp_path: Path) -> Site:
    site.nova_bin_dir = lab_venvs["openstack"].bin
    site.novnc_web = tmp_path / "novnc"
    site.novnc_web.mkdir()
    (site.novnc_web / "vnc.html").write_text("<html></html>")
    site.nova_api_port = _free_port()
    site.novncproxy_port = _free_port()
    return site


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def listener(services_site: Site) -> Iterator[int]:
    """Something else listening on nova-api's port."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", services_site.nova_api_port))
        sock.listen()
        yield services_site.nova_api_port


def test_specs_pass_config_file_and_web_and_reset_argv(services_site: Site) -> None:
    specs = {s.name: s for s in service_specs(services_site, write_shim=False)}
    assert set(specs) == {"nova-api", "nova-conductor", "nova-scheduler", "nova-novncproxy"}
    conf = str(services_site.nova_conf)
    assert specs["nova-conductor"].argv[1:] == ("--config-file", conf)
    assert specs["nova-novncproxy"].argv[-2:] == ("--web", str(services_site.novnc_web))
    api = specs["nova-api"]
    assert api.port == services_site.nova_api_port
    assert api.env["OS_NOVA_CONFIG_DIR"] == str(services_site.nova_conf.parent)
    assert api.argv[-1] == "wsgi_nova_api:application"
    assert str(services_site.services_dir / "wsgi") in api.argv
    assert not (services_site.services_dir / "wsgi").exists()  # dry specs write nothing


def test_serial_console_adds_nova_serialproxy(services_site: Site) -> None:
    services_site.serial_console = True
    services_site.serialproxy_port = _free_port()
    specs = {s.name: s for s in service_specs(services_site, write_shim=False)}
    assert set(specs) == {
        "nova-api",
        "nova-conductor",
        "nova-scheduler",
        "nova-novncproxy",
        "nova-serialproxy",
    }
    proxy = specs["nova-serialproxy"]
    assert services_site.nova_bin_dir is not None
    assert proxy.argv[0] == str(services_site.nova_bin_dir / "nova-serialproxy")
    assert proxy.argv[1:] == ("--config-file", str(services_site.nova_conf))
    assert proxy.port == services_site.serialproxy_port
    assert "nova-serialproxy" in NovaServicesStep(services_site).description


def test_dry_run_plans_and_starts_nothing(services_site: Site) -> None:
    report = run_steps([NovaServicesStep(services_site)], RunContext(dry_run=True))
    result = report.results[0]
    assert result.status is Status.PLANNED, result.error
    assert result.changes[0] == (
        f"copy nova's api-paste.ini to {services_site.nova_conf.parent}/api-paste.ini"
    )
    assert "write supervisord program nova-api" in result.changes
    assert not services_site.services_dir.exists()
    assert not services_site.nova_conf.parent.exists()


def test_port_taken_by_another_process_is_one_line_naming_the_port(
    services_site: Site, listener: int
) -> None:
    report = run_steps([NovaServicesStep(services_site)], RunContext(dry_run=True))
    assert report.results[0].status is Status.FAILED
    assert report.results[0].error == (
        f"port {listener} on 127.0.0.1 is already taken by another process (nova-api needs it)"
    )


def test_missing_novnc_files_are_named(services_site: Site, tmp_path: Path) -> None:
    services_site.novnc_web = tmp_path / "nowhere"
    with pytest.raises(ConfigError, match="noVNC web files not found"):
        service_specs(services_site, write_shim=False)
