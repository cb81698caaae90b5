"""The INI editor keeps what it does not own and writes atomically with mode 0640."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from novaconsole.errors import ConfigError
from novaconsole.iniconf import IniDocument, Want, apply_changes, plan_options, update_file

OPERATOR_FILE = """\
# nova.conf kept by an operator
[DEFAULT]
# debug while we investigate
debug = true
my_ip = 10.0.0.11
log_dir: /var/log/nova

[vnc]
# the compute plugin sets the base URL
novncproxy_base_url = http://controller:6080/vnc_auto.html

[libvirt]
virt_type = kvm
cpu_model_extra_flags =
    -arch-capabilities
"""


def test_set_changes_only_owned_keys_and_keeps_comments_and_order() -> None:
    doc = IniDocument(OPERATOR_FILE)
    changes = plan_options(doc, {"DEFAULT": {"my_ip": "127.0.0.1", "state_path": "/srv/nova"}})
    apply_changes(doc, changes)
    text = doc.render()
    assert text.splitlines()[:7] == [
        "# nova.conf kept by an operator",
        "[DEFAULT]",
        "# debug while we investigate",
        "debug = true",
        "my_ip = 127.0.0.1",
        "log_dir: /var/log/nova",
        "state_path = /srv/nova",
    ]
    assert "novncproxy_base_url = http://controller:6080/vnc_auto.html" in text
    assert doc.get("libvirt", "cpu_model_extra_flags") == "\n-arch-capabilities"


def test_new_section_is_appended_and_get_reads_colon_entries() -> None:
    doc = IniDocument(OPERATOR_FILE)
    apply_changes(doc, plan_options(doc, {"placement": {"region_name": "RegionOne"}}))
    assert doc.render().endswith("\n[placement]\nregion_name = RegionOne\n")
    assert doc.get("DEFAULT", "log_dir") == "/var/log/nova"
    assert doc.sections() == ["DEFAULT", "vnc", "libvirt", "placement"]


def test_replacing_a_multiline_value_drops_its_continuation_lines() -> None:
    doc = IniDocument(OPERATOR_FILE)
    apply_changes(doc, plan_options(doc, {"libvirt": {"cpu_model_extra_flags": "none"}}))
    assert "-arch-capabilities" not in doc.render()
    assert doc.get("libvirt", "cpu_model_extra_flags") == "none"


def test_repeated_keys_collapse_to_one_and_remove_deletes_all() -> None:
    doc = IniDocument("[DEFAULT]\na = 1\nb = 2\na = 3\n")
    assert doc.get("DEFAULT", "a") == "3"
    doc.set("DEFAULT", "a", "9")
    assert doc.render() == "[DEFAULT]\na = 9\nb = 2\n"
    doc.remove("DEFAULT", "a")
    assert doc.render() == "[DEFAULT]\nb = 2\n"


def test_plan_is_empty_when_values_match_and_only_if_missing_keeps_existing() -> None:
    doc = IniDocument(OPERATOR_FILE)
    wanted: dict[str, dict[str, str | Want | None]] = {
        "DEFAULT": {"my_ip": "10.0.0.11"},
        "vnc": {"novncproxy_base_url": Want("http://other:6080/", only_if_missing=True)},
    }
    assert plan_options(doc, wanted) == []
    missing = plan_options(doc, {"vnc": {"server_listen": Want("$my_ip", only_if_missing=True)}})
    assert [c.describe() for c in missing] == ["set [vnc] server_listen = $my_ip"]


def test_secret_values_never_appear_in_descriptions() -> None:
    doc = IniDocument("[database]\nconnection = sqlite://\n")
    changes = plan_options(
        doc,
        {
            "database": {"connection": "mysql+pymysql://nova:Db-Pw-1@db/nova"},
            "keystone_authtoken": {"password": "Ks-Pw-2"},
            "service_user": {"token_value": Want("Tok-3", secret=True)},
        },
    )
    text = " ".join(c.describe() for c in changes)
    for secret in ("Db-Pw-1", "Ks-Pw-2", "Tok-3"):
        assert secret not in text
    assert "change [database] connection (secret, not shown)" in text


@pytest.mark.parametrize(
    ("section", "option", "value"),
    [("DEFAULT", "my_ip", "1.2.3.4\n[evil]"), ("bad]name", "x", "1"), ("DEFAULT", "a b", "1")],
)
def test_invalid_names_and_multiline_values_are_refused(
    section: str, option: str, value: str
) -> None:
    with pytest.raises(ConfigError):
        plan_options(IniDocument(), {section: {option: value}})


def test_update_file_writes_mode_0640_and_second_run_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "nova.conf"
    wanted = {"DEFAULT": {"my_ip": "127.0.0.1"}, "api": {"auth_strategy": "keystone"}}
    assert len(update_file(path, wanted)) == 2
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    before = path.stat().st_mtime_ns
    assert update_file(path, wanted) == []
    assert path.stat().st_mtime_ns == before


def test_update_file_fixes_a_world_readable_mode(tmp_path: Path) -> None:
    path = tmp_path / "nova.conf"
    path.write_text("[DEFAULT]\nmy_ip = 127.0.0.1\n")
    path.chmod(0o644)
    assert update_file(path, {"DEFAULT": {"my_ip": "127.0.0.1"}}) == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_update_file_is_atomic_no_partial_file_on_invalid_input(tmp_path: Path) -> None:
    path = tmp_path / "nova.conf"
    path.write_text(OPERATOR_FILE)
    with pytest.raises(ConfigError):
        update_file(path, {"DEFAULT": {"my_ip": "1.1.1.1", "bad key": "x"}})
    assert path.read_text() == OPERATOR_FILE
    assert sorted(p.name for p in tmp_path.iterdir()) == [".nova.conf.lock", "nova.conf"]


def test_two_owners_with_disjoint_keys_do_not_undo_each_other(tmp_path: Path) -> None:
    path = tmp_path / "nova.conf"
    path.write_text(OPERATOR_FILE)
    controller = {"DEFAULT": {"my_ip": "127.0.0.1"}, "vnc": {"enabled": "true"}}
    compute = {"libvirt": {"virt_type": "qemu"}, "vnc": {"novncproxy_base_url": "http://h:6080/"}}
    threads = [
        threading.Thread(target=update_file, args=(path, wanted))
        for wanted in (controller, compute) * 5
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    doc = IniDocument.load(path)
    assert doc.get("DEFAULT", "my_ip") == "127.0.0.1"
    assert doc.get("vnc", "enabled") == "true"
    assert doc.get("libvirt", "virt_type") == "qemu"
    assert doc.get("vnc", "novncproxy_base_url") == "http://h:6080/"
    assert doc.get("DEFAULT", "debug") == "true"
    assert update_file(path, controller) == []
    assert update_file(path, compute) == []


def test_update_file_keeps_owner_and_group(tmp_path: Path) -> None:
    if os.getuid() != 0:
        pytest.skip("changing a file's owner needs root")
    path = tmp_path / "nova.conf"
    path.write_text("[DEFAULT]\n")
    os.chown(path, 1234, 4321)
    update_file(path, {"DEFAULT": {"my_ip": "127.0.0.1"}})
    assert (path.stat().st_uid, path.stat().st_gid) == (1234, 4321)
