"""The Agents and Drift panes, and the live updates from the agent bus.

Rows come from the app's :class:`AgentFeed`. A poll (``r``, the refresh timer) re-reads
Nova's servers for drift; bus events do not wait for it: the bus thread only marks hosts
changed in the directory, the directory wakes the app at most once per drain
(:class:`AgentsChanged`), and the app drains on a short timer and rebuilds the agent-aware
panes' rows in thread workers from the directory and the last Nova view.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from textual.message import Message

from novaconsole.agents.drift import (
    ACTIVE_BUT_OFF,
    COUNT,
    DELETED_RUNNING,
    STOPPED_BUT_RUNNING,
    Finding,
)
from novaconsole.agents.feed import AgentFeed
from novaconsole.agents.model import AgentState, agents_as_dicts
from novaconsole.errors import ConfigError
from novaconsole.sources.base import CloudSource
from novaconsole.ui.format import age
from novaconsole.ui.pane import ResourcePane
from novaconsole.ui.table import Column, TableData, update_table


class AgentsChanged(Message):
    """Posted from the bus thread when the directory goes from "no changes" to "some".

    The directory fires its wake-up only on that transition, so however many agents
    report before the app drains, at most one of these waits in the queue.
    """


@dataclass(frozen=True, slots=True)
class AgentRow:
    """One Agents-pane row: the agent's state and the drift found on its host."""

    state: AgentState
    #: ``None`` while Nova's servers are not loaded (or could not be).
    drift: int | None

    @property
    def id(self) -> str:
        return self.state.host

    @property
    def raw(self) -> dict[str, Any]:
        """What the details view shows (Enter)."""
        (data,) = agents_as_dicts([self.state])
        return {**data, "drift": self.drift}


def _errors(state: AgentState) -> str:
    if not state.error_count and not state.errors:
        return ""
    last = state.errors[-1] if state.errors else ""
    count = state.error_count or len(state.errors)
    return f"{count}: {last}" if last else str(count)


def _libvirt(state: AgentState) -> str:
    if state.libvirt == "disconnected" and state.libvirt_error:
        return f"disconnected: {state.libvirt_error}"
    return state.libvirt


def _whole_seconds(value: float | None) -> int | None:
    return None if value is None else int(value)


def _seq(state: AgentState) -> str:
    parts = []
    if state.missing:
        parts.append(f"{state.missing} missing")
    if state.restarts:
        parts.append(f"{state.restarts} restarts")
    return ", ".join(parts)


class AgentPaneBase(ResourcePane):
    """A pane over the app's agent feed; fails alone when the feed could not start."""

    @property
    def feed(self) -> AgentFeed | None:
        feed = getattr(self.app, "agent_feed", None)
        return feed if isinstance(feed, AgentFeed) else None

    def _feed_or_fail(self) -> AgentFeed:
        feed = self.feed
        if feed is None:
            raise ConfigError("the compute agent view is not available in this console")
        if feed.error is not None:
            raise ConfigError(feed.error)
        return feed

    def on_resource_pane_failed(self, message: ResourcePane.Failed) -> None:
        # Textual would run the base handler after this one and reset the text: run it
        # here, first, and stop it running again.
        super().on_resource_pane_failed(message)
        message.prevent_default()
        feed = self.feed
        if message.generation == self.generation and feed is not None and feed.hint:
            self.table.empty_text = f"(no data: {feed.hint})"
            self.table.refresh()

    def live_rows(self, feed: AgentFeed) -> Sequence[Any]:
        """Rows from the directory and the last Nova view (no API call)."""
        raise NotImplementedError

    def fetch(self, source: CloudSource) -> Iterator[Sequence[Any]]:
        feed = self._feed_or_fail()
        yield self.live_rows(feed)  # agents at once; drift once Nova answers
        feed.load_nova(source)
        yield self.live_rows(feed)

    STAGES = 2

    def agents_changed(self) -> None:
        """Rebuild rows from the directory in a worker (a live update, not a poll)."""
        feed = self.feed
        if feed is None or feed.error is not None or self.source is None:
            return
        rebuild_rows(self, lambda: self.live_rows(feed))


#: Guards the per-pane "rebuild running / asked again" state below.
_LIVE_LOCK = threading.Lock()


def rebuild_rows(pane: ResourcePane, rows: Callable[[], Sequence[Any]]) -> None:
    """Re-prepare ``pane``'s table from ``rows()`` in a thread and post it as a live update.

    Posted as a non-final ``Loaded`` of the pane's current generation: the table keeps its
    filter, sort and cursor, and the "refreshed" time stays that of the last poll.

    Only what changed is redone: cells whose values are those of the last live update are
    reused (:func:`update_table`), and nothing is posted when no cell, order or style
    changed while the table still shows that update (the 1 s tick over agents that are
    all silent, say), so the UI thread does no work for it.

    Single-flight per pane: while a rebuild runs, newer requests only replace one pending
    request, which the running worker picks up when done. (A thread worker cannot be
    cancelled, so "exclusive" workers would pile up on a loaded machine and starve the UI
    of the GIL.)
    """
    with _LIVE_LOCK:
        if getattr(pane, "_live_busy", False):
            pane._live_again = rows  # type: ignore[attr-defined]
            return
        pane._live_busy = True  # type: ignore[attr-defined]
        pane._live_again = None  # type: ignore[attr-defined]
    table = pane.table  # looked up here: a worker thread must not query the DOM

    def work() -> None:
        current: Callable[[], Sequence[Any]] | None = rows
        try:
            while current is not None:
                generation, columns = pane.generation, list(pane.columns)
                last: TableData | None = getattr(pane, "_live_last", None)
                if last is not None and (
                    getattr(pane, "_live_generation", None) != generation or table.data is not last
                ):
                    last = None  # a poll or another cloud since: compare with nothing
                data, changed = update_table(last, columns, current(), pane.row_id, pane.row_style)
                pane._live_last, pane._live_generation = data, generation  # type: ignore[attr-defined]
                if changed:
                    pane.post_message(
                        ResourcePane.Loaded(pane, generation, data, pane.clock(), False)
                    )
                with _LIVE_LOCK:
                    current, pane._live_again = pane._live_again, None  # type: ignore[attr-defined]
                    if current is None:
                        pane._live_busy = False  # type: ignore[attr-defined]
        except BaseException:
            with _LIVE_LOCK:
                pane._live_busy = False  # type: ignore[attr-defined]
            raise

    pane.run_worker(work, thread=True, group="agents-live", exit_on_error=False)


class AgentsPane(AgentPaneBase):
    """Every agent: heartbeat age, libvirt and nova-compute, errors, drift; stale in red."""

    pane_name = "agents"
    title = "Agents"
    aliases: ClassVar[tuple[str, ...]] = ("ag", "agent", "agents")

    def build_columns(self) -> list[Column]:
        return [
            Column("host", "Host", lambda r: r.state.host),
            Column("nova_host", "Nova host", lambda r: r.state.nova_host),
            Column("version", "Version", lambda r: r.state.version),
            Column(
                # Whole seconds, as shown: a live update then re-formats a row's age
                # only when its text changes.
                "heartbeat", "Heartbeat", lambda r: _whole_seconds(r.state.heartbeat_age),
                lambda v: age(v) + " ago" if isinstance(v, int | float) else "never",
                numeric=True,
            ),
            Column("stale", "Stale", lambda r: "STALE" if r.state.stale else ""),
            Column("libvirt", "libvirt", lambda r: _libvirt(r.state), max_width=30),
            Column("domains", "Domains", lambda r: r.state.domain_count, numeric=True),
            Column("nova_compute", "nova-compute", lambda r: r.state.nova_compute),
            Column("drift", "Drift", lambda r: r.drift, numeric=True),
            Column("seq", "Sequence", lambda r: _seq(r.state)),
            Column("errors", "Errors", lambda r: _errors(r.state), max_width=50),
        ]  # fmt: skip

    def live_rows(self, feed: AgentFeed) -> Sequence[Any]:
        states = feed.states()
        report = feed.drift(states)
        counts = report.by_host() if report is not None else {}
        return [AgentRow(s, counts.get(s.nova_host) if report else None) for s in states]

    def row_id(self, row: Any) -> str:
        return str(row.state.host)

    def row_style(self, row: Any) -> str | None:
        state: AgentState = row.state
        if state.stale or state.libvirt == "disconnected":
            return "error"
        if state.nova_compute == "stopped" or row.drift or state.missing:
            return "warning"
        return None


_SERIOUS = frozenset({DELETED_RUNNING, ACTIVE_BUT_OFF, STOPPED_BUT_RUNNING})


class DriftPane(AgentPaneBase):
    """Nova against libvirt, per host, with what Nova's periodic tasks will do and when."""

    pane_name = "drift"
    title = "Drift"
    aliases: ClassVar[tuple[str, ...]] = ("drift", "dr")

    def build_columns(self) -> list[Column]:
        return [
            Column("kind", "Kind", lambda f: f.kind),
            Column("host", "Host", lambda f: f.host),
            Column("server", "Server", lambda f: f.server_name, max_width=24),
            Column("nova", "Nova", lambda f: f.nova, max_width=28),
            Column("hypervisor", "Hypervisor", lambda f: f.hypervisor, max_width=20),
            Column("action", "Nova will", lambda f: f.nova_action, max_width=44),
            Column("when", "When", lambda f: f.when, max_width=44),
            Column("id", "Server ID", lambda f: f.server_id),
        ]

    def live_rows(self, feed: AgentFeed) -> Sequence[Any]:
        report = feed.drift()
        self.unchecked = dict(report.unchecked_hosts) if report else {}
        self.deleted_error = feed.nova.deleted_error
        return list(report.findings) if report else []

    def row_id(self, row: Any) -> str:
        finding: Finding = row
        return f"{finding.kind}/{finding.host}/{finding.server_id}"

    def row_style(self, row: Any) -> str | None:
        if row.kind in _SERIOUS:
            return "error"
        return "muted" if row.kind == COUNT else "warning"

    def _status_text(self) -> str:
        text = super()._status_text()
        if self.error is not None:
            return text
        notes = [f"{h}: {why}" for h, why in sorted(getattr(self, "unchecked", {}).items())]
        if notes:
            text += " · not judged: " + ", ".join(notes)
        if getattr(self, "deleted_error", None):
            text += " · deleted servers not checked"
        return text
