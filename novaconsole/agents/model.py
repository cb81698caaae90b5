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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from novaconsole.agentbus import (
    BodyError,
    Domain,
    DomainEvent,
    Heartbeat,
    Inventory,
    Message,
    ServiceStatus,
    parse_body,
)

#: A heartbeat older than this many intervals marks the agent stale.
STALE_FACTOR = 3.0
#: Heartbeat interval assumed until an agent says its own.
DEFAULT_HEARTBEAT_INTERVAL = 10.0
#: Recent errors kept per agent (newest last).
MAX_ERRORS = 20
#: Missing sequence numbers remembered per agent (late arrivals can still fill them).
MAX_MISSING = 10_000

#: The "host" :meth:`AgentDirectory.drain_changes` reports when the feed itself changed.
FEED_CHANGED = "*"
#: Kinds whose bodies change an agent's state (replies belong to whoever asked).
_FOLDED = frozenset({"heartbeat", "inventory", "event"})

#: libvirt domain states as one word each (``virsh domstate`` says "shut off").
_STATE_ALIASES = {
    "shut off": "shutoff",
    "shut_off": "shutoff",
    "shutoff": "shutoff",
    "pmsuspended": "pmsuspended",
    "pm suspended": "pmsuspended",
    "in shutdown": "shutdown",
    "idle": "blocked",
    "no state": "nostate",
}


#: The agent's state words (virsh's), longest first, to split an event's "state reason".
_STATE_WORDS = (
    "in shutdown", "no state", "pmsuspended", "shut off", "shutdown", "shutoff", "running",
    "blocked", "crashed", "paused", "idle",
)  # fmt: skip
#: An event's state when the domain no longer exists (the agent could not look it up).
GONE = "gone"


def split_state(text: str) -> tuple[str, str]:
    """``"shut off destroyed"`` (an event's state and reason, as the agent sends them) →
    ``("shutoff", "destroyed")``; an unknown first word is taken as the state."""
    text = " ".join(text.split())
    lower = text.lower()
    for word in _STATE_WORDS:
        if lower == word or lower.startswith(word + " "):
            return normalise_state(word), text[len(word) :].strip()
    head, _, rest = text.partition(" ")
    return normalise_state(head), rest


def normalise_state(value: object) -> str:
    """A libvirt domain state as one lower-case word: ``running``, ``shutoff``, ``paused``..."""
    text = str(value or "").strip().lower().replace("-", " ")
    if text.startswith("vir_domain_"):
        text = text.removeprefix("vir_domain_").replace("_", " ")
    return _STATE_ALIASES.get(text, text.replace(" ", ""))


@dataclass(frozen=True, slots=True)
class DomainView:
    """One libvirt domain as the agent last reported it (UUID = Nova instance UUID)."""

    uuid: str
    #: libvirt's domain name: Nova's instance name (``instance-0000002a``).
    name: str
    state: str
    reason: str = ""
    #: The server's display name from Nova's metadata in the domain XML, when present.
    nova_name: str = ""


def domain_view(domain: Domain) -> DomainView:
    """A :class:`DomainView` of one domain of an inventory."""
    return DomainView(
        uuid=domain.uuid,
        name=domain.name,
        state=normalise_state(domain.state),
        reason=domain.reason,
        nova_name=domain.nova.display_name if domain.nova is not None else "",
    )


@dataclass(frozen=True, slots=True)
class AgentState:
    """An immutable snapshot of one agent, taken at some ``now`` of the directory's clock."""

    host: str
    #: The host name as Nova knows it (from the inventory; the bus host until then).
    nova_host: str
    version: str
    #: Console-clock time (epoch seconds) of the last message of any kind.
    last_seen: float
    #: Agent-clock time of the last heartbeat (or of the first message, before one arrives).
    last_heartbeat: float | None
    heartbeat_age: float | None
    heartbeat_interval: float
    stale: bool
    #: ``connected``, ``disconnected`` or ``""`` (not reported yet).
    libvirt: str
    libvirt_error: str
    domain_count: int | None
    #: ``None`` until the first inventory: counts come from heartbeats before that.
    domains: tuple[DomainView, ...] | None
    #: ``running``, ``stopped`` or ``""`` (not reported).
    nova_compute: str
    #: How many recent ERROR lines nova-compute logged, and the last ones (inventory).
    error_count: int
    errors: tuple[str, ...]
    #: Sequence numbers that never arrived (now), and ever detected.
    missing: int
    gaps_total: int
    restarts: int
    last_seq: int
    messages: int
    inventories: int
    events: int

    @property
    def domains_by_uuid(self) -> dict[str, DomainView]:
        return {d.uuid: d for d in self.domains or ()}


@dataclass(slots=True)
class _Record:
    host: str
    nova_host: str = ""
    version: str = ""
    last_seen: float = 0.0
    last_heartbeat: float | None = None
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    libvirt: str = ""
    libvirt_error: str = ""
    domain_count: int | None = None
    domains: dict[str, DomainView] | None = None
    nova_compute: str = ""
    error_count: int = 0
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=MAX_ERRORS))
    boot: str | None = None
    last_seq: int = -1
    missing: set[int] = field(default_factory=set)
    gaps_total: int = 0
    restarts: int = 0
    messages: int = 0
    inventories: int = 0
    events: int = 0
    #: The sequence number of the inventory the domains come from (this boot).
    inventory_seq: int = -1
    #: ``domains`` sorted, as snapshots hand it out; None when it must be rebuilt.
    domains_sorted: tuple[DomainView, ...] | None = None


def _nova_compute(services: Sequence[ServiceStatus]) -> str:
    for service in services:
        if service.name == "nova-compute":
            return "running" if service.running else "stopped"
    return ""


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
        #: Bumped on every change; readers cache snapshots against it.
        self.version = 0

    def set_on_dirty(self, callback: Callable[[], None] | None) -> None:
        """Who to wake when the changed set becomes non-empty (the UI's poster)."""
        with self._lock:
            self._on_dirty = callback
            pending = bool(self._changed)
        if callback is not None and pending:
            callback()

    # -- writing (bus thread) ----------------------------------------------------------

    def apply(self, message: Message) -> None:
        """Fold one verified message in; replies and other kinds only count as "seen".

        A body of the wrong shape is recorded as an error of that agent, never raised:
        one bad agent must not stop the bus thread.
        """
        body: Any = None
        problem: str | None = None
        if message.kind in _FOLDED:
            try:
                body = parse_body(message.kind, message.body)
            except BodyError as exc:
                problem = f"malformed {message.kind} body: {exc}"
        with self._lock:
            record = self._records.get(message.host)
            if record is None:
                record = self._records[message.host] = _Record(message.host)
            record.last_seen = self._clock()
            record.messages += 1
            self._sequence(record, message.seq, message.boot)
            if problem is not None:
                record.errors.append(problem)
            elif isinstance(body, Heartbeat):
                self._heartbeat(record, body, message.ts)
            elif isinstance(body, Inventory):
                if self._newer_than_inventory(record, message):
                    self._inventory(record, body)
                    record.domains_sorted = None
                    record.inventory_seq = message.seq if message.seq is not None else -1
            elif isinstance(body, DomainEvent):
                record.events += 1
                if self._newer_than_inventory(record, message):
                    self._event(record, body)
                    record.domains_sorted = None
            if record.last_heartbeat is None:
                record.last_heartbeat = message.ts
            self.version += 1
            wake = not self._changed
            self._changed.add(message.host)
            callback = self._on_dirty
        if wake and callback is not None:
            callback()

    def touch(self) -> None:
        """Something about the feed itself changed (connected, lost): wake the readers."""
        with self._lock:
            self.version += 1
            wake = not self._changed
            self._changed.add(FEED_CHANGED)
            callback = self._on_dirty
        if wake and callback is not None:
            callback()

    def expect(self, hosts: Iterable[str]) -> None:
        """Agents that should exist (enrolled keys): never heard of means stale, not absent."""
        with self._lock:
            for host in hosts:
                if host not in self._records:
                    self._records[host] = _Record(host)
                    self._changed.add(host)
            self.version += 1

    @staticmethod
    def _newer_than_inventory(record: _Record, message: Message) -> bool:
        """Whether ``message`` comes after the inventory the domains were taken from.

        An inventory numbered N already reflects every event before N; an older event
        (say, from the console's durable queue after a restart, read after the latest
        inventory) must not roll a domain's state back.
        """
        if message.seq is None or record.inventory_seq < 0:
            return True
        return message.seq > record.inventory_seq

    @staticmethod
    def _sequence(record: _Record, seq: int | None, boot: str | None) -> None:
        if boot is not None and boot != record.boot:
            if record.boot is not None:
                # A new agent process numbers from scratch: that is no gap.
                record.restarts += 1
                record.missing.clear()
                record.last_seq = -1
            record.inventory_seq = -1
            record.boot = boot
        if seq is None:
            return
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
        elif seq < last and boot is None:
            # Lower than anything seen and no boot id to tell: the agent restarted its count.
            record.restarts += 1
            record.missing.clear()
            record.last_seq = seq
        # Otherwise a duplicate: the bus rejects replays, nothing more to do.

    @staticmethod
    def _heartbeat(record: _Record, body: Heartbeat, ts: float) -> None:
        if record.last_heartbeat is not None and ts < record.last_heartbeat:
            return  # an older heartbeat (a last-value read racing a live one)
        record.last_heartbeat = ts
        record.version = body.agent_version or record.version
        if body.interval > 0:
            record.heartbeat_interval = body.interval
        record.libvirt = "connected" if body.libvirt_connected else "disconnected"
        record.libvirt_error = body.libvirt_error or ""
        record.domain_count = body.domains
        record.nova_compute = _nova_compute(body.services) or record.nova_compute
        record.error_count = body.errors

    @staticmethod
    def _inventory(record: _Record, body: Inventory) -> None:
        record.nova_host = body.host.nova_host or record.nova_host
        record.domains = {d.uuid: domain_view(d) for d in body.domains}
        record.domain_count = len(record.domains)
        record.libvirt = "connected" if body.libvirt_connected else "disconnected"
        record.libvirt_error = body.libvirt_error or ""
        record.nova_compute = _nova_compute(body.services) or record.nova_compute
        record.errors.clear()
        record.errors.extend(body.errors[-MAX_ERRORS:])
        record.error_count = len(body.errors)
        record.inventories += 1

    @staticmethod
    def _event(record: _Record, body: DomainEvent) -> None:
        if not body.uuid:
            return
        if record.domains is None:
            record.domains = {}
        # The agent sends the domain's state after the event as "state reason" (virsh's
        # words), or "gone" when the domain no longer exists.
        state, reason = split_state(body.state) if body.state else ("", "")
        undefined = body.event == "lifecycle" and body.detail.lower().startswith("undefined")
        if state == GONE or (undefined and state in ("", "shutoff", "nostate")):
            # Gone, or undefined while shut off. (A running transient domain stays:
            # "undefined" then only dropped its persistent config.)
            record.domains.pop(body.uuid, None)
        elif body.event == "lifecycle" or state:
            old = record.domains.get(body.uuid)
            record.domains[body.uuid] = DomainView(
                uuid=body.uuid,
                name=body.name or (old.name if old else ""),
                state=state or (old.state if old else ""),
                reason=(reason or body.reason) if state else (old.reason if old else ""),
                nova_name=old.nova_name if old else "",
            )
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
            nova_host=record.nova_host or record.host,
            version=record.version,
            last_seen=record.last_seen,
            last_heartbeat=heard,
            heartbeat_age=age,
            heartbeat_interval=record.heartbeat_interval,
            stale=stale,
            libvirt=record.libvirt,
            libvirt_error=record.libvirt_error,
            domain_count=record.domain_count,
            domains=self._sorted_domains(record),
            nova_compute=record.nova_compute,
            error_count=record.error_count,
            errors=tuple(record.errors),
            missing=len(record.missing),
            gaps_total=record.gaps_total,
            restarts=record.restarts,
            last_seq=record.last_seq,
            messages=record.messages,
            inventories=record.inventories,
            events=record.events,
        )

    @staticmethod
    def _sorted_domains(record: _Record) -> tuple[DomainView, ...] | None:
        # Snapshots of 1,000 agents are taken several times a second by live redraws;
        # the domains change far less often, so their sorted tuple is kept until they do.
        if record.domains is None:
            return None
        if record.domains_sorted is None:
            record.domains_sorted = tuple(
                sorted(record.domains.values(), key=lambda d: (d.name, d.uuid))
            )
        return record.domains_sorted

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
