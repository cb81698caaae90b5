"""Unit tests of the console's pure parts: parsing, filter, commands, settings, themes."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fake_source import FakeCloudSource, load_recording

from novaconsole.errors import ConfigError
from novaconsole.sources.parse import (
    UNMAPPED_FLAG,
    endpoint_rows,
    hypervisor_rows,
    image_row,
    parse_time,
    server_row,
    service_row,
)
from novaconsole.sources.rows import ResourceUse
from novaconsole.ui.commands import CommandError, completions, parse_command
from novaconsole.ui.filtering import RowFilter
from novaconsole.ui.settings import ConsoleSettings, load_settings, save_setting
from novaconsole.ui.table import Column, TableData, prepare_table, update_table
from novaconsole.ui.themes import (
    builtin_theme_dir,
    load_themes,
    resolve_theme_name,
    theme_from_file,
)

REPO = Path(__file__).resolve().parents[2]
RECORDING = load_recording()

# -- parsing ---------------------------------------------------------------------------


def test_parse_time_accepts_nova_and_glance_stamps() -> None:
    nova = parse_time("2026-05-20T09:59:52.000000")
    glance = parse_time("2026-05-20T09:40:11Z")
    assert nova == datetime(2026, 5, 20, 9, 59, 52, tzinfo=UTC)
    assert glance == datetime(2026, 5, 20, 9, 40, 11, tzinfo=UTC)
    assert parse_time("yesterday") is None
    assert parse_time(None) is None


def test_service_row_and_heartbeat_age() -> None:
    row = service_row(
        {
            "id": "x",
            "binary": "nova-compute",
            "host": "h1",
            "zone": "nova",
            "status": "disabled",
            "state": "down",
            "updated_at": "2026-05-20T10:00:00.000000",
            "disabled_reason": "maintenance",
            "forced_down": True,
        }
    )
    assert row.is_down
    assert row.is_disabled
    assert row.forced_down
    assert row.disabled_reason == "maintenance"
    assert row.heartbeat_age(datetime(2026, 5, 20, 10, 1, 0, tzinfo=UTC)) == 60.0
    assert (
        service_row({"id": "y", "state": "up", "updated_at": None}).heartbeat_age(datetime.now(UTC))
        is None
    )


def test_catalog_rows_are_grouped_and_carry_probe_results() -> None:
    catalog = [
        {"type": "image", "name": "glance", "endpoints": [
            {"interface": "admin", "region": "R", "url": "http://g:9292"},
            {"interface": "public", "region": "R", "url": "http://g:9292"},
        ]},
        {"type": "compute", "name": "nova", "endpoints": [
            {"interface": "public", "region": "R", "url": "http://n:8774/v2.1"},
        ]},
    ]  # fmt: skip
    rows = endpoint_rows(catalog, {"http://g:9292": (False, "Connection refused")})
    assert [(r.service_type, r.interface) for r in rows] == [
        ("compute", "public"),
        ("image", "public"),
        ("image", "admin"),
    ]
    assert rows[0].reachable is None
    assert rows[1].reachable is False
    assert rows[1].probe_detail == "Connection refused"


def test_image_row() -> None:
    row = image_row(RECORDING["images"][0])
    assert row.status == "active"
    assert row.size is not None
    assert row.size > 0
    assert row.created_at is not None


def _compute(host: str, state: str = "up", status: str = "enabled") -> dict[str, object]:
    return {
        "id": f"svc-{host}",
        "binary": "nova-compute",
        "host": host,
        "state": state,
        "status": status,
    }


def test_hypervisor_usage_comes_from_placement() -> None:
    hyp = {"id": "rp1", "hypervisor_hostname": "c1", "state": "up", "status": "enabled",
           "service": {"host": "c1"}, "servers": [{"uuid": "a"}, {"uuid": "b"}]}  # fmt: skip
    providers = {
        "rp1": {
            "name": "c1",
            "inventories": {
                "VCPU": {"total": 4, "reserved": 0, "allocation_ratio": 4.0},
                "MEMORY_MB": {"total": 2048, "reserved": 512, "allocation_ratio": 1.5},
            },
            "usages": {"VCPU": 3, "MEMORY_MB": 1024},
        }
    }
    (row,) = hypervisor_rows([hyp], [_compute("c1")], providers)
    assert row.vcpu == ResourceUse(used=3, capacity=16)
    assert row.memory_mb == ResourceUse(used=1024, capacity=2304)
    assert row.disk_gb is None
    assert row.running_vms == 2
    assert row.flags == ()


def test_hypervisor_flags_down_service_and_missing_provider() -> None:
    hyp = {"id": "rp1", "hypervisor_hostname": "c1", "state": "down", "status": "disabled",
           "service": {"host": "c1"}}  # fmt: skip
    (row,) = hypervisor_rows([hyp], [_compute("c1", "down", "disabled")], {})
    assert "compute service down" in row.flags
    assert "compute service disabled" in row.flags
    assert "no resource provider in Placement" in row.flags


def test_compute_host_without_hypervisor_is_flagged_unmapped() -> None:
    providers = {"rp9": {"name": "c9", "inventories": {}, "usages": {}}}
    rows = hypervisor_rows([], [_compute("c9")], providers)
    assert [r.name for r in rows] == ["c9"]
    assert rows[0].flags == (UNMAPPED_FLAG,)
    assert rows[0].id == "rp9"


def test_server_row_names_power_state_image_and_addresses() -> None:
    raw = dict(RECORDING["servers"][0])
    raw["addresses"] = {"net1": [{"addr": "10.0.0.5"}, {"addr": "fd00::5"}]}
    image_id = raw["image"]["id"] if raw.get("image") else ""
    row = server_row(raw, {image_id: "named-image"})
    assert row.power_state in ("Running", "Shutdown", "NOSTATE", "Paused")
    assert row.addresses == "net1=10.0.0.5, fd00::5"
    assert row.image == ("named-image" if image_id else "(volume)")
    assert server_row({**raw, "image": ""}).image == "(volume)"


def test_fake_source_replays_recording_and_fails_on_demand() -> None:
    source = FakeCloudSource(fail={"raw_images": "image list: cannot connect"})
    assert [s.binary for s in source.services()]
    with pytest.raises(Exception, match="image list: cannot connect"):
        source.images()


# -- table preparation, filter ---------------------------------------------------------


def test_prepare_table_texts_widths_and_sort_keys() -> None:
    rows = [{"n": "b", "v": 10}, {"n": "a", "v": None}]
    columns = [
        Column("n", "Name", lambda r: r["n"]),
        Column("v", "Value", lambda r: r["v"], numeric=True),
    ]
    data = prepare_table(columns, rows, row_id=lambda r: r["n"])
    assert data.texts == [("b", "10"), ("a", "")]
    assert data.widths == [len("Name") + 2, len("Value") + 2]
    assert data.column_keys(1)[0] < data.column_keys(1)[1]  # values sort before empty cells
    assert data.order(1, False) == [0, 1]


def _all_keys(data: TableData) -> list[tuple[object, ...]]:
    """Every row's sort keys, row by row (prepare_table computes them per column)."""
    return list(zip(*(data.column_keys(c) for c in range(len(data.columns))), strict=True))


def _update_columns() -> list[Column]:
    return [
        Column("n", "Name", lambda r: r["n"]),
        Column("v", "Value", lambda r: r["v"], numeric=True),
        Column("u", "Use", lambda r: f"{r['v']}/100", sort=lambda r: r["v"]),
    ]


def test_update_table_matches_prepare_table_then_reuses_unchanged_cells() -> None:
    columns = _update_columns()
    rows: list[dict[str, object]] = [{"n": "b", "v": 10}, {"n": "a", "v": 7}, {"n": "c", "v": None}]
    first, changed = update_table(None, columns, rows, lambda r: r["n"])
    full = prepare_table(columns, rows, lambda r: r["n"])
    assert changed
    assert (first.texts, first.sort_keys, first.haystacks, first.widths) == (
        full.texts, _all_keys(full), full.haystacks, full.widths,
    )  # fmt: skip

    same, changed = update_table(first, columns, [dict(r) for r in rows], lambda r: r["n"])
    assert not changed
    assert all(a is b for a, b in zip(same.texts, first.texts, strict=True))

    rows[1] = {"n": "a", "v": 900}
    moved, changed = update_table(same, columns, rows, lambda r: r["n"])
    assert changed
    assert moved.texts[1] == ("a", "900", "900/100")
    assert moved.sort_keys[1] == (_all_keys(full)[1][0], (0, 900), (0, 900))
    assert moved.texts[0] is first.texts[0]  # the row that did not change is reused
    assert moved.widths == prepare_table(columns, rows, lambda r: r["n"]).widths


def test_update_table_sees_order_and_style_changes() -> None:
    columns = _update_columns()
    rows = [{"n": "b", "v": 10}, {"n": "a", "v": 7}]
    first, _ = update_table(None, columns, rows, lambda r: r["n"])
    swapped, changed = update_table(first, columns, rows[::-1], lambda r: r["n"])
    assert changed
    assert swapped.ids == ["a", "b"]
    styled, changed = update_table(first, columns, rows, lambda r: r["n"], lambda r: "error")
    assert changed
    assert styled.styles == ["error", "error"]
    fewer, changed = update_table(first, columns, rows[:1], lambda r: r["n"])
    assert changed
    assert fewer.ids == ["b"]


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("sched", ["nova-scheduler"]),
        ("SCHED", ["nova-scheduler"]),
        ("!sched", ["nova-conductor", "nova-compute"]),
        ("^nova-co", ["nova-conductor", "nova-compute"]),
        ("compute|sched", ["nova-scheduler", "nova-compute"]),
        ("nova-(", []),  # invalid regex: matched literally, nothing contains it
        ("!", ["nova-scheduler", "nova-conductor", "nova-compute"]),
    ],
)
def test_row_filter(text: str, kept: list[str]) -> None:
    haystacks = ["nova-scheduler", "nova-conductor", "nova-compute"]
    row_filter = RowFilter.parse(text)
    indices = list(range(3))
    selected = indices if row_filter is None else row_filter.select(haystacks, indices)
    assert [haystacks[i] for i in selected] == kept


# -- commands --------------------------------------------------------------------------

PANES = {"services": ("svc",), "hypervisors": ("hyp",), "servers": ("srv",)}


def test_parse_command_aliases_and_arguments() -> None:
    assert parse_command(":svc", PANES).kind == "services"
    assert parse_command("hyp", PANES).kind == "hypervisors"
    cloud = parse_command(":cloud  other-cloud ", PANES)
    assert (cloud.kind, cloud.argument) == ("cloud", "other-cloud")
    with pytest.raises(CommandError, match=r"unknown command ':nope' \(known: "):
        parse_command(":nope", PANES)
    with pytest.raises(CommandError, match="needs a name"):
        parse_command(":cloud", PANES)


def test_completions_for_commands_and_cloud_names() -> None:
    assert completions(":hy", PANES)[0] == "hyp"
    assert completions("s", PANES)[:2] == ["svc", "srv"] or completions("s", PANES)[0] in (
        "svc",
        "srv",
    )
    assert completions("cloud ot", PANES, clouds=["lab", "other"]) == ["cloud other"]
    assert completions("theme l", PANES, themes=["dark", "light"]) == ["theme light"]


# -- settings --------------------------------------------------------------------------


def test_settings_default_when_no_file(isolated_config: Path) -> None:
    assert load_settings() == ConsoleSettings()


def test_save_setting_keeps_the_rest_of_the_file(isolated_config: Path) -> None:
    isolated_config.parent.mkdir(parents=True)
    isolated_config.write_text(
        '# mine\n[other]\nkey = 1\n\n[console]\nrefresh = 5\n\n[later]\nx = "y"\n'
    )
    save_setting("theme", "novaconsole-light")
    text = isolated_config.read_text()
    assert "# mine" in text
    assert 'x = "y"' in text
    assert "key = 1" in text
    settings = load_settings()
    assert settings.theme == "novaconsole-light"
    assert settings.refresh == 5.0
    save_setting("theme", "novaconsole-dark")
    assert isolated_config.read_text().count("theme =") == 1
    assert load_settings().theme == "novaconsole-dark"


def test_save_setting_creates_the_file_under_xdg_config_home(isolated_config: Path) -> None:
    path = save_setting("theme", "novaconsole-light")
    assert path == isolated_config
    assert load_settings().theme == "novaconsole-light"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[console]\nrefresh = -1\n", "refresh = -1 must be 0 or more"),
        ("[console]\ncolour = 'x'\n", "unknown key 'colour'"),
        ("[console]\nreadonly = 'yes'\n", "readonly = 'yes' is not a bool"),
        ("[console\n", "cannot read"),
    ],
)
def test_bad_settings_are_one_line_naming_the_file(
    isolated_config: Path, body: str, message: str
) -> None:
    isolated_config.parent.mkdir(parents=True)
    isolated_config.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert message in info.value.one_line()
    assert str(isolated_config) in info.value.one_line()
    assert "\n" not in info.value.one_line()


# -- themes ----------------------------------------------------------------------------


def test_shipped_themes_load_and_resolve() -> None:
    names = {t.name for t in load_themes([builtin_theme_dir()])}
    assert {"novaconsole-dark", "novaconsole-light", "novaconsole-high-contrast"} <= names
    assert resolve_theme_name("light", names) == "novaconsole-light"
    with pytest.raises(ConfigError, match=r"unknown theme 'neon' \(novaconsole themes: dark"):
        resolve_theme_name("neon", names)


def test_bad_theme_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[theme]\nname = "x"\nprimry = "#fff"\n')
    with pytest.raises(ConfigError, match=r"theme file .*bad.toml: unknown keys primry"):
        theme_from_file(path)


_COLOUR = re.compile(
    r"#[0-9a-fA-F]{3,8}\b|\brgba?\(|\bhsla?\(|:\s*[^;$]*\b(red|green|blue|white|black|yellow|"
    r"magenta|cyan|gr[ae]y|orange|purple|pink)\b"
)


def _css_blocks() -> list[tuple[str, str]]:
    blocks = [(str(p), p.read_text()) for p in builtin_theme_dir().glob("*.tcss")]
    for path in (REPO / "novaconsole" / "ui").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "DEFAULT_CSS" for t in node.targets)
                and isinstance(node.value, ast.Constant)
            ):
                blocks.append((f"{path}:{node.lineno}", str(node.value.value)))
    return blocks


def test_stylesheets_use_theme_variables_only() -> None:
    blocks = _css_blocks()
    assert len(blocks) >= 8
    for where, css in blocks:
        css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
        match = _COLOUR.search(css)
        assert match is None, f"{where}: literal colour {match.group(0)!r}; use $variables"


# -- import boundaries -----------------------------------------------------------------


def _imports_textual(path: Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        if any(n == "textual" or n.startswith("textual.") for n in names):
            return True
    return False


def test_only_the_ui_package_imports_textual() -> None:
    roots = [REPO / "novaconsole", REPO / "plugins"]
    offenders = [
        str(p.relative_to(REPO))
        for root in roots
        for p in root.rglob("*.py")
        if "ui" not in p.relative_to(REPO).parts[:2] and _imports_textual(p)
    ]
    assert offenders == []
    assert _imports_textual(REPO / "novaconsole" / "ui" / "app.py")  # the check can fail


def test_cli_and_sources_start_without_loading_textual() -> None:
    code = (
        "import sys, novaconsole.cli, novaconsole.console, novaconsole.sources.openstack_source;"
        "print('textual' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_filter_keeps_letter_escapes_meaning() -> None:
    row_filter = RowFilter.parse(r"\S+-compute")
    assert row_filter is not None
    assert row_filter.matches("nova-compute")
    assert not row_filter.matches("   -compute")


def test_typing_on_narrows_only_plain_filters() -> None:
    first, longer = RowFilter.parse("nova"), RowFilter.parse("nova-c")
    assert longer is not None
    assert longer.narrows(first)
    regex = RowFilter.parse("nova|x")
    assert regex is not None
    assert not regex.narrows(first)
    inverted = RowFilter.parse("!nova-c")
    assert inverted is not None
    assert not inverted.narrows(RowFilter.parse("!nova"))


def test_prefetched_connection_failure_is_one_line_on_first_use() -> None:
    from novaconsole.console import prefetching_connect

    connect = prefetching_connect("no-such-cloud-xyz", 1.0)
    with pytest.raises(ConfigError) as info:
        connect("no-such-cloud-xyz")
    assert "cannot load cloud 'no-such-cloud-xyz'" in info.value.one_line()
