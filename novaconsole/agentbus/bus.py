"""The agent bus over RabbitMQ (pika): :class:`AgentBus` on hypervisors, :class:`ConsoleBus`
in consoles.

One I/O thread owns each connection (pika is not thread-safe): other threads hand work
over through a queue and wake it with ``add_callback_threadsafe``. It keeps AMQP heartbeats,
publishes with publisher confirms, and reconnects with jittered backoff over the list of
brokers. Publishes wait in a bounded buffer until the broker confirmed them, so what was not
confirmed is sent again after a reconnect (a message may then arrive twice; readers drop
duplicates by nonce).

Topology, on a vhost of its own (default ``/novaconsole``):

* exchange ``novaconsole.agents`` (topic): agents publish ``KIND.HOST`` (heartbeat,
  inventory, event). Each console has a durable quorum queue ``novaconsole.console.NAME``
  for events and inventories (loss matters) and an exclusive queue of its own for
  heartbeats (they do not). Each agent keeps two last-value queues
  ``novaconsole.last.HOST.heartbeat`` / ``.inventory`` (``x-max-length=1``, drop-head), so
  :meth:`ConsoleBus.latest` reads every agent's latest state at once, without waiting a
  heartbeat interval.
* exchange ``novaconsole.commands`` (direct): commands to ``HOST``, into the agent's queue
  ``novaconsole.agent.HOST.commands`` (a short message TTL).
* exchange ``novaconsole.replies`` (direct): replies to the console's exclusive reply queue.

Every message is a signed envelope (:mod:`novaconsole.agentbus.envelope`): agents sign with
their own key, consoles with the console key; each side verifies against the keys it trusts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import queue
import random
import ssl
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from novaconsole.agentbus.envelope import (
    AGENT_KINDS,
    EnvelopeRejected,
    Message,
    ReplayCache,
    open_envelope,
    seal,
)
from novaconsole.agentbus.keys import Keyring, SigningKey
from novaconsole.agentbus.messages import (
    BodyError,
    CommandReply,
    CommandRequest,
    DomainEvent,
    Heartbeat,
    Inventory,
)
from novaconsole.agentbus.settings import BrokerAddress, BusSettings
from novaconsole.errors import ConfigError, ConnectionFailure
from novaconsole.redact import scrub_secrets

log = logging.getLogger("novaconsole.agentbus")

EXCHANGE_AGENTS = "novaconsole.agents"
EXCHANGE_COMMANDS = "novaconsole.commands"
EXCHANGE_REPLIES = "novaconsole.replies"
#: Events and inventories a console has not read yet, at most (then the oldest go).
CONSOLE_QUEUE_MAX = 100_000


def command_queue(host: str) -> str:
    return f"novaconsole.agent.{host}.commands"


def last_value_queue(host: str, kind: str) -> str:
    return f"novaconsole.last.{host}.{kind}"


def console_queue(name: str) -> str:
    return f"novaconsole.console.{name}"


_LAST_VALUE_ARGS = {"x-max-length": 1, "x-overflow": "drop-head"}

_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    OSError,
)


@dataclass
class _Outgoing:
    exchange: str
    routing_key: str
    body: bytes
    kind: str
    persistent: bool = True
    mandatory: bool = False
    expiration_ms: int | None = None
    seq: int | None = None
    #: Called from the I/O thread once the broker confirmed (None) or refused (the error).
    on_done: Callable[[Exception | None], None] | None = None


class _Link:
    """The I/O thread of one endpoint: connect, set up, serve, reconnect (see module doc)."""

    def __init__(
        self,
        settings: BusSettings,
        name: str,
        setup: Callable[[BlockingConnection, BlockingChannel], None],
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.name = name
        self._setup = setup
        self._on_connected = on_connected
        self._tasks: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_lock = threading.Lock()
        self._stop = threading.Event()
        self.connected = threading.Event()
        self.connection: BlockingConnection | None = None
        self.channel: BlockingChannel | None = None
        #: Incremented on every (re)connect: delivery tags of older channels are void.
        self.generation = 0
        self.connects = 0
        self.last_error = ""
        self.broker: BrokerAddress | None = None
        self._thread: threading.Thread | None = None

    # -- any thread ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"bus-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread (when connected)."""
        self._tasks.put(fn)
        self._wake()

    def call(self, fn: Callable[[], Any], timeout: float) -> Any:
        """Run ``fn`` on the I/O thread and wait for its result."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def task() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

        self.submit(task)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def publish(self, out: _Outgoing) -> None:
        """Queue a publish; it stays buffered until the broker confirms it."""
        with self._outbox_lock:
            if out.kind == "heartbeat":
                # A heartbeat still unsent is stale once a newer one exists (the head may
                # be in flight: it stays).
                head = self._outbox[0] if self._outbox else None
                for stale in [o for o in self._outbox if o.kind == "heartbeat" and o is not head]:
                    self._outbox.remove(stale)
            if len(self._outbox) >= self.settings.replay_buffer:
                dropped = self._outbox.popleft()
                log.warning(
                    "bus %s: replay buffer full (%d): dropped unconfirmed %s seq %s",
                    self.name,
                    self.settings.replay_buffer,
                    dropped.kind,
                    dropped.seq,
                )
            self._outbox.append(out)
        self._wake()

    def pending(self) -> int:
        with self._outbox_lock:
            return len(self._outbox)

    def _wake(self) -> None:
        conn = self.connection
        if conn is not None:
            # The callback only wakes the I/O thread; the work is in our own queues, so it
            # survives a connection that dies in between.
            with contextlib.suppress(Exception):
                conn.add_callback_threadsafe(lambda: None)

    # -- the I/O thread --------------------------------------------------------------

    def _parameters(self, broker: BrokerAddress) -> pika.ConnectionParameters:
        s = self.settings
        ssl_options = None
        if broker.tls:
            ssl_options = pika.SSLOptions(ssl.create_default_context(), broker.host)
        return pika.ConnectionParameters(
            host=broker.host,
            port=broker.port,
            virtual_host=s.vhost,
            credentials=pika.PlainCredentials(s.user, s.password),
            heartbeat=s.heartbeat,
            blocked_connection_timeout=60,
            connection_attempts=1,
            socket_timeout=5,
            ssl_options=ssl_options,
            client_properties={"connection_name": f"novaconsole {self.name}"},
        )

    def describe(self, exc: BaseException) -> str:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return " ".join(scrub_secrets(text, [self.settings.password]).split())[:300]

    def _run(self) -> None:
        brokers = list(self.settings.brokers)
        delay = 0.5
        index = 0
        while not self._stop.is_set():
            broker = brokers[index % len(brokers)]
            index += 1
            try:
                self._connect_and_serve(broker)
                delay = 0.5
            except _CONNECTION_ERRORS as exc:
                self.last_error = self.describe(exc)
                log.warning(
                    "bus %s: %s vhost %s: %s",
                    self.name,
                    broker,
                    self.settings.vhost,
                    self.last_error,
                )
            finally:
                self._teardown()
            if self._stop.is_set():
                break
            if index % len(brokers) == 0:
                # A whole round of brokers failed: back off, with jitter so a thousand
                # agents that lost the same broker do not come back in lockstep.
                self._stop.wait(random.uniform(delay / 2, delay))
                delay = min(delay * 2, 30.0)

    def _connect_and_serve(self, broker: BrokerAddress) -> None:
        conn = BlockingConnection(self._parameters(broker))
        self.connection = conn
        channel = conn.channel()
        channel.confirm_delivery()
        self.channel = channel
        self._setup(conn, channel)
        self.generation += 1
        self.connects += 1
        self.broker = broker
        self.connected.set()
        log.info(
            "bus %s: connected to %s vhost %s (connection %d)",
            self.name,
            broker,
            self.settings.vhost,
            self.connects,
        )
        if self._on_connected is not None:
            self._on_connected()
        while not self._stop.is_set():
            self._run_tasks()
            self._flush(channel)
            conn.process_data_events(time_limit=5.0)
        self._run_tasks()
        self._flush(channel)

    def _run_tasks(self) -> None:
        while True:
            try:
                task = self._tasks.get_nowait()
            except queue.Empty:
                return
            task()

    def _flush(self, channel: BlockingChannel) -> None:
        while True:
            with self._outbox_lock:
                out = self._outbox[0] if self._outbox else None
            if out is None:
                return
            error: Exception | None = None
            try:
                channel.basic_publish(
                    exchange=out.exchange,
                    routing_key=out.routing_key,
                    body=out.body,
                    properties=pika.BasicProperties(
                        content_type="application/json",
                        delivery_mode=2 if out.persistent else 1,
                        type=out.kind,
                        expiration=str(out.expiration_ms) if out.expiration_ms else None,
                    ),
                    mandatory=out.mandatory,
                )
            except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
                # The broker answered: no queue takes it, or it refused. Not ours to retry.
                error = exc
            with self._outbox_lock:
                if self._outbox and self._outbox[0] is out:
                    self._outbox.popleft()
            if out.on_done is not None:
                out.on_done(error)

    def _teardown(self) -> None:
        self.connected.clear()
        conn, self.connection, self.channel = self.connection, None, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):
                conn.close()

    def ack(self, generation: int, tag: int) -> None:
        """Ack a delivery of channel ``generation`` (I/O thread); a stale one is skipped
        (the broker redelivers it on the new channel, flagged redelivered)."""
        if generation == self.generation and self.channel is not None and self.channel.is_open:
            self.channel.basic_ack(tag)


def _declare_exchanges(channel: BlockingChannel) -> None:
    channel.exchange_declare(EXCHANGE_AGENTS, exchange_type="topic", durable=True)
    channel.exchange_declare(EXCHANGE_COMMANDS, exchange_type="direct", durable=True)
    channel.exchange_declare(EXCHANGE_REPLIES, exchange_type="direct", durable=True)


def _load_key(settings: BusSettings) -> SigningKey:
    if settings.signing_key is None:
        raise ConfigError(f"{settings.source}: keys.signing_key: not set")
    return SigningKey.load(settings.signing_key)


def _load_keyring(settings: BusSettings, *, host_bound: bool) -> Keyring:
    if settings.trusted_keys is None:
        raise ConfigError(f"{settings.source}: keys.trusted: not set")
    ring = Keyring.load(settings.trusted_keys, host_bound=host_bound)
    if not len(ring):
        raise ConfigError(f"{settings.source}: keys.trusted: {settings.trusted_keys} holds no key")
    return ring


# -- the agent side --------------------------------------------------------------------

#: What the agent does with a verified command: return the reply (no correlation id needed).
CommandHandler = Callable[[Message, CommandRequest], CommandReply]


class CommandJournal:
    """Command ids already run (with their reply) and running: commands run at most once.

    In memory, bounded; with ``path`` also appended to a file (fsync'd before the command
    runs), so an agent killed mid-command and restarted does not run it again either.
    """

    def __init__(self, path: Path | None = None, keep: int = 1000) -> None:
        self.path = path
        self.keep = keep
        self._replies: OrderedDict[str, CommandReply | None] = OrderedDict()
        self._lock = threading.Lock()
        if path is not None and path.exists():
            self._load(path)

    def _load(self, path: Path) -> None:
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
                cid = str(entry["id"])
                if entry.get("state") == "started":
                    self._replies[cid] = CommandReply(
                        correlation_id=str(entry.get("correlation_id", "")),
                        ok=False,
                        command=str(entry.get("command", "")),
                        error="the agent stopped while running this command; not run again",
                    )
                else:
                    self._replies[cid] = CommandReply.from_dict(entry["reply"])
            except (ValueError, KeyError, TypeError, BodyError):
                continue  # a torn last line after a crash
        while len(self._replies) > self.keep:
            self._replies.popitem(last=False)
        self._rewrite()

    def _rewrite(self) -> None:
        if self.path is None:
            return
        from novaconsole.fileutil import atomic_write

        lines = [
            json.dumps({"id": cid, "state": "done", "reply": reply.to_dict()})
            for cid, reply in self._replies.items()
            if reply is not None
        ]
        atomic_write(self.path, "".join(line + "\n" for line in lines), mode=0o600)

    def _append(self, entry: dict[str, Any]) -> None:
        if self.path is None:
            return
        import os

        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def state(self, cid: str) -> tuple[str, CommandReply | None]:
        """("new"|"running"|"done", the stored reply if done)."""
        with self._lock:
            if cid not in self._replies:
                return "new", None
            reply = self._replies[cid]
            return ("done", reply) if reply is not None else ("running", None)

    def start(self, cid: str, request: CommandRequest) -> None:
        with self._lock:
            self._replies[cid] = None
            self._append(
                {
                    "id": cid,
                    "state": "started",
                    "command": request.command,
                    "correlation_id": request.correlation_id,
                }
            )

    def finish(self, cid: str, reply: CommandReply) -> None:
        with self._lock:
            self._replies[cid] = reply
            self._replies.move_to_end(cid)
            self._append({"id": cid, "state": "done", "reply": reply.to_dict()})
            if len(self._replies) > 2 * self.keep:
                while len(self._replies) > self.keep:
                    self._replies.popitem(last=False)
                self._rewrite()


class AgentBus:
    """The agent's end: publish heartbeats, inventories, events and replies; take commands.

    ``handler`` runs each verified, new command in the bus's command thread and returns
    its reply. ``on_connected`` runs in that thread after every (re)connect (the agent
    publishes a fresh inventory there: a resync).
    """

    def __init__(
        self,
        settings: BusSettings,
        host: str,
        handler: CommandHandler,
        *,
        on_connected: Callable[[], None] | None = None,
        journal: CommandJournal | None = None,
        signing_key: SigningKey | None = None,
        trusted: Keyring | None = None,
    ) -> None:
        self.settings = settings
        self.host = host
        self.key = signing_key or _load_key(settings)
        self.trusted = trusted or _load_keyring(settings, host_bound=False)
        self.handler = handler
        self.on_connected = on_connected
        self.journal = journal or CommandJournal()
        self.boot = uuid.uuid4().hex
        self._seq = 0
        self._seq_lock = threading.Lock()
        self._replay = ReplayCache(window=settings.window)
        self._work: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._link = _Link(settings, f"agent {host}", self._setup, self._connected)
        self._worker: threading.Thread | None = None
        #: Counters for tests and the footprint bench: commands run, rejected.
        self.executed = 0
        self.rejected = 0

    # -- life cycle --------------------------------------------------------------------

    def start(self) -> None:
        self._worker = threading.Thread(target=self._work_loop, name="agent-commands", daemon=True)
        self._worker.start()
        self._link.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop after trying for ``flush_timeout`` s to get the buffer confirmed."""
        deadline = time.monotonic() + flush_timeout
        while (
            self._link.pending() and self._link.connected.is_set() and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        self._work.put(None)
        self._link.stop()
        if self._worker is not None:
            self._worker.join(flush_timeout)

    @property
    def connected(self) -> threading.Event:
        return self._link.connected

    @property
    def connects(self) -> int:
        return self._link.connects

    def pending(self) -> int:
        return self._link.pending()

    # -- publishing ------------------------------------------------------------------

    def _next_seq(self) -> int:
        with self._seq_lock:
            self._seq += 1
            return self._seq

    def _publish(self, kind: str, body: dict[str, Any], *, persistent: bool = True) -> Message:
        # Events and inventories are numbered 1, 2, 3... per agent process (``boot``), so
        # the console sees a gap; a heartbeat carries the last number sent, so the console
        # also sees events it has not received yet.
        if kind == "heartbeat":
            with self._seq_lock:
                seq = self._seq
        else:
            seq = self._next_seq()
        data, message = seal(self.key, kind, self.host, body, seq=seq, boot=self.boot)
        self._link.publish(
            _Outgoing(
                EXCHANGE_AGENTS, f"{kind}.{self.host}", data, kind, persistent=persistent, seq=seq
            )
        )
        return message

    def publish_heartbeat(self, heartbeat: Heartbeat) -> Message:
        return self._publish("heartbeat", heartbeat.to_dict(), persistent=False)

    def publish_inventory(self, inventory: Inventory) -> Message:
        return self._publish("inventory", inventory.to_dict())

    def publish_event(self, event: DomainEvent) -> Message:
        return self._publish("event", event.to_dict())

    def _publish_reply(self, reply_to: str, reply: CommandReply) -> None:
        if not reply_to:
            return
        data, _ = seal(self.key, "reply", self.host, reply.to_dict(), boot=self.boot)
        self._link.publish(_Outgoing(EXCHANGE_REPLIES, reply_to, data, "reply", persistent=False))

    # -- the I/O thread --------------------------------------------------------------

    def _setup(self, conn: BlockingConnection, channel: BlockingChannel) -> None:
        _declare_exchanges(channel)
        for kind in ("heartbeat", "inventory"):
            name = last_value_queue(self.host, kind)
            channel.queue_declare(name, durable=True, arguments=_LAST_VALUE_ARGS)
            channel.queue_bind(name, EXCHANGE_AGENTS, routing_key=f"{kind}.{self.host}")
        commands = command_queue(self.host)
        channel.queue_declare(
            commands,
            durable=True,
            arguments={"x-message-ttl": int(self.settings.command_ttl * 1000)},
        )
        channel.queue_bind(commands, EXCHANGE_COMMANDS, routing_key=self.host)
        channel.basic_qos(prefetch_count=8)
        channel.basic_consume(commands, self._on_delivery, auto_ack=False)

    def _connected(self) -> None:
        if self.on_connected is not None:
            self._work.put(self.on_connected)

    def _on_delivery(
        self,
        channel: BlockingChannel,
        method: Any,
        properties: pika.BasicProperties,
        body: bytes,
    ) -> None:
        generation = self._link.generation
        tag = int(method.delivery_tag)
        try:
            message = open_envelope(
                body,
                self.trusted,
                kinds={"command"},
                host=self.host,
                window=self.settings.window,
                max_age=self.settings.window,
            )
        except EnvelopeRejected as exc:
            self.rejected += 1
            log.warning("command rejected: %s", exc)
            channel.basic_ack(tag)
            return
        redelivered = bool(method.redelivered)

        def ack() -> None:
            self._link.submit(lambda: self._link.ack(generation, tag))

        # The command itself runs in the command thread: a long one must not starve the
        # connection's heartbeats.
        self._work.put(lambda: self._run_command(message, redelivered, ack))

    # -- the command thread ----------------------------------------------------------

    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            try:
                item()
            except Exception as exc:  # one bad command must not end the agent
                log.error("agent: command thread: %s", self._link.describe(exc))

    def _run_command(self, message: Message, redelivered: bool, ack: Callable[[], None]) -> None:
        state, stored = self.journal.state(message.id)
        if state == "done" and stored is not None:
            if redelivered:
                log.info("command %s redelivered: sent its stored reply, not run again", message.id)
                request_reply_to = str(message.body.get("reply_to", ""))
                self._publish_reply(request_reply_to, stored)
            else:
                self.rejected += 1
                log.warning(
                    "command rejected: replayed (key %s): command id %s already run",
                    message.keyid,
                    message.id,
                )
            ack()
            return
        if state == "running":
            log.info("command %s redelivered while running: its reply follows", message.id)
            ack()
            return
        why = self._replay.check_and_add(message.sender, message.nonce, message.ts, time.time())
        if why is not None:
            self.rejected += 1
            log.warning("command rejected: replayed (key %s): %s", message.keyid, why)
            ack()
            return
        try:
            request = CommandRequest.from_dict(message.body)
        except BodyError as exc:
            self.rejected += 1
            log.warning("command rejected: malformed (key %s): %s", message.keyid, exc)
            ack()
            return
        self.journal.start(message.id, request)
        try:
            reply = self.handler(message, request)
        except Exception as exc:
            reply = CommandReply(
                correlation_id="", ok=False, error=f"{request.command} failed: {exc}"[:500]
            )
        reply.correlation_id = request.correlation_id
        reply.command = request.command
        self.executed += 1
        self.journal.finish(message.id, reply)
        self._publish_reply(request.reply_to, reply)
        ack()


# -- the console side ------------------------------------------------------------------


@dataclass(frozen=True)
class Latest:
    """An agent's latest heartbeat and inventory as the broker holds them (None: none)."""

    host: str
    heartbeat: Message | None = None
    inventory: Message | None = None


class BusTimeout(ConnectionFailure):
    """No reply (or no connection) in time."""


class ConsoleBus:
    """The console's end: verified agent messages, commands with replies, latest state.

    ``start(on_message)`` starts the I/O thread; with ``on_message`` it also consumes the
    console's durable queue and heartbeats, and calls ``on_message(Message)`` for every
    verified agent message from a dispatcher thread of its own (never the I/O thread;
    rejected messages are logged, one line, never delivered). Headless commands start
    without ``on_message`` and use :meth:`latest` and :meth:`request`.
    """

    def __init__(
        self,
        settings: BusSettings,
        *,
        signing_key: SigningKey | None = None,
        trusted: Keyring | None = None,
    ) -> None:
        self.settings = settings
        self.key = signing_key or _load_key(settings)
        self.agents = trusted or _load_keyring(settings, host_bound=True)
        self._on_message: Callable[[Message], None] | None = None
        self._replay = ReplayCache(window=settings.window)
        self._pending: dict[str, tuple[str, concurrent.futures.Future[CommandReply]]] = {}
        self._pending_lock = threading.Lock()
        self._reply_queue = ""
        self._inbox: queue.SimpleQueue[tuple[Message, Callable[[], None] | None] | None] = (
            queue.SimpleQueue()
        )
        self._dispatcher: threading.Thread | None = None
        self._link = _Link(settings, f"console {settings.console_name}", self._setup)
        self._last_seq: dict[tuple[str, str | None], int] = {}
        #: Counters: messages delivered, rejected, sequence gaps seen.
        self.delivered = 0
        self.rejected = 0
        self.gaps = 0

    def start(
        self, on_message: Callable[[Message], None] | None = None, *, wait: float | None = 10.0
    ) -> None:
        """Start; with ``wait``, raise :class:`ConnectionFailure` if not connected in time."""
        self._on_message = on_message
        if on_message is not None:
            self._dispatcher = threading.Thread(
                target=self._dispatch_loop, name="console-dispatch", daemon=True
            )
            self._dispatcher.start()
        self._link.start()
        if wait is not None and not self._link.connected.wait(wait):
            error = self._link.last_error or "no answer"
            self.stop()
            brokers = ", ".join(str(b) for b in self.settings.brokers)
            raise ConnectionFailure(
                f"agent bus {brokers} vhost {self.settings.vhost} "
                f"(from {self.settings.source}): {error}"
            )

    def stop(self) -> None:
        self._link.stop()
        self._inbox.put(None)
        if self._dispatcher is not None:
            self._dispatcher.join(5.0)
        with self._pending_lock:
            for _host, future in self._pending.values():
                if not future.done():
                    future.set_exception(BusTimeout("agent bus stopped"))
            self._pending.clear()

    def __enter__(self) -> ConsoleBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def connected(self) -> threading.Event:
        return self._link.connected

    # -- the I/O thread --------------------------------------------------------------

    def _setup(self, conn: BlockingConnection, channel: BlockingChannel) -> None:
        _declare_exchanges(channel)
        reply = channel.queue_declare("", exclusive=True, auto_delete=True)
        self._reply_queue = str(reply.method.queue)
        channel.queue_bind(self._reply_queue, EXCHANGE_REPLIES, routing_key=self._reply_queue)
        channel.basic_consume(self._reply_queue, self._on_reply, auto_ack=True)
        if self._on_message is None:
            return
        durable = console_queue(self.settings.console_name)
        channel.queue_declare(
            durable,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-max-length": CONSOLE_QUEUE_MAX,
                "x-overflow": "drop-head",
            },
        )
        for kind in ("event", "inventory"):
            channel.queue_bind(durable, EXCHANGE_AGENTS, routing_key=f"{kind}.#")
        beats = channel.queue_declare(
            "", exclusive=True, auto_delete=True, arguments={"x-max-length": 10_000}
        )
        beats_name = str(beats.method.queue)
        channel.queue_bind(beats_name, EXCHANGE_AGENTS, routing_key="heartbeat.#")
        channel.basic_qos(prefetch_count=200)
        channel.basic_consume(durable, self._on_agent_message, auto_ack=False)
        channel.basic_consume(beats_name, self._on_agent_message, auto_ack=True)

    def _verify(self, body: bytes, kinds: Iterable[str]) -> Message | None:
        try:
            # Agent messages are facts with a time: old ones (read after a console
            # restart) are still true of their time, so no maximum age; the future is not.
            return open_envelope(
                body,
                self.agents,
                kinds=frozenset(kinds),
                replay=self._replay,
                window=self.settings.window,
                max_age=None,
            )
        except EnvelopeRejected as exc:
            if exc.reason == "replayed":
                # Mostly a publish the broker took but whose confirm was lost with the
                # connection: the agent sent it again. Dropped either way.
                log.info("agent message dropped as a duplicate: %s", exc)
                return None
            self.rejected += 1
            log.warning("agent message rejected: %s", exc)
            return None

    def _on_agent_message(
        self, channel: BlockingChannel, method: Any, properties: Any, body: bytes
    ) -> None:
        message = self._verify(body, AGENT_KINDS - {"reply"})
        ack: Callable[[], None] | None = None
        if not self._consumer_acks(method):
            ack = None
        else:
            generation, tag = self._link.generation, int(method.delivery_tag)

            def ack() -> None:
                self._link.submit(lambda: self._link.ack(generation, tag))

        if message is None:
            if ack is not None:
                ack()
            return
        self._inbox.put((message, ack))

    def _consumer_acks(self, method: Any) -> bool:
        # Heartbeats come auto-acked; the durable queue's deliveries need an ack.
        return str(method.routing_key).split(".", 1)[0] != "heartbeat"

    def _on_reply(
        self, channel: BlockingChannel, method: Any, properties: Any, body: bytes
    ) -> None:
        message = self._verify(body, {"reply"})
        if message is None:
            return
        try:
            reply = CommandReply.from_dict(message.body)
        except BodyError as exc:
            log.warning("agent reply rejected: malformed (key %s): %s", message.keyid, exc)
            return
        with self._pending_lock:
            entry = self._pending.get(reply.correlation_id)
            if entry is None:
                log.info("agent reply from %s for no pending request (late?)", message.host)
                return
            host, future = entry
            if message.host != host:
                log.warning(
                    "agent reply rejected: wrong-host (key %s): asked %s, answered by %s",
                    message.keyid,
                    host,
                    message.host,
                )
                return
            del self._pending[reply.correlation_id]
        if not future.done():
            future.set_result(reply)

    # -- the dispatcher thread -------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while True:
            item = self._inbox.get()
            if item is None:
                return
            message, ack = item
            self._note_seq(message)
            try:
                if self._on_message is not None:
                    self._on_message(message)
                self.delivered += 1
            except Exception as exc:  # the console's handler failing must not stop the bus
                log.error(
                    "agent bus: on_message failed on %s from %s: %s",
                    message.kind,
                    message.host,
                    exc,
                )
            if ack is not None:
                ack()

    def _note_seq(self, message: Message) -> None:
        if message.seq is None:
            return
        if message.kind == "heartbeat":
            return
        key = (message.sender, message.boot)
        last = self._last_seq.get(key)
        if last is not None and message.seq > last + 1:
            self.gaps += 1
            log.warning("agent %s: events %d..%d missing", message.host, last + 1, message.seq - 1)
        if last is None or message.seq > last:
            self._last_seq[key] = message.seq

    # -- requests --------------------------------------------------------------------

    def request(
        self,
        host: str,
        command: str,
        args: dict[str, Any] | None = None,
        timeout: float = 5.0,
    ) -> CommandReply:
        """Send a signed command to ``host``'s agent and wait for its verified reply.

        Raises :class:`BusTimeout` if none comes in ``timeout`` s, :class:`ConnectionFailure`
        if no agent queue exists for ``host``. A command is sent once, never retried.
        """
        if not self._link.connected.wait(timeout):
            raise BusTimeout(f"agent bus: not connected ({self._link.last_error or 'no answer'})")
        correlation_id = uuid.uuid4().hex
        future: concurrent.futures.Future[CommandReply] = concurrent.futures.Future()
        with self._pending_lock:
            self._pending[correlation_id] = (host, future)
        request = CommandRequest(
            command=command,
            args=dict(args or {}),
            reply_to=self._reply_queue,
            correlation_id=correlation_id,
        )
        data, _ = seal(self.key, "command", host, request.to_dict())

        def done(error: Exception | None) -> None:
            if error is None:
                return
            with self._pending_lock:
                self._pending.pop(correlation_id, None)
            if isinstance(error, pika.exceptions.UnroutableError):
                failure = ConnectionFailure(
                    f"agent bus: no agent queue for host {host!r} on vhost {self.settings.vhost}"
                )
            else:
                failure = ConnectionFailure(f"agent bus: broker refused the command to {host!r}")
            if not future.done():
                future.set_exception(failure)

        self._link.publish(
            _Outgoing(
                EXCHANGE_COMMANDS,
                host,
                data,
                "command",
                persistent=False,
                mandatory=True,
                expiration_ms=int(self.settings.command_ttl * 1000),
                on_done=done,
            )
        )
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            with self._pending_lock:
                self._pending.pop(correlation_id, None)
            raise BusTimeout(
                f"agent bus: no reply from host {host!r} to {command!r} within {timeout:g} s"
            ) from None

    def latest(
        self, hosts: Iterable[str] | None = None, timeout: float = 10.0
    ) -> dict[str, Latest]:
        """Every agent's latest heartbeat and inventory, read from their last-value queues.

        ``hosts`` defaults to every host an enrolled agent key is bound to. Messages of any
        age are returned (a dead agent's last heartbeat shows how long it has been dead);
        one that fails verification is logged and left out.
        """
        wanted = sorted(set(hosts) if hosts is not None else set(self.agents.hosts()))
        if not self._link.connected.wait(timeout):
            raise BusTimeout(f"agent bus: not connected ({self._link.last_error or 'no answer'})")
        result: dict[str, Latest] = self._link.call(lambda: self._read_latest(wanted), timeout)
        return result

    def _read_latest(self, hosts: list[str]) -> dict[str, Latest]:
        conn = self._link.connection
        assert conn is not None
        # A queue that does not exist closes the channel (404): use a channel of its own.
        channel = conn.channel()
        out: dict[str, Latest] = {}
        try:
            for host in hosts:
                found: dict[str, Message | None] = {"heartbeat": None, "inventory": None}
                for kind in found:
                    name = last_value_queue(host, kind)
                    try:
                        channel.queue_declare(name, passive=True)
                    except pika.exceptions.ChannelClosedByBroker:
                        channel = conn.channel()
                        continue
                    method, _props, body = channel.basic_get(name, auto_ack=False)
                    if method is None:
                        continue
                    channel.basic_nack(method.delivery_tag, requeue=True)
                    try:
                        message = open_envelope(
                            body,
                            self.agents,
                            kinds={kind},
                            window=self.settings.window,
                            max_age=None,
                        )
                    except EnvelopeRejected as exc:
                        self.rejected += 1
                        log.warning("agent message rejected: %s (%s)", exc, name)
                        continue
                    if message.host != host:
                        log.warning("agent message rejected: wrong-host in %s", name)
                        continue
                    found[kind] = message
                out[host] = Latest(host, found["heartbeat"], found["inventory"])
        finally:
            with contextlib.suppress(Exception):
                channel.close()
        return out
