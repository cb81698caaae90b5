"""The agent bus over RabbitMQ (pika): :class:`AgentBus` on hypervisors, :class:`ConsoleBus`
in consoles.

One I/O thread owns each connection (pika is not thread-safe; see
:mod:`novaconsole.agentbus.link`): other threads hand work over through a queue and wake
it with ``add_callback_threadsafe``. It keeps AMQP heartbeats,
publishes with publisher confirms, and reconnects with jittered backoff over the list of
brokers. Publishes wait in a bounded buffer until the broker confirmed them, so what was not
confirmed is sent again after a reconnect (a message may then arrive twice; readers drop
duplicates by nonce).

Topology, on a vhost of its own (default ``/novaconsole``):

* exchange ``novaconsole.agents`` (topic): agents publish ``KIND.HOST`` (heartbeat,
  inventory, event). Each console has a durable quorum queue ``novaconsole.console.NAME``
  for events and inventories (loss matters) and an exclusive queue of its own for
  heartbeats (they do not). Each agent keeps two last-value quorum queues
  ``novaconsole.last.HOST.heartbeat`` / ``.inventory`` (``x-max-length=1``, drop-head), so
  :meth:`ConsoleBus.latest` reads every agent's latest state at once, without waiting a
  heartbeat interval.
* exchange ``novaconsole.commands`` (direct): commands to ``HOST``, into the agent's quorum
  queue ``novaconsole.agent.HOST.commands`` (a short message TTL).

The durable queues are quorum queues so that in a RabbitMQ cluster they outlive the loss of
any one node (a classic queue is unavailable while its home node is down); the exclusive
ones (heartbeats, replies) belong to one connection and are declared again with it.
* exchange ``novaconsole.replies`` (direct): replies to the console's exclusive reply queue.

Every message is a signed envelope (:mod:`novaconsole.agentbus.envelope`): agents sign with
their own key, consoles with the console key; each side verifies against the keys it trusts.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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
from novaconsole.agentbus.journal import CommandJournal as CommandJournal
from novaconsole.agentbus.keys import Keyring, SigningKey
from novaconsole.agentbus.link import ConnectionLostWhileSending as ConnectionLostWhileSending
from novaconsole.agentbus.link import Link, Outgoing
from novaconsole.agentbus.messages import (
    BodyError,
    CommandReply,
    CommandRequest,
    DomainEvent,
    Heartbeat,
    Inventory,
)
from novaconsole.agentbus.settings import BusSettings
from novaconsole.errors import ConfigError, ConnectionFailure

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


@dataclass(frozen=True)
class BrokerPermissions:
    """What one broker user may do on the bus's vhost (``rabbitmqctl set_permissions`` and
    ``set_topic_permissions`` regular expressions)."""

    configure: str
    write: str
    read: str
    #: Routing keys the user may publish to :data:`EXCHANGE_AGENTS` with (None: any).
    topic_write: str | None = None
    topic_read: str | None = None


def agent_user(host: str) -> str:
    """The broker user of the agent on ``host`` (provisioning makes one per agent)."""
    return f"novaconsole-agent-{host}"


def agent_permissions(host: str) -> BrokerPermissions:
    """The least an agent for ``host`` needs: declare the exchanges and its own three
    queues, publish on the agents exchange with its own routing keys only, and on the
    replies exchange, consume its own command queue."""
    import re

    h = re.escape(host)
    own = rf"novaconsole\.agent\.{h}\.commands|novaconsole\.last\.{h}\.(heartbeat|inventory)"
    exchanges = r"novaconsole\.(agents|commands|replies)"
    return BrokerPermissions(
        configure=rf"^({exchanges}|{own})$",
        write=rf"^(novaconsole\.(agents|replies)|{own})$",
        read=rf"^(novaconsole\.(agents|commands)|novaconsole\.agent\.{h}\.commands)$",
        topic_write=rf"^(heartbeat|inventory|event)\.{h}$",
        # Binding its last-value queues to the topic exchange is a topic read.
        topic_read=rf"^(heartbeat|inventory)\.{h}$",
    )


#: A console's user: everything on the vhost (it declares its queues and reads them all).
CONSOLE_PERMISSIONS = BrokerPermissions(".*", ".*", ".*")

_LAST_VALUE_ARGS = {"x-max-length": 1, "x-overflow": "drop-head"}


def _declare_agent_queue(conn: BlockingConnection, name: str, arguments: dict[str, Any]) -> None:
    """Declare one of an agent's own durable queues as a quorum queue.

    Quorum, not classic: a classic durable queue lives on one node, and while that node is
    down every redeclare of it elsewhere in the cluster answers ``NOT_FOUND - home node
    ... is down``, so an agent that lost its node could not set up again on another. A
    quorum queue is replicated (Raft) and stays available while a majority of its members
    is up; on a single-node broker it is simply a queue of that node. RabbitMQ 3.10's
    quorum queues have what these need: ``x-max-length`` with ``x-overflow=drop-head``
    (the last-value queues) and message TTL, per queue and per message (commands).

    A queue of the same name declared otherwise (a classic one from an agent of before,
    or a changed ``command_ttl``) answers 406 PRECONDITION_FAILED: the agent owns these
    queues, so it replaces it (what is lost is a stale heartbeat or inventory, or
    commands that expire within seconds anyway). A channel of its own: the 406 closes it.
    """
    args = {"x-queue-type": "quorum", **arguments}
    channel = conn.channel()
    try:
        try:
            channel.queue_declare(name, durable=True, arguments=args)
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 406:
                raise
            log.warning(
                "bus: queue %s exists with other arguments (%s); replacing it with a quorum queue",
                name,
                " ".join(str(exc.reply_text).split())[:200],
            )
            channel = conn.channel()
            channel.queue_delete(name)
            channel.queue_declare(name, durable=True, arguments=args)
    finally:
        if channel.is_open:
            with contextlib.suppress(Exception):
                channel.close()


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
        self._link = Link(settings, f"agent {host}", self._setup, self._connected)
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
            Outgoing(
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
        self._link.publish(Outgoing(EXCHANGE_REPLIES, reply_to, data, "reply", persistent=False))

    # -- the I/O thread --------------------------------------------------------------

    def _setup(self, conn: BlockingConnection, channel: BlockingChannel) -> None:
        _declare_exchanges(channel)
        for kind in ("heartbeat", "inventory"):
            name = last_value_queue(self.host, kind)
            _declare_agent_queue(conn, name, _LAST_VALUE_ARGS)
            channel.queue_bind(name, EXCHANGE_AGENTS, routing_key=f"{kind}.{self.host}")
        commands = command_queue(self.host)
        _declare_agent_queue(
            conn, commands, {"x-message-ttl": int(self.settings.command_ttl * 1000)}
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
        self._link = Link(settings, f"console {settings.console_name}", self._setup)
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

        def render() -> bytes:
            # On the I/O thread, at the first attempt: the reply queue of this connection.
            request = CommandRequest(
                command=command,
                args=dict(args or {}),
                reply_to=self._reply_queue,
                correlation_id=correlation_id,
            )
            return seal(self.key, "command", host, request.to_dict())[0]

        def done(error: Exception | None) -> None:
            if error is None:
                return
            with self._pending_lock:
                self._pending.pop(correlation_id, None)
            failure: ConnectionFailure
            if isinstance(error, ConnectionFailure):
                failure = error
            elif isinstance(error, pika.exceptions.UnroutableError):
                failure = ConnectionFailure(
                    f"agent bus: no agent queue for host {host!r} on vhost {self.settings.vhost}"
                )
            else:
                failure = ConnectionFailure(f"agent bus: broker refused the command to {host!r}")
            if not future.done():
                future.set_exception(failure)

        self._link.publish(
            Outgoing(
                EXCHANGE_COMMANDS,
                host,
                b"",
                "command",
                persistent=False,
                mandatory=True,
                expiration_ms=int(self.settings.command_ttl * 1000),
                on_done=done,
                render=render,
                once=True,
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
