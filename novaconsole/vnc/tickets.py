"""One-time console tickets: what our bridge asks for before it upgrades a websocket.

A ticket is ``secrets.token_urlsafe(32)`` handed to one client; the store keeps only its
SHA-256, the server it is bound to and its deadlines. Unlike Nova's console tokens, which
open any number of sessions until their TTL ends, a ticket opens **one** session: it must
be redeemed within :attr:`TicketPolicy.connect_ttl_s`, it can be redeemed once, and the
session it opens ends after :attr:`TicketPolicy.max_session_s` at the latest or after
:attr:`TicketPolicy.idle_timeout_s` without traffic (the relay enforces those two).
Proxmox's tickets (one connection within seconds) are the model.
"""

from __future__ import annotations

import enum
import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from novaconsole.errors import ConfigError

#: Bytes of randomness in a ticket (token_urlsafe turns 32 bytes into 43 characters).
TICKET_BYTES = 32


@dataclass(frozen=True)
class TicketPolicy:
    """How long tickets and the sessions they open may live (seconds)."""

    #: From issue to first connect; a browser that opens the URL later is refused.
    connect_ttl_s: float = 60.0
    #: Hard cap on a session's length, however busy.
    max_session_s: float = 8 * 3600.0
    #: A session with no bytes either way for this long is closed.
    idle_timeout_s: float = 15 * 60.0

    def __post_init__(self) -> None:
        for name in ("connect_ttl_s", "max_session_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"ticket policy: {name} must be a positive number, not {value}")


class Refusal(enum.Enum):
    """Why a ticket was refused; the value is the sentence the client and the log get."""

    MISSING = "no ticket in the request"
    UNKNOWN = "unknown ticket"
    USED = "ticket already used (tickets open one session)"
    EXPIRED = "ticket expired before first connect"
    OTHER_SERVER = "ticket is for another server"


class TicketRefused(Exception):
    """A ticket that does not open a session; never carries the ticket itself."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.value)
        self.refusal = refusal


@dataclass(frozen=True)
class Grant:
    """A redeemed ticket: the session it opens, and that session's deadlines."""

    server_id: str
    #: Monotonic time by which the session must end.
    session_deadline: float
    idle_timeout_s: float


@dataclass
class _Ticket:
    server_id: str
    connect_by: float
    used: bool = False


def ticket_digest(ticket: str) -> bytes:
    """The SHA-256 the store keeps instead of the ticket."""
    return hashlib.sha256(ticket.encode("utf-8", "surrogateescape")).digest()


class TicketStore:
    """Issue and redeem tickets; thread-safe (the bridge serves each client on a thread).

    ``clock`` is ``time.monotonic`` unless a caller needs another monotonic source.
    """

    def __init__(
        self,
        policy: TicketPolicy | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy or TicketPolicy()
        self._clock = clock
        self._lock = threading.Lock()
        self._tickets: dict[bytes, _Ticket] = {}

    def issue(self, server_id: str) -> str:
        """A new ticket for ``server_id``; the caller hands it to exactly one client."""
        ticket = secrets.token_urlsafe(TICKET_BYTES)
        now = self._clock()
        with self._lock:
            self._forget_stale(now)
            self._tickets[ticket_digest(ticket)] = _Ticket(
                server_id, now + self.policy.connect_ttl_s
            )
        return ticket

    def redeem(self, ticket: str | None, server_id: str) -> Grant:
        """Use ``ticket`` for a session on ``server_id``, or raise :class:`TicketRefused`.

        A ticket presented for the wrong server is burnt as well: whoever holds it is not
        the client it was issued to, or is probing.
        """
        if not ticket:
            raise TicketRefused(Refusal.MISSING)
        now = self._clock()
        with self._lock:
            entry = self._tickets.get(ticket_digest(ticket))
            if entry is None:
                raise TicketRefused(Refusal.UNKNOWN)
            if entry.used:
                raise TicketRefused(Refusal.USED)
            if now > entry.connect_by:
                raise TicketRefused(Refusal.EXPIRED)
            entry.used = True
            if entry.server_id != server_id:
                raise TicketRefused(Refusal.OTHER_SERVER)
            return Grant(server_id, now + self.policy.max_session_s, self.policy.idle_timeout_s)

    def outstanding(self) -> int:
        """Tickets issued, not yet used and not yet expired."""
        now = self._clock()
        with self._lock:
            return sum(1 for t in self._tickets.values() if not t.used and now <= t.connect_by)

    def _forget_stale(self, now: float) -> None:
        # Used and expired entries stay a while so a replay is told "used"/"expired"
        # rather than "unknown"; after a session's length they go, bounding memory.
        horizon = self.policy.max_session_s + self.policy.connect_ttl_s
        stale = [d for d, t in self._tickets.items() if now > t.connect_by + horizon]
        for digest in stale:
            del self._tickets[digest]
