"""The real source: raw API bodies through openstacksdk's authenticated adapters.

Lists use ``conn.compute.get(...)`` and friends rather than resource objects: the bodies
stay exactly what the API said (the details view shows them, the recorder stores them) and
10,000 servers parse without building 10,000 SDK resources. Actions use the SDK's calls.
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from novaconsole.cloud import connect, describe_failure
from novaconsole.errors import ConnectionFailure, NovaconsoleError
from novaconsole.sources.base import CloudSource
from novaconsole.sources.rawstore import ApiPage, decode
from novaconsole.sources.rows import CloudInfo, ServerRow, ServiceRow

#: Microversions asked for (capped at what the cloud supports).
SERVICES_MICROVERSION = (2, 69)
HYPERVISORS_MICROVERSION = (2, 88)
SERVERS_MICROVERSION = (2, 69)
#: Every compute microversion the console asks for (the header shows what it got).
COMPUTE_MICROVERSIONS = (SERVICES_MICROVERSION, HYPERVISORS_MICROVERSION, SERVERS_MICROVERSION)
PAGE_SIZE = 1000


def compute_versions_text(top: tuple[int, int] | None) -> str:
    """The compute microversions the console uses against a cloud whose maximum is
    ``top``: ``2.69-2.88 (max 2.104)``; ``2.1`` where the cloud has no microversions.

    Not the endpoint's base version: the SDK's default (2.1) is not what the panes ask for.
    """
    if top is None or top < (2, 2):
        return "2.1"
    used = sorted({min(wanted, top) for wanted in COMPUTE_MICROVERSIONS})
    low, high = used[0], used[-1]
    span = _fmt(low) if low == high else f"{_fmt(low)}-{_fmt(high)}"
    return f"{span} (max {_fmt(top)})"


def _fmt(version: Any) -> str:
    if not version:
        return "?"
    return ".".join(str(part) for part in version)


class OpenStackSource(CloudSource):
    """A cloud reached through an ``openstack.connection.Connection``."""

    def __init__(self, conn: Any, name: str) -> None:
        self.conn = conn
        self.name = name
        self._max_compute: tuple[int, int] | None = None
        self.image_names = {}

    # -- helpers -----------------------------------------------------------------------

    def _fail(self, exc: BaseException, what: str) -> NovaconsoleError:
        if isinstance(exc, NovaconsoleError):
            return exc
        return describe_failure(exc, f"{what} on cloud {self.name!r}")

    def _compute_mv(self, wanted: tuple[int, int]) -> str | None:
        if self._max_compute is None:
            data = self.conn.compute.get_endpoint_data()
            top = getattr(data, "max_microversion", None)
            self._max_compute = (int(top[0]), int(top[1])) if top else (2, 1)
        best = min(wanted, self._max_compute)
        return None if best < (2, 2) else f"{best[0]}.{best[1]}"

    def _get(self, adapter: Any, path: str, what: str, **kwargs: Any) -> tuple[bytes, Any]:
        """A GET's body as sent and as decoded."""
        try:
            response = adapter.get(path, raise_exc=True, **kwargs)
            content: bytes = response.content
            return content, decode(content)
        except Exception as exc:
            raise self._fail(exc, what) from exc

    def _json(self, adapter: Any, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        body: dict[str, Any] = self._get(adapter, path, what, **kwargs)[1]
        return body

    def _page_iter(
        self, adapter: Any, path: str, key: str, what: str, params: dict[str, Any], **kw: Any
    ) -> Iterator[ApiPage]:
        """A Nova/Glance list page by page, following ``*_links``/``next`` with markers."""
        query = dict(params)
        while True:
            content, body = self._get(adapter, path, what, params=query, **kw)
            more = body.get("next") or any(
                link.get("rel") == "next" for link in body.get(f"{key}_links", ())
            )
            entries: list[dict[str, Any]] = body.pop(key, None) or []
            marker = entries[-1]["id"] if entries else None
            page, entries = ApiPage(content, key, entries), []
            # Not kept here while the consumer parses it (nor decoded twice at once).
            yield page
            del page
            if not more or marker is None:
                return
            query["marker"] = marker

    def _pages(
        self, adapter: Any, path: str, key: str, what: str, params: dict[str, Any], **kw: Any
    ) -> list[dict[str, Any]]:
        """All entries of a Nova/Glance list (every page)."""
        items: list[dict[str, Any]] = []
        for page in self._page_iter(adapter, path, key, what, params, **kw):
            items.extend(page.entries)
        return items

    # -- raw bodies --------------------------------------------------------------------

    def info(self) -> CloudInfo:
        try:
            session = self.conn.session
            access = session.auth.get_access(session)
            region = self.conn.config.get_region_name() or ""

            def version(service: str) -> tuple[str, str]:
                try:
                    data = getattr(self.conn, service).get_endpoint_data()
                except Exception:
                    return service, "unreachable"
                if data is None:
                    return service, "none"
                top = getattr(data, "max_microversion", None)
                if service == "compute":
                    cap = (int(top[0]), int(top[1])) if top else None
                    return service, compute_versions_text(cap)
                text = _fmt(data.api_version)
                return service, f"{text} (max {_fmt(top)})" if top else text

            with ThreadPoolExecutor(max_workers=4) as pool:
                versions = dict(pool.map(version, ("compute", "image", "placement", "identity")))
            return CloudInfo(
                cloud=self.name,
                region=region,
                user=str(access.username or access.user_id),
                project=str(access.project_name or access.project_id or ""),
                versions=versions,
                is_admin="admin" in (access.role_names or []),
            )
        except NovaconsoleError:
            raise
        except Exception as exc:
            raise self._fail(exc, "reading the token") from exc

    def raw_services(self) -> list[dict[str, Any]]:
        mv = self._compute_mv(SERVICES_MICROVERSION)
        body = self._json(
            self.conn.compute, "/os-services", "compute service list", microversion=mv
        )
        return list(body.get("services", []))

    def raw_catalog(self) -> list[dict[str, Any]]:
        try:
            session = self.conn.session
            catalog = session.auth.get_access(session).service_catalog.catalog
        except Exception as exc:
            raise self._fail(exc, "catalog list") from exc
        return [dict(service) for service in catalog]

    def probe(self, url: str, timeout: float) -> tuple[bool, str]:
        request = urllib.request.Request(url, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return True, f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:  # any HTTP status means someone answered
            return True, f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return False, " ".join(str(reason).split()) or type(exc).__name__

    def raw_images(self, visibility: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        if visibility:
            params["visibility"] = visibility
        return self._pages(self.conn.image, "/images", "images", "image list", params)

    def raw_hypervisors(
        self,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]]]:
        pages, services, providers = self.raw_hypervisor_parts()
        return [e for page in pages for e in page.entries], services, providers

    def raw_hypervisor_parts(
        self,
    ) -> tuple[Iterator[ApiPage], list[dict[str, Any]], dict[str, dict[str, Any]]]:
        mv = self._compute_mv(HYPERVISORS_MICROVERSION)
        params: dict[str, Any] = {}
        version = tuple(int(p) for p in mv.split(".")) if mv else (2, 1)
        if version >= (2, 33):  # os-hypervisors pages (limit/marker) from 2.33 on
            params["limit"] = PAGE_SIZE
        if version >= (2, 53):
            params["with_servers"] = "true"
        services = self.raw_services()
        placement = self.conn.placement
        body = self._json(placement, "/resource_providers", "resource provider list")
        providers: dict[str, dict[str, Any]] = {
            p["uuid"]: {"name": p.get("name")} for p in body.get("resource_providers", [])
        }

        def fill(uuid: str) -> None:
            inv = self._json(placement, f"/resource_providers/{uuid}/inventories", "inventories")
            use = self._json(placement, f"/resource_providers/{uuid}/usages", "usages")
            providers[uuid]["inventories"] = inv.get("inventories", {})
            providers[uuid]["usages"] = use.get("usages", {})

        if providers:
            with ThreadPoolExecutor(max_workers=min(8, len(providers))) as pool:
                list(pool.map(fill, list(providers)))
        pages = self._page_iter(
            self.conn.compute,
            "/os-hypervisors/detail",
            "hypervisors",
            "hypervisor list",
            params,
            microversion=mv,
        )
        return pages, services, providers

    def raw_server_pages(self, deleted: bool = False) -> Iterator[ApiPage]:
        mv = self._compute_mv(SERVERS_MICROVERSION)
        params: dict[str, Any] = {"limit": PAGE_SIZE}
        if deleted:
            # Nova lists deleted (not yet archived) instances only for admins, and only
            # with deleted=True (nova/api/openstack/compute/servers.py, _get_servers).
            if not self.info_is_admin():
                raise ConnectionFailure(
                    f"listing deleted servers on cloud {self.name!r} needs the admin role"
                )
            params.update(all_tenants="True", deleted="True")
        elif self.info_is_admin():
            params["all_tenants"] = "True"
        what = "deleted server list" if deleted else "server list"
        return self._page_iter(
            self.conn.compute, "/servers/detail", "servers", what, params, microversion=mv
        )

    def raw_servers(self) -> list[dict[str, Any]]:
        return [e for page in self.raw_server_pages() for e in page.entries]

    def raw_deleted_servers(self) -> list[dict[str, Any]]:
        return [e for page in self.raw_server_pages(deleted=True) for e in page.entries]

    def info_is_admin(self) -> bool:
        try:
            session = self.conn.session
            return "admin" in (session.auth.get_access(session).role_names or [])
        except Exception:
            return False

    # -- actions -----------------------------------------------------------------------

    def enable_service(self, service: ServiceRow) -> None:
        try:
            self.conn.compute.enable_service(service.id, host=service.host, binary=service.binary)
        except Exception as exc:
            raise self._fail(exc, f"enabling {service.binary} on {service.host}") from exc

    def disable_service(self, service: ServiceRow, reason: str | None) -> None:
        try:
            self.conn.compute.disable_service(
                service.id, host=service.host, binary=service.binary, disabled_reason=reason
            )
        except Exception as exc:
            raise self._fail(exc, f"disabling {service.binary} on {service.host}") from exc

    def set_forced_down(self, service: ServiceRow, forced: bool) -> None:
        try:
            self.conn.compute.update_service_forced_down(
                service.id, host=service.host, binary=service.binary, forced=forced
            )
        except Exception as exc:
            what = "forcing down" if forced else "unsetting forced-down of"
            raise self._fail(exc, f"{what} {service.binary} on {service.host}") from exc

    def server_action(self, server: ServerRow, action: str) -> None:
        compute = self.conn.compute
        try:
            if action == "start":
                compute.start_server(server.id)
            elif action == "stop":
                compute.stop_server(server.id)
            elif action in ("reboot", "reboot-hard"):
                compute.reboot_server(server.id, "HARD" if action == "reboot-hard" else "SOFT")
            else:
                raise ConnectionFailure(f"unknown server action {action!r}")
        except NovaconsoleError:
            raise
        except Exception as exc:
            raise self._fail(exc, f"{action} of server {server.name} ({server.id})") from exc

    def console_output(self, server: ServerRow, length: int | None = 200) -> str:
        try:
            result = self.conn.compute.get_server_console_output(server.id, length=length)
        except Exception as exc:
            raise self._fail(exc, f"console log of server {server.name} ({server.id})") from exc
        return str(result.get("output", "")) if isinstance(result, dict) else str(result)

    def remote_console_url(self, server: ServerRow, protocol: str = "vnc") -> str:
        console_type = {"vnc": "novnc", "serial": "serial"}.get(protocol)
        if console_type is None:
            raise ConnectionFailure(f"unknown console protocol {protocol!r} (vnc or serial)")
        what = f"{protocol} console of server {server.name} ({server.id})"
        try:
            console = self.conn.compute.create_server_remote_console(
                server.id, protocol=protocol, type=console_type
            )
        except Exception as exc:
            raise self._fail(exc, what) from exc
        url = getattr(console, "url", None)
        if not url:
            raise ConnectionFailure(f"{what} on cloud {self.name!r}: Nova returned no URL")
        return str(url)

    def close(self) -> None:
        # Best effort: the session may already be gone.
        with contextlib.suppress(Exception):
            self.conn.close()


def open_cloud_source(name: str | None, *, timeout: float = 10.0) -> OpenStackSource:
    """Connect (and authenticate) to a cloud from clouds.yaml; errors are one line."""
    conn = connect(name, fallback_to_lab=True, timeout=timeout)
    label = name or conn.config.name or "envvars"
    try:
        conn.authorize()
    except Exception as exc:
        raise describe_failure(exc, f"connecting to cloud {label!r}") from exc
    return OpenStackSource(conn, label)
