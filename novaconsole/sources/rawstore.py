"""Raw API bodies kept compressed, one blob per API page, decoded only when asked for.

A row's ``raw`` is what the details view shows; keeping 100,000 decoded server bodies costs
about 3 KB each (dicts of dicts), so rows hold a :class:`PagedBody` instead: a mapping that
decodes its page (one zlib blob of the page's JSON) on first use. The typed row fields are
what panes display, sort and filter on; only the details view (and rare lookups) pay for a
decode, and the last decoded page is kept so reading one page's rows in turn decodes once.
"""

from __future__ import annotations

import contextlib
import gc
import json
import threading
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

#: zlib level 1: about 8x smaller on Nova's bodies at a fraction of the default's CPU.
COMPRESS_LEVEL = 1

_last_lock = threading.Lock()
_last: tuple[RawPage, list[Any]] | None = None

_gc_lock = threading.Lock()
_gc_pauses = 0
_gc_was_enabled = False


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic garbage collection while a page is decoded and parsed (re-entrant, and
    shared by threads: collection resumes when the last one leaves).

    A decoded page of 1,000 Nova servers is ~25,000 dicts and lists that live only until
    the page is parsed, and are freed by reference counting (JSON has no cycles). With the
    collector running they survive into the oldest generation and set off full
    collections: at 100,000 servers about ten per refresh, each ~100 ms with the GIL held,
    which stalled the UI thread's typing. Paused, they are never scanned at all.

    A listing holds the pause from its first page to its last, the API's answers between
    included (a collection in that gap would promote the page being parsed); other
    threads' cyclic garbage, little, waits until then.
    """
    global _gc_pauses, _gc_was_enabled
    with _gc_lock:
        if _gc_pauses == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_pauses += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_pauses -= 1
            if _gc_pauses == 0 and _gc_was_enabled:
                gc.enable()


def decode(content: bytes) -> Any:
    """``json.loads`` with the collector paused (see :func:`paused_gc`)."""
    with paused_gc():
        return json.loads(content)


def decode_page(content: bytes, key: str) -> ApiPage:
    """One page of a list call, decoded with the collector paused."""
    with paused_gc():
        body = json.loads(content)
        return ApiPage(content, key, body.get(key, []) if isinstance(body, dict) else [])


@dataclass(frozen=True, slots=True)
class ApiPage:
    """One page of a list call: its body as sent (JSON bytes) and its parsed entries."""

    content: bytes
    #: The key of the list in the body (``"servers"``).
    key: str
    entries: list[dict[str, Any]]


class RawPage:
    """A compressed JSON body holding a list of resources (at ``key``, or the body itself)."""

    __slots__ = ("__weakref__", "_blob", "_key")

    def __init__(self, content: bytes, key: str | None = None) -> None:
        self._blob = zlib.compress(content, COMPRESS_LEVEL)
        self._key = key

    @classmethod
    def of(cls, bodies: Sequence[Mapping[str, Any]]) -> RawPage:
        """A page made from already decoded bodies (joins that have no API page of their own)."""
        return cls(json.dumps(list(bodies), separators=(",", ":"), default=str).encode())

    @property
    def size(self) -> int:
        """Bytes held."""
        return len(self._blob)

    def entries(self) -> list[Any]:
        global _last
        with _last_lock:
            if _last is not None and _last[0] is self:
                return _last[1]
        body = decode(zlib.decompress(self._blob))
        items: list[Any] = body[self._key] if self._key is not None else body
        with _last_lock:
            _last = (self, items)
        return items

    def body(self, index: int) -> dict[str, Any]:
        entry: dict[str, Any] = self.entries()[index]
        return entry


class PagedBody(Mapping[str, Any]):
    """One resource's raw body, decoded from its :class:`RawPage` on access."""

    __slots__ = ("_index", "_page")

    def __init__(self, page: RawPage, index: int) -> None:
        self._page = page
        self._index = index

    def _body(self) -> dict[str, Any]:
        return self._page.body(self._index)

    def repoint(self, page: RawPage, index: int) -> None:
        """Read from a newer page: a row found unchanged by a refresh is kept (not rebuilt)
        and shows its newest body."""
        self._page, self._index = page, index

    def __getitem__(self, key: str) -> Any:
        return self._body()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._body()))

    def __len__(self) -> int:
        return len(self._body())

    def __repr__(self) -> str:
        return f"PagedBody({self._body()!r})"


Row = TypeVar("Row")

#: Rows packed per page when the bodies come from a join rather than one API page.
PACK_SIZE = 1000


def pack_raw(rows: Iterable[Row], size: int = PACK_SIZE) -> list[Row]:
    """The same rows with ``raw`` moved into compressed pages of ``size`` bodies.

    For rows (frozen dataclasses with a ``raw`` field) built from joined bodies, such as
    hypervisors with their service and Placement provider.
    """
    out: list[Row] = []
    batch: list[Row] = []

    def flush() -> None:
        page = RawPage.of([row.raw for row in batch])  # type: ignore[attr-defined]
        out.extend(
            replace(row, raw=PagedBody(page, i))  # type: ignore[type-var]
            for i, row in enumerate(batch)
        )
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            flush()
    if batch:
        flush()
    return out
