"""``AgentFeed``: the console's agent view, fed by the bus in a thread of its own (no Textual).

The feed owns an :class:`AgentDirectory`, the bus consumer that writes into it, and the
last Nova servers it fetched (for drift), so panes and headless commands share one view.
A feed that could not start says why in :attr:`AgentFeed.error`, one line naming the file
or broker; panes show that line instead of rows, and every other pane carries on.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from novaconsole.agentbus.bus import ConsoleBus, Latest
from novaconsole.agentbus.settings import CONFIG_ENV, BusSettings, console_config_path
from novaconsole.agents.drift import (
    DriftCache,
    DriftReport,
    NovaTimers,
    compute_drift,
    hypervisor_state,
)
from novaconsole.agents.model import AgentDirectory, AgentState
from novaconsole.errors import ConfigError, ConnectionFailure, NovaconsoleError
from novaconsole.sources.base import CloudSource
from novaconsole.sources.rows import ServerRow

LOG = logging.getLogger("novaconsole.agents")

#: How long the console waits for the broker before saying it is unreachable (it keeps trying).
CONNECT_WAIT = 10.0
#: How old the hypervisor-state view of the Servers column may get before a re-read.
VIEW_MAX_AGE = 1.0


def agents_config_path() -> Path:
    """The console's agents.toml (``$NOVACONSOLE_AGENTS_CONFIG`` or the XDG config dir)."""
    return console_config_path()


#: How to configure agents (the hint of the "not configured" error).
CONFIGURE_HINT = (
    "write it with the bus URL, the console's key and the agents' public keys, "
    f"or point {CONFIG_ENV} at one"
)


def not_configured(path: Path) -> ConfigError:
    """What the Agents pane and ``novaconsole agents`` say when there is no agents config."""
    return ConfigError(f"no compute agents configured: {path} does not exist", hint=CONFIGURE_HINT)


@dataclass(frozen=True, slots=True)
class NovaView:
    """Nova's servers as last fetched for drift: live ones, and deleted ones (admins only)."""

    servers: tuple[ServerRow, ...] = ()
    deleted: tuple[ServerRow, ...] = ()
    #: Why the deleted servers could not be listed (they then cannot be judged).
    deleted_error: str | None = None
    fetched: bool = False


def fetch_nova(source: CloudSource) -> NovaView:
    """Blocking: live servers (all projects) and deleted ones, when this user may list them."""
    servers = source.servers()
    try:
        deleted = source.deleted_servers()
        error = None
    except NotImplementedError as exc:
        deleted, error = [], str(exc)
    except NovaconsoleError as exc:
        deleted, error = [], exc.one_line()
    return NovaView(tuple(servers), tuple(deleted), error, True)


@dataclass
class AgentFeed:
    """One console's agents: the directory, how it is fed, and the Nova view drift uses."""

    directory: AgentDirectory = field(default_factory=AgentDirectory)
    #: Why there is no bus (not configured, bad config, broker unreachable): one line.
    error: str | None = None
    #: What to do about it, if anything useful can be said.
    hint: str | None = None
    timers: NovaTimers = field(default_factory=NovaTimers)
    #: Stops the bus consumer (set by whoever started it).
    stopper: Callable[[], None] | None = None
    clock: Callable[[], float] = time.monotonic
    _nova: NovaView = field(default_factory=NovaView)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _view: dict[str, AgentState] = field(default_factory=dict)
    _view_key: tuple[int, float] = (-1, 0.0)
    _drift: DriftCache = field(default_factory=DriftCache)
    _drift_lock: threading.Lock = field(default_factory=threading.Lock)

    # -- Nova --------------------------------------------------------------------------

    def load_nova(self, source: CloudSource) -> NovaView:
        """Fetch Nova's servers (blocking, in a worker) and keep them for live drift."""
        view = fetch_nova(source)
        with self._lock:
            self._nova = view
        return view

    @property
    def nova(self) -> NovaView:
        with self._lock:
            return self._nova

    # -- views -------------------------------------------------------------------------

    def states(self) -> list[AgentState]:
        return self.directory.snapshot()

    def drift(self, states: Sequence[AgentState] | None = None) -> DriftReport | None:
        """Drift over the last Nova view and the agents now (``None`` before Nova loaded)."""
        nova = self.nova
        if not nova.fetched:
            return None
        agents = self.states() if states is None else states
        with self._drift_lock:  # one cache, used by whichever pane redraws
            return compute_drift(
                nova.servers, nova.deleted, agents, self.timers, cache=self._drift, nova_key=nova
            )

    def states_by_nova_host(self) -> dict[str, AgentState]:
        """Agents keyed by Nova's host name; re-read when they changed or a second passed.

        The Servers pane's column asks once per row, so this must be cheap when nothing
        changed; the time bound keeps the stale marks current when nothing arrives at all.
        """
        version, now = self.directory.version, self.clock()
        with self._lock:
            seen_version, taken = self._view_key
            if version != seen_version or now - taken >= VIEW_MAX_AGE:
                self._view = {s.nova_host: s for s in self.directory.snapshot()}
                self._view_key = (version, now)
            return self._view

    def hypervisor_state(self, row: Any) -> str:
        """The Servers column: the domain's state on the server's host, per its agent."""
        if not isinstance(row, ServerRow):
            return ""
        return hypervisor_state(row, self.states_by_nova_host())

    @classmethod
    def failed(cls, exc: NovaconsoleError) -> AgentFeed:
        """A feed that could not start: the panes show ``exc`` and its hint."""
        return cls(error=str(exc), hint=exc.hint)

    def stop(self) -> None:
        if self.stopper is not None:
            stopper, self.stopper = self.stopper, None
            stopper()


def load_bus_settings() -> BusSettings:
    """The console's bus settings; a missing file is "not configured", with the hint."""
    path = agents_config_path()
    if not path.exists():
        raise not_configured(path)
    return BusSettings.load(path)


def read_latest(bus: ConsoleBus, timeout: float) -> dict[str, Latest]:
    """``bus.latest`` with every failure as a :class:`ConnectionFailure` (one line).

    It reads two queues per enrolled agent, one round trip each, so the wait grows with
    the number of agents (about 2,000 round trips for 1,000 agents).
    """
    hosts = bus.agents.hosts()
    wait = max(timeout, 0.02 * len(hosts))
    try:
        return bus.latest(timeout=wait)
    except NovaconsoleError:
        raise
    except (TimeoutError, concurrent.futures.TimeoutError) as exc:
        raise ConnectionFailure(
            f"agent bus: reading {len(hosts)} agents' latest state took over {wait:g} s"
        ) from exc


def seed_from_latest(directory: AgentDirectory, latest: Mapping[str, Latest]) -> None:
    """Fold the broker's last-value heartbeat and inventory of each agent into ``directory``.

    The heartbeat first: it carries the last sequence number the agent had sent, so
    folding the (older) inventory after it is no gap.
    """
    directory.expect(latest)
    for entry in latest.values():
        if entry.heartbeat is not None:
            directory.apply(entry.heartbeat)
        if entry.inventory is not None:
            directory.apply(entry.inventory)


def open_agent_feed(*, connect_wait: float = CONNECT_WAIT) -> AgentFeed:
    """The console's feed: the bus consumer in its own threads, never blocking the caller.

    A missing or bad config is a failed feed at once. Otherwise the bus starts retrying in
    the background; if it is not connected after ``connect_wait`` seconds the feed says so
    (the panes show it) and clears that as soon as the broker answers.
    """
    try:
        settings = load_bus_settings()
        bus = ConsoleBus(settings)
    except NovaconsoleError as exc:
        return AgentFeed.failed(exc)
    feed = AgentFeed()
    feed.directory.expect(bus.agents.hosts())
    brokers = ", ".join(str(b) for b in settings.brokers)
    where = f"agent bus {brokers} vhost {settings.vhost} (from {settings.source})"
    stopped = threading.Event()

    def connect() -> None:
        # A thread's uncaught exception would print a traceback over the console's screen.
        try:
            serve()
        except Exception as exc:
            feed.error = f"{where}: {type(exc).__name__}: {' '.join(str(exc).split())}"
            LOG.error("%s", feed.error)
            feed.directory.touch()

    def serve() -> None:
        bus.start(feed.directory.apply, wait=None)
        while not stopped.is_set():
            if bus.connected.wait(connect_wait):
                break
            if feed.error is None:
                feed.error = f"{where}: not connected after {connect_wait:g} s (still trying)"
                feed.directory.touch()
        if stopped.is_set():
            return
        try:
            seed_from_latest(feed.directory, read_latest(bus, connect_wait))
        except NovaconsoleError as exc:
            # Live messages still arrive; only the agents' last state before we started is
            # missing until they next heartbeat or send an inventory.
            LOG.warning("%s: reading the agents' latest state: %s", where, exc.one_line())
        if feed.error is not None:
            feed.error = None
        feed.directory.touch()

    def stop() -> None:
        stopped.set()
        bus.stop()

    feed.stopper = stop
    threading.Thread(target=connect, name="agent-feed-connect", daemon=True).start()
    return feed
