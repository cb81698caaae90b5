"""``FakeCloudSource``: a deterministic source replaying a recording of the real lab.

It is a fake, for tests that need determinism (snapshots, behaviour): it returns the raw
API bodies that ``record_fixture.py`` saved from the lab, so the rows are parsed by the same
code as the live console. Actions change the recorded bodies the way Nova would, and every
call is remembered in ``calls``. ``fail`` makes a method raise, as an unreachable service does.
The same features are tested against the real lab in ``tests/lab/test_console_lab.py``.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from novaconsole.errors import ConnectionFailure
from novaconsole.sources.base import CloudSource
from novaconsole.sources.rawstore import ApiPage, decode_page
from novaconsole.sources.rows import CloudInfo, ServerRow, ServiceRow

RECORDING = Path(__file__).parent / "data" / "lab_recording.json"


def load_recording(path: Path = RECORDING) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


class FakeCloudSource(CloudSource):
    """Replays ``recording``; ``fail`` maps a method (``"raw_images"``) to an error line."""

    def __init__(
        self,
        recording: dict[str, Any] | None = None,
        *,
        name: str | None = None,
        fail: dict[str, str] | None = None,
        delay: float = 0.0,
        page_size: int = 1000,
    ) -> None:
        self.data = copy.deepcopy(recording if recording is not None else load_recording())
        self.name = name or str(self.data.get("recorded_from", "fake"))
        self.fail = dict(fail or {})
        self.delay = delay
        self.page_size = page_size
        self.calls: list[tuple[str, ...]] = []
        self.image_names = {}
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._peak: dict[str, int] = {}

    def _call(self, method: str, *args: str) -> None:
        with self._lock:
            self.calls.append((method, *args))
            self._in_flight[method] = self._in_flight.get(method, 0) + 1
            self._peak[method] = max(self._peak.get(method, 0), self._in_flight[method])
        try:
            if self.delay:
                time.sleep(self.delay)
        finally:
            with self._lock:
                self._in_flight[method] -= 1
        if method in self.fail:
            raise ConnectionFailure(self.fail[method])

    def max_in_flight(self, method: str) -> int:
        """The most concurrent calls of ``method`` seen (refreshes must never overlap)."""
        with self._lock:
            return self._peak.get(method, 0)

    def count(self, method: str) -> int:
        with self._lock:
            return sum(1 for call in self.calls if call[0] == method)

    # -- raw bodies --------------------------------------------------------------------

    def info(self) -> CloudInfo:
        self._call("info")
        raw = self.data["info"]
        return CloudInfo(
            cloud=self.name,
            region=raw["region"],
            user=raw["user"],
            project=raw["project"],
            versions=raw["versions"],
            is_admin=raw["is_admin"],
        )

    def raw_services(self) -> list[dict[str, Any]]:
        self._call("raw_services")
        return copy.deepcopy(self.data["services"])

    def raw_catalog(self) -> list[dict[str, Any]]:
        self._call("raw_catalog")
        return copy.deepcopy(self.data["catalog"])

    def probe(self, url: str, timeout: float) -> tuple[bool, str]:
        self._call("probe", url)
        answered, detail = self.data["probes"].get(url, [False, "not recorded"])
        return bool(answered), str(detail)

    def raw_images(self, visibility: str | None = None) -> list[dict[str, Any]]:
        self._call("raw_images", visibility or "")
        images = copy.deepcopy(self.data["images"])
        if visibility:
            return [i for i in images if i.get("visibility") == visibility]
        return [i for i in images if i.get("visibility") != "community"]

    def raw_hypervisors(
        self,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]]]:
        self._call("raw_hypervisors")
        return (
            copy.deepcopy(self.data["hypervisors"]),
            copy.deepcopy(self.data["services"]),
            copy.deepcopy(self.data["resource_providers"]),
        )

    def raw_servers(self) -> list[dict[str, Any]]:
        self._call("raw_servers")
        return copy.deepcopy(self.data["servers"])

    def raw_deleted_servers(self) -> list[dict[str, Any]]:
        self._call("raw_deleted_servers")
        return copy.deepcopy(self.data.get("deleted_servers", []))

    def raw_hypervisor_parts(
        self,
    ) -> tuple[Iterator[ApiPage], list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """Hypervisors in pages of ``page_size``, each encoded and decoded as the API's."""
        hypervisors, services, providers = self.raw_hypervisors()

        def pages() -> Iterator[ApiPage]:
            for start in range(0, max(1, len(hypervisors)), self.page_size):
                batch = hypervisors[start : start + self.page_size]
                content = json.dumps({"hypervisors": batch}).encode()
                yield decode_page(content, "hypervisors")

        return pages(), services, providers

    def raw_server_pages(self, deleted: bool = False) -> Iterator[ApiPage]:
        """Pages of ``page_size`` servers, each encoded and decoded as the API's would be."""
        self._call("raw_deleted_servers" if deleted else "raw_servers")
        servers = self.data.get("deleted_servers", []) if deleted else self.data["servers"]
        for start in range(0, max(1, len(servers)), self.page_size):
            content = json.dumps({"servers": servers[start : start + self.page_size]}).encode()
            yield decode_page(content, "servers")

    # -- actions (change the recording as Nova would) ----------------------------------

    def _service(self, row: ServiceRow) -> dict[str, Any]:
        for raw in self.data["services"]:
            if raw["id"] == row.id:
                found: dict[str, Any] = raw
                return found
        raise ConnectionFailure(f"compute service {row.id} not found")

    def enable_service(self, service: ServiceRow) -> None:
        self._call("enable_service", service.id)
        raw = self._service(service)
        raw.update(status="enabled", disabled_reason=None)

    def disable_service(self, service: ServiceRow, reason: str | None) -> None:
        self._call("disable_service", service.id, reason or "")
        raw = self._service(service)
        raw.update(status="disabled", disabled_reason=reason)

    def set_forced_down(self, service: ServiceRow, forced: bool) -> None:
        self._call("set_forced_down", service.id, str(forced))
        raw = self._service(service)
        raw.update(forced_down=forced, state="down" if forced else "up")

    def server_action(self, server: ServerRow, action: str) -> None:
        self._call("server_action", server.id, action)
        for raw in self.data["servers"]:
            if raw["id"] == server.id:
                if action == "stop":
                    raw.update({"status": "SHUTOFF", "OS-EXT-STS:power_state": 4})
                elif action in ("start", "reboot", "reboot-hard"):
                    raw.update({"status": "ACTIVE", "OS-EXT-STS:power_state": 1})
                return
        raise ConnectionFailure(f"server {server.id} not found")

    def console_output(self, server: ServerRow, length: int | None = 200) -> str:
        self._call("console_output", server.id)
        text = str(self.data.get("console_output", {}).get(server.id, ""))
        if length:
            text = "\n".join(text.splitlines()[-length:])
        return text

    def remote_console_url(self, server: ServerRow, protocol: str = "vnc") -> str:
        self._call("remote_console_url", server.id, protocol)
        port = 6083 if protocol == "serial" else 6080
        return f"ws://console.invalid:{port}/?token=recorded-{protocol}"


class _Response:
    """What the console reads of a keystoneauth response: its body as sent."""

    def __init__(self, body: Any) -> None:
        self.content = json.dumps(body).encode()


class FakeNovaAdapter:
    """``conn.compute`` over a recording, paginating ``GET /servers/detail`` (and
    ``/os-hypervisors/detail``) as Nova does.

    Nova returns at most ``min(limit, max_limit)`` servers after ``marker`` and, when it
    cut the list, a ``servers_links`` entry with ``rel: next`` (nova/api/openstack/common.py
    ``_get_collection_links``). ``max_limit`` is the deployment's ``[api] max_limit``, which
    caps what a client asks for: a client that stops at a short page loses servers.
    """

    def __init__(self, recording: dict[str, Any], *, max_limit: int = 1000) -> None:
        self.data = recording
        self.max_limit = max_limit
        #: The query of every request, in order.
        self.queries: list[dict[str, Any]] = []

    def get_endpoint_data(self) -> Any:
        class _Data:
            max_microversion = (2, 100)

        return _Data()

    def get(self, path: str, **kwargs: Any) -> _Response:
        params = dict(kwargs.get("params") or {})
        self.queries.append({"path": path, **params})
        if path == "/os-services":
            return _Response({"services": self.data["services"]})
        if path == "/os-hypervisors/detail":
            return _Response(self._page("hypervisors", self.data["hypervisors"], params))
        if path != "/servers/detail":
            raise ConnectionFailure(f"not recorded: GET {path}")
        deleted = params.get("deleted")
        servers = self.data.get("deleted_servers", []) if deleted else self.data["servers"]
        return _Response(self._page("servers", servers, params))

    def _page(self, key: str, items: list[dict[str, Any]], params: dict[str, Any]) -> Any:
        start = 0
        if "marker" in params:
            ids = [s["id"] for s in items]
            if params["marker"] not in ids:  # Nova answers 400 for an unknown marker
                raise ConnectionFailure(f"marker {params['marker']} could not be found")
            start = ids.index(params["marker"]) + 1
        limit = min(int(params.get("limit", self.max_limit)), self.max_limit)
        batch = items[start : start + limit]
        body: dict[str, Any] = {key: batch}
        if batch and len(batch) == limit:  # Nova links "next" whenever the page is full
            href = f"http://nova.invalid/v2.1/{key}?limit={limit}&marker={batch[-1]['id']}"
            body[f"{key}_links"] = [{"rel": "next", "href": href}]
        return body


class FakePlacementAdapter:
    """``conn.placement`` over a recording's ``resource_providers``."""

    def __init__(self, recording: dict[str, Any]) -> None:
        self.providers: dict[str, dict[str, Any]] = recording["resource_providers"]

    def get(self, path: str, **kwargs: Any) -> _Response:
        if path == "/resource_providers":
            listed = [{"uuid": u, "name": p["name"]} for u, p in self.providers.items()]
            return _Response({"resource_providers": listed})
        _, _, uuid, what = path.split("/")
        return _Response({what: self.providers[uuid][what]})


class FakeConnection:
    """Just enough of ``openstack.connection.Connection`` for the real source's server,
    hypervisor and service lists."""

    def __init__(
        self, recording: dict[str, Any], *, max_limit: int = 1000, admin: bool = True
    ) -> None:
        self.compute = FakeNovaAdapter(recording, max_limit=max_limit)
        self.placement = FakePlacementAdapter(recording)
        roles = ["admin", "member"] if admin else ["member"]

        class _Access:
            role_names = roles

        class _Auth:
            def get_access(self, session: Any) -> Any:
                return _Access()

        class _Session:
            auth = _Auth()

        self.session = _Session()
