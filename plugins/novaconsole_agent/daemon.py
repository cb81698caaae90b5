"""The compute agent daemon: ``novaconsole --plugin compute-agent [--config FILE] [--once]``.

The main thread owns the schedule: it takes libvirt events from the hypervisor's queue
and publishes them, sends heartbeats, sends an inventory on start, on change (bursts
coalesce), on request and every ``inventory_interval``, and reconnects to libvirt with
backoff when the connection is lost, then resyncs with a full inventory. The bus runs in
threads of its own (see :mod:`novaconsole.agentbus.bus`).

``keygen --out DIR --name NAME`` makes a key pair (``NAME.key`` mode 0600, ``NAME.pub``).
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import random
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from novaconsole import __version__
from novaconsole.agentbus.keys import generate_key_files
from novaconsole.agentbus.messages import DomainEvent, Heartbeat, Inventory
from novaconsole.errors import EXIT_OK, ConfigError, ConnectionFailure
from novaconsole_agent.config import AgentConfig
from novaconsole_agent.hypervisor import Hypervisor, state_words
from novaconsole_agent.node import recent_errors, service_states

log = logging.getLogger("novaconsole.agent")

#: Events that change what an inventory holds (a graphics connect does not).
_CHANGES = {"lifecycle", "device-added", "device-removed", "metadata-change"}
#: Seconds to wait after a change before the inventory goes out (a burst coalesces).
CHANGE_DEBOUNCE = 1.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{self.prog}: {message}")


def setup_logging() -> None:
    """One line per event on stderr (journald or supervisord keep it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s novaconsole-agent %(levelname)s %(message)s")
    )
    handler.set_name("novaconsole-agent")
    root = logging.getLogger()
    # Ours once, beside any handler already there (a host process's, or pytest's caplog,
    # which replacing the list took away from tests that run the daemon in-process).
    root.handlers[:] = [h for h in root.handlers if h.get_name() != "novaconsole-agent"]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    # pika logs each failed connection attempt at length; the bus logs one line itself.
    logging.getLogger("pika").setLevel(logging.CRITICAL)


class Agent:
    """The daemon: one hypervisor connection, one bus, a schedule (see module doc)."""

    def __init__(self, config: AgentConfig) -> None:
        if config.bus is None:
            raise ConfigError(
                f"{config.source}: [bus]: the daemon needs a bus (only --once does not)"
            )
        from novaconsole.agentbus.bus import AgentBus, CommandJournal
        from novaconsole_agent.commands import Commands

        self.config = config
        self.hypervisor = Hypervisor(config.libvirt_uri, read_write=bool(config.mutating))
        self.commands = Commands(config, self.hypervisor, self.publish_inventory)
        journal = None
        if config.state_dir is not None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            journal = CommandJournal(config.state_dir / "commands.jsonl")
        self.bus = AgentBus(
            config.bus,
            config.host,
            self.commands,
            on_connected=self._bus_connected,
            journal=journal,
        )
        self.started = time.time()
        self._collect_lock = threading.Lock()
        self._bus_connects = 0
        self._errors_cache: tuple[tuple[float, int], list[str]] | None = None
        self._stopping = False

    # -- inventory -------------------------------------------------------------------

    def errors(self) -> list[str]:
        path = self.config.nova_compute_log
        if path is None:
            return []
        try:
            st = path.stat()
        except OSError:
            return []
        key = (st.st_mtime, st.st_size)
        if self._errors_cache is None or self._errors_cache[0] != key:
            self._errors_cache = (key, recent_errors(path))
        return self._errors_cache[1]

    def collect(self, cause: str) -> Inventory:
        with self._collect_lock:
            return collect_inventory(self.config, self.hypervisor, cause, self.errors())

    def publish_inventory(self, cause: str) -> Inventory:
        inventory = self.collect(cause)
        self.bus.publish_inventory(inventory)
        log.info(
            "inventory (%s): %d domains, libvirt %s",
            cause,
            len(inventory.domains),
            "up" if inventory.libvirt_connected else "down",
        )
        return inventory

    def heartbeat(self) -> None:
        count = 0
        if self.hypervisor.conn is not None:
            try:
                count = len(self.hypervisor.conn.listAllDomains(0))
            except Exception:
                count = 0
        self.bus.publish_heartbeat(
            Heartbeat(
                agent_version=__version__,
                started=self.started,
                interval=self.config.heartbeat_interval,
                libvirt_connected=self.hypervisor.conn is not None,
                libvirt_uri=self.config.libvirt_uri,
                domains=count,
                services=service_states(self.config.services),
                errors=len(self.errors()),
                libvirt_error=self.hypervisor.last_error,
            )
        )

    def _bus_connected(self) -> None:
        # In the bus's command thread, after every (re)connect: a full resync.
        self._bus_connects += 1
        self.publish_inventory("start" if self._bus_connects == 1 else "resync")

    # -- the schedule ----------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True
        self.hypervisor.events.put("stop")

    def _connect_libvirt(self) -> bool:
        try:
            self.hypervisor.connect()
        except ConnectionFailure as exc:
            log.warning("%s", exc.one_line())
            return False
        log.info(
            "libvirt %s: connected (%s)",
            self.config.libvirt_uri,
            "read-write" if self.hypervisor.read_write else "read-only",
        )
        return True

    def run(self, *, install_signals: bool = True) -> int:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT when ``install_signals``)."""
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        log.info(
            "agent %s for host %s starting (libvirt %s, bus %s vhost %s, commands: %s)",
            __version__,
            self.config.host,
            self.config.libvirt_uri,
            ", ".join(str(b) for b in self.config.bus.brokers) if self.config.bus else "-",
            self.config.bus.vhost if self.config.bus else "-",
            ", ".join(sorted(self.config.allowed)),
        )
        libvirt_up = self._connect_libvirt()
        self.bus.start()
        now = time.monotonic()
        next_heartbeat = now
        next_inventory = now + self.config.inventory_interval
        retry_delay = 1.0
        next_reconnect = now + retry_delay
        dirty_at: float | None = None
        events = self.hypervisor.events
        while not self._stopping:
            now = time.monotonic()
            deadlines = [next_heartbeat, next_inventory]
            if not libvirt_up:
                deadlines.append(next_reconnect)
            if dirty_at is not None:
                deadlines.append(dirty_at)
            try:
                item = events.get(timeout=max(0.0, min(deadlines) - now))
            except queue.Empty:
                item = None
            now = time.monotonic()
            if item == "stop":
                break
            if isinstance(item, str) and item.startswith("closed:"):
                log.warning("libvirt %s: connection closed (%s)", self.config.libvirt_uri, item[7:])
                self.hypervisor.close()
                libvirt_up = False
                next_reconnect = now
                next_heartbeat = now
            elif isinstance(item, DomainEvent):
                self._publish_event(item)
                if item.event in _CHANGES:
                    dirty_at = dirty_at or now + CHANGE_DEBOUNCE
            if not libvirt_up and now >= next_reconnect:
                libvirt_up = self._connect_libvirt()
                if libvirt_up:
                    retry_delay = 1.0
                    dirty_at = None
                    self.publish_inventory("resync")
                    next_inventory = now + self.config.inventory_interval
                else:
                    retry_delay = min(retry_delay * 2, 60.0)
                    next_reconnect = now + random.uniform(retry_delay / 2, retry_delay)
            if dirty_at is not None and now >= dirty_at:
                dirty_at = None
                self.publish_inventory("change")
            if now >= next_inventory:
                next_inventory = now + self.config.inventory_interval
                self.publish_inventory("interval")
            if now >= next_heartbeat:
                next_heartbeat = now + self.config.heartbeat_interval
                if libvirt_up and not self.hypervisor.alive():
                    # Local drivers have no close callback: notice a dead one here.
                    log.warning("libvirt %s: connection lost", self.config.libvirt_uri)
                    self.hypervisor.close()
                    libvirt_up = False
                    next_reconnect = now
                self.heartbeat()
        log.info("agent stopping")
        self.bus.stop()
        self.hypervisor.close()
        return EXIT_OK

    def _publish_event(self, event: DomainEvent) -> None:
        if event.event == "lifecycle" and event.uuid and self.hypervisor.conn is not None:
            try:
                state, reason = self.hypervisor.conn.lookupByUUIDString(event.uuid).state()
                event.state = " ".join(state_words(state, reason))
            except Exception:
                event.state = "gone" if event.detail == "undefined" else ""
        self.bus.publish_event(event)
        log.info(
            "event %s %s %s %s (%s)",
            event.event,
            event.detail,
            event.reason,
            event.name,
            event.uuid,
        )

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("signal %s: stopping", signal.Signals(signum).name)
        self.stop()


def collect_inventory(
    config: AgentConfig, hypervisor: Hypervisor, cause: str, errors: list[str] | None = None
) -> Inventory:
    """One inventory; with libvirt down, one that says so (and no domains)."""
    from novaconsole.agentbus.messages import HostFacts

    services = service_states(config.services)
    errors = recent_errors(config.nova_compute_log) if errors is None else errors
    try:
        facts = hypervisor.host_facts(config.host)
        domains = hypervisor.domains()
    except (ConnectionFailure, Exception) as exc:
        text = exc.one_line() if isinstance(exc, ConnectionFailure) else " ".join(str(exc).split())
        return Inventory(
            host=HostFacts(hostname="", nova_host=config.host),
            services=services,
            errors=errors,
            libvirt_connected=False,
            libvirt_error=text[:300],
            cause=cause,
        )
    return Inventory(host=facts, domains=domains, services=services, errors=errors, cause=cause)


def run_once(config: AgentConfig) -> int:
    """``--once``: one inventory as JSON on stdout; libvirt unreachable is exit 2."""
    hypervisor = Hypervisor(config.libvirt_uri)
    hypervisor.connect()  # ConnectionFailure: the CLI's one line and exit 2
    try:
        inventory = collect_inventory(config, hypervisor, "once")
    finally:
        hypervisor.close()
    if not inventory.libvirt_connected:
        raise ConnectionFailure(inventory.libvirt_error or f"libvirt {config.libvirt_uri}: lost")
    json.dump(inventory.to_dict(), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    if args[:1] == ["keygen"]:
        parser = _Parser(prog="novaconsole --plugin compute-agent keygen")
        parser.add_argument("--out", required=True, type=Path, help="directory for the key pair")
        parser.add_argument(
            "--name", required=True, help="key name: the agent's host name, or console"
        )
        ns = parser.parse_args(args[1:])
        key, pub = generate_key_files(ns.out, ns.name)
        print(f"{key}\n{pub}")
        return EXIT_OK
    parser = _Parser(
        prog="novaconsole --plugin compute-agent",
        description="The compute agent: libvirt's view of this hypervisor, over the bus.",
    )
    parser.add_argument("--config", type=Path, help="agent config (TOML; docs/agent.example.toml)")
    parser.add_argument("--once", action="store_true", help="print one inventory as JSON and exit")
    ns = parser.parse_args(args)
    config = AgentConfig.load(ns.config) if ns.config else AgentConfig.defaults()
    if ns.once:
        return run_once(config)
    if ns.config is None:
        raise ConfigError("compute-agent: --config FILE is needed to run the daemon (or --once)")
    setup_logging()
    return Agent(config).run()
