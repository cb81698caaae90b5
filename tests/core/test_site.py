"""Site files: parsing, validation and secrets from the environment only."""

from __future__ import annotations

from pathlib import Path

import pytest

from novaconsole.errors import ConfigError
from novaconsole.site import load_site


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(text)
    return path


def test_site_file_values_and_secrets_from_env(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'controller_host = "controller"\nmy_ip = "10.0.0.11"\nrabbit_port = 5673\n'
        'extra_services = ["placement"]\n[nova_options.vnc]\nvncserver_listen = "$my_ip"\n',
    )
    site = load_site(path, environ={"NOVA_DBPASS": "s3cret", "UNRELATED": "x"})
    assert site.controller_host == "controller"
    assert site.my_ip == "10.0.0.11"
    assert site.rabbit_port == 5673
    assert site.extra_services == ["placement"]
    assert site.nova_options == {"vnc": {"vncserver_listen": "$my_ip"}}
    assert site.secret("NOVA_DBPASS") == "s3cret"
    assert "s3cret" not in repr(site)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("controller_host = [", "is not valid TOML"),
        ('colour = "blue"', "unknown setting 'colour'"),
        ('rabbit_port = "5672"', "rabbit_port must be an integer"),
        ('my_ip = "10.0.0.1; rm -rf /"', "invalid my_ip"),
        ('virt_type = "xen"', "virt_type must be auto, kvm or qemu"),
        ('extra_services = ["swift"]', "extra_services must be a list"),
        ('serial_console = "yes"', "serial_console must be true or false"),
        ('serial_port_range = "10000-20000"', "serial_port_range must be LOW:HIGH"),
        ('serial_port_range = "20000:10000"', "serial_port_range must be LOW:HIGH"),
    ],
)
def test_invalid_site_file_is_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_site(path, environ={})
    assert str(path) in str(info.value)
    assert "\n" not in info.value.one_line()


def test_serial_console_settings(tmp_path: Path) -> None:
    assert load_site(write(tmp_path, ""), environ={}).serial_console is False
    site = load_site(
        write(tmp_path, 'serial_console = true\nserial_port_range = "10000:10099"\n'),
        environ={},
    )
    assert site.serial_console is True
    assert site.serial_port_range == "10000:10099"
    assert site.serialproxy_port == 6083


def test_missing_site_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_site(tmp_path / "nope.toml")


def test_missing_secret_names_the_variable(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, ""), environ={})
    with pytest.raises(ConfigError) as info:
        site.secret("RABBIT_PASS")
    assert "export RABBIT_PASS=" in info.value.one_line()


def test_documented_example_site_file_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "docs" / "site.example.toml"
    site = load_site(example, environ={"NOVA_DBPASS": "x"})
    assert site.controller_host == "controller"
    assert site.database_url == "mysql+pymysql://root@controller"
    assert site.nova_options["vnc"]["vncserver_listen"] == "$my_ip"
