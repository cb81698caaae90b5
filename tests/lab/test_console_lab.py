"""The console against the real lab: what its panes show is what ``openstack`` reports,
and disabling/enabling the compute service from the Services pane changes the cloud.

Run with ``pytest -m lab tests/lab/test_console_lab.py``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ui"))

from console_helpers import settle

from novaconsole.sources.openstack_source import OpenStackSource, open_cloud_source
from novaconsole.ui.app import NovaConsoleApp, make_app
from novaconsole.ui.confirm import ConfirmScreen
from novaconsole.ui.settings import ConsoleSettings

pytestmark = [pytest.mark.lab, pytest.mark.asyncio]
SIZE = (160, 40)


def _cli(openstack: Path, cloud: str, *args: str) -> Any:
    proc = subprocess.run(
        [str(openstack), "--os-cloud", cloud, *args, "-f", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def source(lab_cloud: str) -> Iterator[OpenStackSource]:
    real = open_cloud_source(lab_cloud, timeout=30)
    yield real
    real.close()


def _app(source: OpenStackSource, readonly: bool = False) -> NovaConsoleApp:
    return make_app(
        connect=lambda name: source,
        cloud=source.name,
        settings=ConsoleSettings(refresh=0, readonly=readonly, timeout=30),
        remember_theme=False,
    )


async def test_panes_show_what_the_openstack_cli_reports(
    source: OpenStackSource, lab_cloud: str, openstack_cli: Path
) -> None:
    app = _app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for pane in app.panes:
            assert pane.error is None, f"{pane.pane_name}: {pane.error}"
        services = {
            (r.binary, r.host, r.status, r.state) for r in app.pane("services").table.data.rows
        }
        endpoints = {r.url for r in app.pane("catalog").table.data.rows}
        images = {r.name for r in app.pane("images").table.data.rows}
        hypervisors = app.pane("hypervisors").table.data.rows
        catalog_rows = app.pane("catalog").table.data.rows
        header = str(app.query_one("#header").render())

    cli_services = _cli(openstack_cli, lab_cloud, "compute", "service", "list")
    assert services == {(s["Binary"], s["Host"], s["Status"], s["State"]) for s in cli_services}
    cli_catalog = _cli(openstack_cli, lab_cloud, "catalog", "list")
    cli_urls = {
        line.split(": ", 1)[1]
        for entry in cli_catalog
        for line in (
            entry["Endpoints"]
            if isinstance(entry["Endpoints"], list)
            else entry["Endpoints"].splitlines()
        )
        if isinstance(line, str) and ": " in line
    } or {ep["url"] for entry in cli_catalog for ep in entry["Endpoints"] if isinstance(ep, dict)}
    assert endpoints == cli_urls
    assert all(r.reachable is True for r in catalog_rows), [
        (r.url, r.probe_detail) for r in catalog_rows if not r.reachable
    ]
    assert images == {i["Name"] for i in _cli(openstack_cli, lab_cloud, "image", "list")}
    cli_hypervisors = _cli(openstack_cli, lab_cloud, "hypervisor", "list")
    assert {h.name for h in hypervisors} == {h["Hypervisor Hostname"] for h in cli_hypervisors}
    for row in hypervisors:
        # Usage comes from Placement: the lab's compute node has an inventory there.
        assert row.vcpu is not None, row
        assert row.vcpu.capacity > 0, row
        assert row.memory_mb is not None, row
        assert row.memory_mb.capacity > 0, row
        assert "no resource provider in Placement" not in row.flags
    assert lab_cloud in header
    assert "compute 2.69-2.88 (max 2." in header  # what the panes use, not 2.1


async def test_disable_and_enable_compute_service_from_the_pane(
    source: OpenStackSource, lab_cloud: str, openstack_cli: Path
) -> None:
    def cli_compute() -> dict[str, Any]:
        rows = _cli(
            openstack_cli, lab_cloud, "compute", "service", "list", "--service", "nova-compute"
        )
        assert rows, "the lab has no nova-compute service"
        row: dict[str, Any] = rows[0]
        return row

    assert cli_compute()["Status"] == "enabled", "the lab's compute service must start enabled"
    app = _app(source)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            pane = app.pane("services")
            rows = pane.table.shown_rows
            pane.table.cursor = next(i for i, r in enumerate(rows) if r.binary == "nova-compute")
            await pilot.press("d")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press(*"novaconsole lab test", "enter")
            await settle(pilot)
            assert pane.table.current_row.status == "disabled"
            assert pane.table.current_row.disabled_reason == "novaconsole lab test"
            disabled = cli_compute()
            assert disabled["Status"] == "disabled"

            await pilot.press("e", "y")
            await settle(pilot)
            assert pane.table.current_row.status == "enabled"
        assert cli_compute()["Status"] == "enabled"
    finally:
        # Leave the lab as we found it, whatever happened above.
        with contextlib.suppress(Exception):
            compute = next(r for r in source.services() if r.binary == "nova-compute")
            if compute.status != "enabled":
                source.enable_service(compute)


async def test_readonly_refuses_against_the_real_cloud(
    source: OpenStackSource, lab_cloud: str, openstack_cli: Path
) -> None:
    app = _app(source, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("G", "d")
        assert not isinstance(app.screen, ConfirmScreen)
    rows = _cli(openstack_cli, lab_cloud, "compute", "service", "list", "--service", "nova-compute")
    assert rows[0]["Status"] == "enabled"
