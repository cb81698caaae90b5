"""Unit tests of what lets the console hold a large region: raw bodies kept compressed per
API page, servers parsed page by page, rows reused across refreshes, pagination."""

from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from console_helpers import AppFactory, settle
from fake_source import FakeCloudSource, FakeConnection, load_recording
from textual.message import Message

import novaconsole.ui.pane as pane_module
from novaconsole.errors import ConnectionFailure
from novaconsole.sources.openstack_source import PAGE_SIZE, OpenStackSource
from novaconsole.sources.parse import UNMAPPED_FLAG, hypervisor_rows, server_row
from novaconsole.sources.rawstore import ApiPage, PagedBody, RawPage, pack_raw, paused_gc
from novaconsole.ui.pane import ResourcePane
from novaconsole.ui.table import Column, prepare_table
from novaconsole.ui.text_screen import TextScreen, to_yaml

RECORDING = load_recording()


def _servers(count: int) -> list[dict[str, Any]]:
    server0 = RECORDING["servers"][0]
    return [{**server0, "id": f"id-{i:04d}", "name": f"srv-{i}"} for i in range(count)]


def test_a_paged_body_reads_as_the_body_it_was_given() -> None:
    bodies = _servers(3)
    content = json.dumps({"servers": bodies}).encode()
    page = RawPage(content, "servers")
    raw = PagedBody(page, 2)
    assert dict(raw) == bodies[2]
    assert raw["name"] == "srv-2"
    assert raw.get("missing") is None
    assert page.size < len(content)
    assert to_yaml(raw) == to_yaml(bodies[2])  # what the details view shows


def test_servers_come_page_by_page_with_their_raw_bodies() -> None:
    source = FakeCloudSource({**RECORDING, "servers": _servers(25)}, page_size=10)
    rows = source.servers()
    assert [r.name for r in rows] == [f"srv-{i}" for i in range(25)]
    assert isinstance(rows[24].raw, PagedBody)
    assert dict(rows[24].raw) == _servers(25)[24]
    assert rows[0].vm_state == RECORDING["servers"][0]["OS-EXT-STS:vm_state"]
    # Parsed page by page, the rows are the same as parsing each body alone.
    assert rows == [server_row(raw) for raw in _servers(25)]
    assert source.count("raw_servers") == 1


def test_packed_rows_keep_their_fields_and_bodies() -> None:
    rows = [server_row(raw) for raw in _servers(5)]
    packed = pack_raw(rows, size=2)
    assert packed == rows
    assert [dict(r.raw) for r in packed] == _servers(5)


def test_an_unchanged_row_reuses_its_texts_and_a_changed_one_does_not() -> None:
    columns = [
        Column("name", "Name", lambda r: r.name),
        Column("status", "Status", lambda r: r.status),
    ]
    rows = [server_row(raw) for raw in _servers(3)]
    first = prepare_table(columns, rows, row_id=lambda r: r.id)
    again = [server_row(raw) for raw in _servers(3)]
    again[1] = replace(again[1], status="SHUTOFF")
    second = prepare_table(columns, again, row_id=lambda r: r.id, previous=first)
    assert second.texts[0] is first.texts[0]
    assert second.texts[1] == ("srv-1", "SHUTOFF")
    assert second.haystacks[1] == "srv-1\tshutoff"


def test_sort_keys_are_computed_for_the_column_sorted_on() -> None:
    columns = [Column("name", "Name", lambda r: r.name), Column("id", "ID", lambda r: r.id)]
    rows = [server_row(raw) for raw in reversed(_servers(3))]
    data = prepare_table(columns, rows, row_id=lambda r: r.id, sort=(1, False))
    assert [data.rows[i].id for i in data.order(1, False)] == ["id-0000", "id-0001", "id-0002"]
    assert data.order(1, True) == [0, 1, 2]


def test_the_real_source_follows_novas_next_links_page_by_page() -> None:
    conn = FakeConnection({**RECORDING, "servers": _servers(25)}, max_limit=10)
    source = OpenStackSource(conn=conn, name="test")
    rows = source.servers()
    assert [r.name for r in rows] == [f"srv-{i}" for i in range(25)]
    queries = conn.compute.queries
    # Asked for PAGE_SIZE, got Nova's max_limit (10) with a next link: went on by marker.
    assert [q.get("marker") for q in queries] == [None, "id-0009", "id-0019"]
    assert all(q["limit"] == PAGE_SIZE and q["all_tenants"] == "True" for q in queries)
    # Each row's body is kept from its own page and read back as the API sent it.
    assert dict(rows[24].raw) == _servers(25)[24]
    assert dict(rows[3].raw) == _servers(25)[3]


def test_a_full_last_page_costs_one_more_request_and_an_empty_list_one() -> None:
    conn = FakeConnection({**RECORDING, "servers": _servers(20)}, max_limit=10)
    assert len(OpenStackSource(conn=conn, name="test").servers()) == 20
    # Nova links "next" after a full page; the empty answer after it ends the list.
    assert len(conn.compute.queries) == 3
    empty = FakeConnection({**RECORDING, "servers": []})
    assert OpenStackSource(conn=empty, name="test").servers() == []
    assert len(empty.compute.queries) == 1


def test_deleted_servers_page_like_the_others_and_need_admin() -> None:
    recording = {**RECORDING, "servers": [], "deleted_servers": _servers(12)}
    conn = FakeConnection(recording, max_limit=5)
    rows = OpenStackSource(conn=conn, name="test").deleted_servers()
    assert len(rows) == 12
    assert all(q["deleted"] == "True" for q in conn.compute.queries)
    member = OpenStackSource(conn=FakeConnection(recording, admin=False), name="test")
    with pytest.raises(ConnectionFailure, match="needs the admin role"):
        member.deleted_servers()


@pytest.mark.asyncio
async def test_details_view_decodes_the_stored_body_of_the_chosen_row(
    fake_app: AppFactory,
) -> None:
    bodies = _servers(30)
    bodies[17] = {**bodies[17], "name": "the-one", "metadata": {"owner": "ops-team"}}
    app = fake_app(FakeCloudSource({**RECORDING, "servers": bodies}, page_size=7))
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        await pilot.press("5")
        table = app.pane("servers").table
        row = next(r for r in table.data.rows if r.name == "the-one")
        assert isinstance(row.raw, PagedBody)  # no decoded body kept per row
        await pilot.press("slash", *"the-one", "enter", "enter")
        screen = app.screen
        assert isinstance(screen, TextScreen)
        assert screen.body == to_yaml(bodies[17])
        assert "owner: ops-team" in screen.body


def test_a_refresh_keeps_unchanged_rows_and_shows_their_newest_bodies() -> None:
    bodies = _servers(4)
    source = FakeCloudSource({**RECORDING, "servers": bodies}, page_size=3)
    first = source.servers()
    source.data["servers"][0]["status"] = "SHUTOFF"  # shown: a new row
    source.data["servers"][1]["updated"] = "2030-01-01T00:00:00Z"  # not shown: same row
    second = source.servers(reuse={r.id: r for r in first})
    assert second[0] is not first[0]
    assert second[0].status == "SHUTOFF"
    assert second[1] is first[1]
    assert first[1].raw["updated"] == "2030-01-01T00:00:00Z"


def test_hypervisors_are_joined_page_by_page_and_keep_their_bodies() -> None:
    hyp0, service0 = RECORDING["hypervisors"][0], RECORDING["services"][-1]
    assert service0["binary"] == "nova-compute"
    hosts = ["cmp-a", "cmp-b", "cmp-c"]
    hypervisors = [
        {**hyp0, "id": f"hyp-{h}", "hypervisor_hostname": h, "service": {"host": h}} for h in hosts
    ]
    services = [
        {**service0, "id": f"svc-{h}", "host": h, "state": "up"} for h in [*hosts, "cmp-lost"]
    ]
    recording = {**RECORDING, "hypervisors": hypervisors, "services": services}
    rows = FakeCloudSource(recording, page_size=1).hypervisors()
    # A host seen on a later page is not taken for an unmapped one; the unmapped one is.
    assert [(r.name, UNMAPPED_FLAG in r.flags) for r in rows] == [
        ("cmp-a", False), ("cmp-b", False), ("cmp-c", False), ("cmp-lost", True),
    ]  # fmt: skip
    assert isinstance(rows[2].raw, PagedBody)
    assert dict(rows[2].raw) == hypervisors[2]
    assert rows[3].raw["service"]["host"] == "cmp-lost"
    # The same rows as joining every body at once.
    assert rows == hypervisor_rows(hypervisors, services, RECORDING["resource_providers"])


def test_the_collector_is_paused_while_a_listing_is_parsed_and_resumes_after() -> None:
    seen: list[bool] = []

    class Watching(FakeCloudSource):
        def raw_server_pages(self, deleted: bool = False) -> Iterator[ApiPage]:
            for page in super().raw_server_pages(deleted):
                seen.append(gc.isenabled())
                yield page

    assert gc.isenabled()
    rows = Watching({**RECORDING, "servers": _servers(5)}, page_size=2).servers()
    assert len(rows) == 5
    assert seen == [False, False, False]
    assert gc.isenabled()
    with paused_gc():
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # re-entrant: the outer pause still holds
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            pass
        assert not gc.isenabled()  # never enables a collector it found disabled
    finally:
        gc.enable()


@pytest.mark.asyncio
async def test_a_refresh_paces_itself_only_while_the_operator_types(
    fake_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pane_module, "PACE_WAIT", 0.2)
    app = fake_app()
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        await pilot.press("5")
        pane = app.pane("servers")
        posted: list[object] = []
        original = pane.post_message

        def recording(message: Message) -> bool:
            posted.append(message)
            return original(message)

        monkeypatch.setattr(pane, "post_message", recording)
        # No key for a while: a refresh goes on at once, without asking the UI anything.
        pane._last_input = lambda: time.monotonic() - 10
        await asyncio.to_thread(pane.pace)
        assert not any(isinstance(m, ResourcePane.Pace) for m in posted)
        # While keys arrive, it waits for the pane to reach its turn and for a quiet moment,
        # and goes on after PACE_WAIT at most (typing slows a refresh, never stops it).
        pane._last_input = time.monotonic
        await asyncio.to_thread(pane.pace)
        assert any(isinstance(m, ResourcePane.Pace) for m in posted)
        # The app notes when the operator last typed; a refresh reads it.
        before = time.monotonic()
        await pilot.press("slash", "x")
        assert app.last_input_at >= before
        pane.refresh_data()
        assert pane._last_input() == app.last_input_at
        await settle(pilot)


def test_the_real_source_pages_os_hypervisors_and_joins_them() -> None:
    hyp0 = RECORDING["hypervisors"][0]
    hypervisors = [{**hyp0, "id": f"hyp-{i}", "hypervisor_hostname": f"h{i}"} for i in range(7)]
    conn = FakeConnection({**RECORDING, "hypervisors": hypervisors}, max_limit=3)
    rows = OpenStackSource(conn=conn, name="test").hypervisors()
    pages = [q for q in conn.compute.queries if q["path"] == "/os-hypervisors/detail"]
    assert [q.get("marker") for q in pages] == [None, "hyp-2", "hyp-5"]
    assert all(q["limit"] == PAGE_SIZE and q["with_servers"] == "true" for q in pages)
    assert [r.name for r in rows if r.hypervisor_type != "?"] == [f"h{i}" for i in range(7)]
    assert dict(rows[6].raw) == hypervisors[6]


@pytest.mark.asyncio
async def test_a_refresh_keeps_the_cursor_on_its_server_when_rows_move(
    fake_app: AppFactory,
) -> None:
    source = FakeCloudSource({**RECORDING, "servers": _servers(30)}, page_size=7)
    app = fake_app(source)
    async with app.run_test(size=(160, 50)) as pilot:
        await settle(pilot)
        await pilot.press("5")
        table = app.pane("servers").table
        table.cursor = 17
        chosen = table.current_row.id
        source.data["servers"].reverse()  # every row moves
        source.data["servers"][3]["status"] = "ERROR"  # and one changes
        app.pane("servers").refresh_data()
        await settle(pilot)
        assert table.current_row.id == chosen
        assert table.cursor == 29 - 17
        # Filtered out, the cursor stays where it was among the rows shown.
        await pilot.press("slash", *"srv-1", "enter")
        await settle(pilot)
        assert all("srv-1" in r.name for r in table.shown_rows)
        app.pane("servers").refresh_data()
        await settle(pilot)
        assert table.current_row is not None
