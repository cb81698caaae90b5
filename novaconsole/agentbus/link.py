"""The I/O thread of one bus endpoint: it alone owns the pika connection.

pika is not thread-safe: other threads hand work over through :meth:`Link.submit` and
:meth:`Link.publish` (queues), and wake the thread with ``add_callback_threadsafe``.
It keeps AMQP heartbeats, publishes with publisher confirms from a bounded buffer (what was
not confirmed goes out again after a reconnect), and reconnects with jittered backoff
over the list of brokers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import random
import ssl
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from novaconsole.agentbus.settings import BrokerAddress, BusSettings
from novaconsole.errors import ConnectionFailure
from novaconsole.redact import scrub_secrets

log = logging.getLogger("novaconsole.agentbus")

_CONNECTION_ERRORS = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.AMQPChannelError,
    pika.exceptions.ConnectionWrongStateError,
    pika.exceptions.ChannelWrongStateError,
    OSError,
)


@dataclass
class Outgoing:
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
    #: Builds ``body`` on the I/O thread right before the first attempt (a command names
    #: the reply queue of the connection it goes out on).
    render: Callable[[], bytes] | None = None
    #: Never sent again after a lost connection (a command might have run already).
    once: bool = False
    attempted: bool = False


class ConnectionLostWhileSending(ConnectionFailure):
    """A publish that may or may not have reached the broker and is not sent again."""


class Link:
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
        self._outbox: deque[Outgoing] = deque()
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

    def publish(self, out: Outgoing) -> None:
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
            except Exception as exc:
                # A bug in a callback must not end the I/O thread: say it, reconnect.
                self.last_error = self.describe(exc)
                log.error("bus %s: unexpected %s; reconnecting", self.name, self.last_error)
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
            if out.once and out.attempted:
                error = ConnectionLostWhileSending(
                    f"agent bus: connection lost while sending a {out.kind}; not sent again"
                )
            else:
                if out.render is not None and not out.attempted:
                    out.body = out.render()
                out.attempted = True
                error = self._publish_one(channel, out)
            with self._outbox_lock:
                if self._outbox and self._outbox[0] is out:
                    self._outbox.popleft()
            if out.on_done is not None:
                out.on_done(error)

    def _publish_one(self, channel: BlockingChannel, out: Outgoing) -> Exception | None:
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
            refused: Exception = exc
            return refused
        return None

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
