"""``AgentDirectory``: every compute agent's latest state, folded from verified bus messages.

The bus consumer thread calls :meth:`AgentDirectory.apply` with each message the bus has
already verified (signature, clock window, nonce, host); readers (the UI thread, the CLI)
take immutable :class:`AgentState` snapshots. One lock guards the mutable records; a
snapshot copies out what it needs, so a reader never sees a half-applied message.

Coalescing: :meth:`apply` only records *which* hosts changed. :meth:`drain_changes` hands
the set out and empties it, and the ``on_dirty`` callback fires only when the set goes from
empty to non-empty. A UI that posts one message per ``on_dirty`` and drains in its handler
therefore gets at most one wake-up per drain, however many agents heartbeat meanwhile
(the same idea as toolong's "replace an unprocessed older message").
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

#: A heartbeat older than this many intervals marks the agent stale.
STALE_FACTOR = 3.0
#: Heartbeat interval assumed until an agent says its own.
DEFAULT_HEARTBEAT_INTERVAL = 10.0
#: Recent errors kept per agent (newest last).
MAX_ERRORS = 20
#: Missing sequence numbers remembered per agent (late arrivals can still fill them).
MAX_MISSING = 10_000

#: libvirt domain states as one word each (``virsh domstate`` says "shut off").
_STATE_ALIASES = {
    "shut off": "shutoff",
    "shut_off": "shutoff",
    "shutoff": "shutoff",
    "pmsuspended": "pmsuspended",
    "pm suspended": "pmsuspended",
    "in shutdown": "shutdown",
    "no state": "nostate",
}


def normalise_state(value: object) -> str:
    """A libvirt domain state as one lower-case word: ``running``, ``shutoff``, ``paused``..."""
    text = str(value or "").strip().lower().replace("-", " ")
    if text.startswith("vir_domain_"):
        text = text.removeprefix("vir_domain_").replace("_", " ")
    return _STATE_ALIASES.get(text, text.replace(" ", ""))


class VerifiedMessage(Protocol):
    """What the directory reads from a bus message (``novaconsole.agentbus`` ``Message``)."""

    @property
    def kind(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def seq(self) -> int: ...
    @property
    def ts(self) -> float: ...
    @property
    def body(self) -> Any: ...


def plain(value: Any) -> Any:
    """A message body (dataclass, mapping, list) as plain dicts and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def _first(body: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if key in body and body[key] is not None:
            return body[key]
    return None


@dataclass(frozen=True, slots=True)
class DomainView:
    """One libvirt domain as the agent last reported it (UUID = Nova instance UUID)."""

    uuid: str
    name: str
    state: str
    reason: str = ""
    #: Nova's instance name from the domain XML metadata, when present.
    nova_name: str = ""


def domain_view(raw: Mapping[str, Any]) -> DomainView:
    """A :class:`DomainView` from one domain of an inventory or event body."""
    meta = raw.get("nova")
    nova: Mapping[str, Any] = meta if isinstance(meta, Mapping) else {}
    return DomainView(
        uuid=str(raw.get("uuid") or ""),
        name=str(raw.get("name") or ""),
        state=normalise_state(_first(raw, "state", "state_name")),
        reason=str(_first(raw, "reason", "state_reason") or ""),
        nova_name=str(_first(raw, "nova_name", "instance_name") or nova.get("name") or ""),
    )


@dataclass(frozen=True, slots=True)
class AgentState:
    """An immutable snapshot of one agent, taken at ``now``."""

    host: str
    version: str
    #: Console-clock time (epoch seconds) of the last message of any kind.
    last_seen: float
    #: Agent-clock time of the last heartbeat (or any message, before one arrives).
    last_heartbeat: float | None
    heartbeat_age: float | None
    heartbeat_interval: float
    stale: bool
    #: ``connected``, ``disconnected`` or ``""`` (not reported yet).
    libvirt: str
    domain_count: int | None
    #: ``None`` until the first inventory: counts come from heartbeats before that.
    domains: tuple[DomainView, ...] | None
    nova_compute: str
    errors: tuple[str, ...]
    #: Sequence numbers that never arrived (current), and ever detected.
    missing: int
    gaps_total: int
    restarts: int
    last_seq: int
    messages: int
    #: Drift findings on this host; filled by whoever computes drift (see drift.py).
    drift: int | None = None

    @property
    def domains_by_uuid(self) -> dict[str, DomainView]:
        return {d.uuid: d for d in self.domains or ()}


@dataclass(slots=True)
class _Record:
    host: str
    version: str = ""
    last_seen: float = 0.0
    last_heartbeat: float | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    libvirt: str = ""
    domain_count: int | None = None
    domains: dict[str, DomainView] | None = None
    nova_compute: str = ""
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_ERRORS))
    last_seq: int = -1
    missing: set[int] = field(default_factory=set)
    gaps_total: int = 0
    restarts: int = 0
    messages: int = 0


def _libvirt_state(value: Any) -> str:
    if isinstance(value, bool):
        return "connected" if value else "disconnected"
    if isinstance(value, Mapping):
        return _libvirt_state(_first(value, "connected", "state", "status"))
    return str(value or "")


def _service_state(value: Any) -> str:
    """``running``/``stopped``... from a service entry (string, bool or mapping)."""
    if isinstance(value, bool):
        return "running" if value else "stopped"
    if isinstance(value, Mapping):
        state = _first(value, "state", "active", "running", "status")
        return _service_state(state)
    return str(value or "")


def _services(body: Mapping[str, Any]) -> dict[str, Any]:
    services = body.get("services")
    if isinstance(services, Mapping):
        return dict(services)
    if isinstance(services, list):
        return {str(s.get("name")): s for s in services if isinstance(s, Mapping)}
    return {}


class AgentDirectory:
    """Per-host agent state, written by the bus thread and read by anyone (thread-safe)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        stale_factor: float = STALE_FACTOR,
        on_dirty: Callable[[], None] | None = None,
    ) -> None:
        self._clock = clock
        self.stale_factor = stale_factor
        self._on_dirty = on_dirty
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        self._changed: set[str] = set()
        #: Problems with the bus itself (connection lost, ...), newest last.
        self.bus_errors: deque[str] = deque(maxlen=MAX_ERRORS)

    def set_on_dirty(self, callback: Callable[[], None] | None) -> None:
        """Who to wake when the changed set becomes non-empty (the UI's poster)."""
        with self._lock:
            self._on_dirty = callback
            pending = bool(self._changed)
        if callback is not None and pending:
            callback()

    # -- writing (bus thread) ----------------------------------------------------------

    def apply(self, message: VerifiedMessage) -> None:
        """Fold one verified message in; unknown kinds only count as "seen"."""
        kind = str(message.kind).lower().replace("-", "_")
        body = plain(message.body)
        if not isinstance(body, Mapping):
            body = {}
        with self._lock:
            record = self._records.get(message.host)
            if record is None:
                record = self._records[message.host] = _Record(message.host)
            record.last_seen = self._clock()
            record.messages += 1
            self._sequence(record, int(message.seq))
            if kind == "heartbeat":
                self._heartbeat(record, body, float(message.ts))
            elif kind == "inventory":
                self._inventory(record, body)
            elif kind in ("domain_event", "event", "domain"):
                self._event(record, body)
            if record.last_heartbeat is None:
                record.last_heartbeat = float(message.ts)
            wake = not self._changed
            self._changed.add(message.host)
            callback = self._on_dirty
        if wake and callback is not None:
            callback()

    def note_bus_error(self, text: str) -> None:
        """A bus-level problem (not one agent's); shown by the Agents pane's status."""
        with self._lock:
            self.bus_errors.append(text)

    def forget(self, host: str) -> None:
        with self._lock:
            if self._records.pop(host, None) is not None:
                self._changed.add(host)

    @staticmethod
    def _sequence(record: _Record, seq: int) -> None:
        last = record.last_seq
        if last < 0 or seq == last + 1:
            record.last_seq = max(seq, last)
        elif seq > last + 1:
            gap = range(last + 1, seq)
            record.gaps_total += len(gap)
            record.missing.update(gap)
            if len(record.missing) > MAX_MISSING:  # keep the newest; old ones will not come
                record.missing = set(sorted(record.missing)[-MAX_MISSING:])
            record.last_seq = seq
        elif seq in record.missing:
            record.missing.discard(seq)  # a late (replayed) message filled the gap
        elif seq < last:
            # Lower than anything seen and not a known gap: the agent restarted its count.
            record.restarts += 1
            record.missing.clear()
            record.last_seq = seq
        # seq == last: a duplicate; the bus rejects replays, so nothing else to do.

    @staticmethod
    def _heartbeat(record: _Record, body: Mapping[str, Any], ts: float) -> None:
        record.last_heartbeat = ts
        version = _first(body, "version", "agent_version")
        if version is not None:
            record.version = str(version)
        interval = _first(body, "interval", "heartbeat_interval")
        if isinstance(interval, int | float) and interval > 0:
            record.heartbeat_interval = float(interval)
        libvirt = _first(body, "libvirt", "libvirt_connected", "libvirt_state")
        if libvirt is not None:
            record.libvirt = _libvirt_state(libvirt)
        count = _first(body, "domain_count", "domains")
        if isinstance(count, int) and not isinstance(count, bool):
            record.domain_count = count
        nova = _first(body, "nova_compute", "nova_compute_state")
        if nova is None:
            nova = _services(body).get("nova-compute")
        if nova is not None:
            record.nova_compute = _service_state(nova)
        for line in body.get("errors") or ():
            if str(line) not in record.errors:
                record.errors.append(str(line))

    def _inventory(self, record: _Record, body: Mapping[str, Any]) -> None:
        host = body.get("host")
        facts: Mapping[str, Any] = host if isinstance(host, Mapping) else body
        version = _first(body, "agent_version", "version") or _first(facts, "agent_version")
        if version is not None:
            record.version = str(version)
        domains = [domain_view(d) for d in body.get("domains") or () if isinstance(d, Mapping)]
        record.domains = {d.uuid: d for d in domains}
        record.domain_count = len(domains)
        libvirt = _first(body, "libvirt", "libvirt_connected", "libvirt_state")
        if libvirt is not None:
            record.libvirt = _libvirt_state(libvirt)
        elif not record.libvirt:
            record.libvirt = "connected"  # an inventory lists domains only over a connection
        nova = _services(body).get("nova-compute")
        if nova is not None:
            record.nova_compute = _service_state(nova)
        lines = _first(body, "errors", "nova_compute_errors", "log_errors")
        if isinstance(lines, list):
            record.errors.clear()
            record.errors.extend(str(line) for line in lines[-MAX_ERRORS:])

    @staticmethod
    def _event(record: _Record, body: Mapping[str, Any]) -> None:
        domain = body.get("domain")
        raw = domain if isinstance(domain, Mapping) else body
        uuid = str(_first(raw, "uuid", "domain_uuid") or "")
        if not uuid:
            return
        if record.domains is None:
            record.domains = {}
        event = str(_first(body, "event", "type") or "").lower()
        state = _first(raw, "state", "state_name")
        if event in ("undefined", "lifecycle/undefined") or normalise_state(state) == "undefined":
            record.domains.pop(uuid, None)
        else:
            old = record.domains.get(uuid)
            view = domain_view(raw)
            if old is not None:
                view = DomainView(
                    uuid=uuid,
                    name=view.name or old.name,
                    state=view.state or old.state,
                    reason=view.reason if view.state else old.reason,
                    nova_name=view.nova_name or old.nova_name,
                )
            record.domains[uuid] = view
        record.domain_count = len(record.domains)

    # -- reading (any thread) ----------------------------------------------------------

    def drain_changes(self) -> set[str]:
        """Hosts changed since the last drain (and forget them)."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def hosts(self) -> list[str]:
        with self._lock:
            return sorted(self._records)

    def _snapshot(self, record: _Record, now: float) -> AgentState:
        heard = record.last_heartbeat
        age = None if heard is None else max(0.0, now - heard)
        # Staleness uses the console's receive time too, so an agent with a skewed clock is
        # judged by when we last heard it, not by its own idea of time.
        seen_age = max(0.0, now - record.last_seen)
        limit = self.stale_factor * record.heartbeat_interval
        stale = seen_age > limit or (age is not None and age > limit)
        return AgentState(
            host=record.host,
            version=record.version,
            last_seen=record.last_seen,
            last_heartbeat=heard,
            heartbeat_age=age,
            heartbeat_interval=record.heartbeat_interval,
            stale=stale,
            libvirt=record.libvirt,
            domain_count=record.domain_count,
            domains=None
            if record.domains is None
            else tuple(sorted(record.domains.values(), key=lambda d: (d.name, d.uuid))),
            nova_compute=record.nova_compute,
            errors=tuple(record.errors),
            missing=len(record.missing),
            gaps_total=record.gaps_total,
            restarts=record.restarts,
            last_seq=record.last_seq,
            messages=record.messages,
        )

    def snapshot(self, hosts: Iterable[str] | None = None) -> list[AgentState]:
        """States of ``hosts`` (default: all), sorted by host."""
        now = self._clock()
        with self._lock:
            names = sorted(self._records) if hosts is None else sorted(set(hosts))
            return [self._snapshot(self._records[h], now) for h in names if h in self._records]

    def get(self, host: str) -> AgentState | None:
        found = self.snapshot([host])
        return found[0] if found else None


def agents_as_dicts(states: Sequence[AgentState]) -> list[dict[str, Any]]:
    """JSON-ready agent states (for ``novaconsole agents -f json``)."""
    out = []
    for state in states:
        data = dataclasses.asdict(state)
        data["domains"] = (
            None if state.domains is None else [dataclasses.asdict(d) for d in state.domains]
        )
        data["errors"] = list(state.errors)
        out.append(data)
    return out
