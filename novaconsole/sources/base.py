"""The contract every console data source fulfils, and the parsing they share.

A source fetches raw API bodies (``raw_*``) and performs actions; turning bodies into rows
is done here once, so the real source and the tests' recorded fake parse identically.
Nothing here imports Textual: sources are plain blocking code the UI runs in threads.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from novaconsole.errors import ConnectionFailure
from novaconsole.sources.parse import (
    HypervisorJoin,
    ServerParser,
    endpoint_rows,
    image_row,
    service_row,
)
from novaconsole.sources.rawstore import ApiPage, PagedBody, RawPage, pack_raw, paused_gc
from novaconsole.sources.rows import (
    CloudInfo,
    EndpointRow,
    HypervisorRow,
    ImageRow,
    ServerRow,
    ServiceRow,
)

#: Servers parsed between two calls of a listing's ``pace`` (a few milliseconds of work).
PACE_ROWS = 250
#: Seconds a catalog reachability probe waits for any HTTP answer.
PROBE_TIMEOUT = 2.0


def _no_pace() -> None:
    """The default pace between pages: none."""


class CloudSource(ABC):
    """Blocking access to one cloud; every method may raise ``NovaconsoleError``."""

    #: The cloud's name as the operator knows it (clouds.yaml entry).
    name: str
    #: Image id -> name, filled by :meth:`images` so server rows can name their image.
    image_names: dict[str, str]

    # -- raw bodies (implemented by the real source and the tests' fake) --------------

    @abstractmethod
    def info(self) -> CloudInfo:
        """Who and where we are, for the header."""

    @abstractmethod
    def raw_services(self) -> list[dict[str, Any]]:
        """``GET /os-services`` entries."""

    @abstractmethod
    def raw_catalog(self) -> list[dict[str, Any]]:
        """The token's service catalog (services with their endpoints)."""

    @abstractmethod
    def probe(self, url: str, timeout: float) -> tuple[bool, str]:
        """Whether ``url`` gives any HTTP answer within ``timeout``, and a short detail."""

    @abstractmethod
    def raw_images(self, visibility: str | None = None) -> list[dict[str, Any]]:
        """Glance ``GET /v2/images`` entries (all pages), optionally of one visibility.

        Glance lists community images only when asked for them by visibility.
        """

    @abstractmethod
    def raw_hypervisors(
        self,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """``(os-hypervisors detail, os-services, {provider uuid: name/inventories/usages})``."""

    @abstractmethod
    def raw_servers(self) -> list[dict[str, Any]]:
        """``GET /servers/detail`` entries, all projects when allowed (all pages)."""

    def raw_server_pages(self, deleted: bool = False) -> Iterator[ApiPage]:
        """``GET /servers/detail`` page by page (``deleted``: :meth:`raw_deleted_servers`).

        Sources that talk to an API override this to yield each page as it arrives, so a
        listing never holds more than one page of decoded bodies; this default makes one
        page of :meth:`raw_servers`.
        """
        entries = self.raw_deleted_servers() if deleted else self.raw_servers()
        content = json.dumps({"servers": entries}, separators=(",", ":")).encode()
        yield ApiPage(content, "servers", entries)

    def raw_hypervisor_parts(
        self,
    ) -> tuple[Iterator[ApiPage], list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """:meth:`raw_hypervisors` with the hypervisors page by page (``os-hypervisors``
        pages from compute 2.33), so a region's 10,000 bodies are never decoded at once.

        Sources that talk to an API override this; the default makes one page.
        """
        hypervisors, services, providers = self.raw_hypervisors()
        content = json.dumps({"hypervisors": hypervisors}, separators=(",", ":")).encode()
        return iter([ApiPage(content, "hypervisors", hypervisors)]), services, providers

    def raw_deleted_servers(self) -> list[dict[str, Any]]:
        """``GET /servers/detail?deleted=True``: deleted servers not yet archived (admins).

        Not abstract: only sources that can list them (the real one) override it; drift
        then says it could not judge deleted servers.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot list deleted servers")

    # -- actions -----------------------------------------------------------------------

    @abstractmethod
    def enable_service(self, service: ServiceRow) -> None:
        """Enable a compute service."""

    @abstractmethod
    def disable_service(self, service: ServiceRow, reason: str | None) -> None:
        """Disable a compute service, with an optional reason."""

    @abstractmethod
    def set_forced_down(self, service: ServiceRow, forced: bool) -> None:
        """Force a compute service down (after fencing its host), or unset that."""

    @abstractmethod
    def server_action(self, server: ServerRow, action: str) -> None:
        """``start``, ``stop``, ``reboot`` (soft) or ``reboot-hard`` a server."""

    @abstractmethod
    def console_output(self, server: ServerRow, length: int | None = 200) -> str:
        """The server's console log (``os-getConsoleOutput``)."""

    def remote_console_url(self, server: ServerRow, protocol: str = "vnc") -> str:
        """A console URL from Nova for ``server``: ``"vnc"`` (noVNC) or ``"serial"`` (ws://).

        The URL carries a token granting console access: never log or print it unredacted.
        Sources that cannot open consoles say so in one line.
        """
        raise ConnectionFailure(f"cloud {self.name!r}: this source cannot open consoles")

    # -- rows (shared) -----------------------------------------------------------------

    def services(self) -> list[ServiceRow]:
        # A region has a nova-compute per hypervisor: their bodies are kept compressed.
        with paused_gc():
            return pack_raw(service_row(raw) for raw in self.raw_services())

    def catalog(self) -> list[EndpointRow]:
        return endpoint_rows(self.raw_catalog())

    def probed_catalog(self, timeout: float = PROBE_TIMEOUT) -> list[EndpointRow]:
        """The catalog with every distinct endpoint URL probed concurrently."""
        catalog = self.raw_catalog()
        urls = sorted({str(e.get("url")) for s in catalog for e in s.get("endpoints", ())})
        probes: dict[str, tuple[bool, str]] = {}
        if urls:
            with ThreadPoolExecutor(max_workers=min(8, len(urls))) as pool:
                for url, result in zip(
                    urls, pool.map(lambda u: self.probe(u, timeout), urls), strict=True
                ):
                    probes[url] = result
        return endpoint_rows(catalog, probes)

    def images(self, visibility: str | None = None) -> list[ImageRow]:
        rows = [image_row(raw) for raw in self.raw_images(visibility)]
        # Servers show image names; remember the ones seen (never shrink on a filtered list).
        self.image_names = {**getattr(self, "image_names", {}), **{r.id: r.name for r in rows}}
        return rows

    def hypervisors(self) -> list[HypervisorRow]:
        """Rows of every hypervisor, joined page by page; each page's body is kept
        compressed for the details view (as for servers)."""
        with paused_gc():
            pages, services, providers = self.raw_hypervisor_parts()
            join = HypervisorJoin(services, providers)
            rows: list[HypervisorRow] = []
            for page in pages:
                stored = RawPage(page.content, page.key)
                rows.extend(
                    join.row(raw, PagedBody(stored, i)) for i, raw in enumerate(page.entries)
                )
                del page
            return rows + pack_raw(join.unmapped())

    def servers(
        self,
        image_names: Mapping[str, str] | None = None,
        *,
        pace: Callable[[], None] = _no_pace,
        reuse: Mapping[str, ServerRow] | None = None,
    ) -> list[ServerRow]:
        """Rows of every server, page by page: each page's body is kept compressed for the
        details view and its decoded entries are dropped once parsed. ``pace`` is called
        every :data:`PACE_ROWS` servers (the console waits there while the operator types). A row of ``reuse``
        (by id) equal to the one parsed is returned instead, reading its newest body, so a
        refresh of an unchanged region allocates no rows."""
        names = image_names if image_names is not None else getattr(self, "image_names", {})
        return self._server_rows(self.raw_server_pages(), names, pace, reuse or {})

    def deleted_servers(self) -> list[ServerRow]:
        names = getattr(self, "image_names", {})
        return self._server_rows(self.raw_server_pages(deleted=True), names)

    @staticmethod
    def _server_rows(
        pages: Iterator[ApiPage],
        names: Mapping[str, str],
        pace: Callable[[], None] = _no_pace,
        reuse: Mapping[str, ServerRow] | None = None,
    ) -> list[ServerRow]:
        parser = ServerParser(names)
        rows: list[ServerRow] = []
        reuse = reuse or {}
        # The whole listing with the collector paused: its pages are freed by reference
        # counting as they are parsed (see rawstore.paused_gc).
        with paused_gc():
            for page in pages:
                stored = RawPage(page.content, page.key)
                for index, raw in enumerate(page.entries):
                    if index % PACE_ROWS == 0:
                        pace()
                    row = parser.row(raw, PagedBody(stored, index))
                    old = reuse.get(row.id)
                    if old is not None and old == row and isinstance(old.raw, PagedBody):
                        old.raw.repoint(stored, index)
                        row = old
                    rows.append(row)
                del page
        return rows

    def close(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing
        """Release connections (called when the console switches cloud or quits)."""


#: Server actions every source understands, in menu order.
SERVER_ACTIONS: Sequence[str] = ("start", "stop", "reboot", "reboot-hard")
