"""Signed envelopes for the agent bus, in the manner of DSSE.

The signature covers the exact payload bytes that travel, framed by a pre-authentication
encoding of the payload type and length (``DSSEv1 LEN TYPE LEN BODY``), so nothing is ever
re-serialised before checking and no two (type, body) pairs sign alike. The payload is
parsed only after its signature verified. On the wire::

    {"payloadType": PAYLOAD_TYPE, "payload": BASE64, "signatures": [{"keyid": NAME, "sig": BASE64}]}

and the payload is versioned JSON: ``v``, ``kind``, ``host`` (the hypervisor the message is
about or for), ``sender`` (the signing key's name, repeated inside the signed bytes),
``ts`` (Unix seconds), ``nonce``, ``id``, ``seq`` and ``boot`` (agent messages: a sequence
number per agent process, and that process's start id), ``body``.

:func:`open_envelope` turns bytes into a :class:`Message` or raises
:class:`EnvelopeRejected` whose ``reason`` is one of :data:`REASONS`.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from novaconsole.agentbus.keys import Keyring, SigningKey

PAYLOAD_TYPE = "application/vnd.novaconsole.agentbus+json"
VERSION = 1

#: The kinds of message the bus carries (agents send the first four, consoles commands).
KINDS = frozenset({"heartbeat", "inventory", "event", "reply", "command"})
AGENT_KINDS = frozenset({"heartbeat", "inventory", "event", "reply"})

#: Default clock window (seconds) for ``ts``: older or further in the future is expired.
DEFAULT_WINDOW = 300.0

REASONS = (
    "unsigned",
    "malformed",
    "unknown-key",
    "bad-signature",
    "expired",
    "replayed",
    "wrong-host",
    "unknown-kind",
)


class EnvelopeRejected(Exception):
    """A message that must not be acted on; ``reason`` is one of :data:`REASONS`.

    ``str()`` is one line fit for a log: the reason, the key id if known, and what was wrong
    (never the payload).
    """

    def __init__(self, reason: str, detail: str, *, keyid: str | None = None) -> None:
        assert reason in REASONS, reason
        self.reason = reason
        self.detail = detail
        self.keyid = keyid
        who = f" (key {keyid})" if keyid else ""
        super().__init__(f"{reason}{who}: {detail}")


@dataclass(frozen=True)
class Message:
    """A verified payload, with the name of the key that signed it."""

    kind: str
    host: str
    sender: str
    ts: float
    nonce: str
    id: str
    body: dict[str, Any]
    seq: int | None = None
    boot: str | None = None
    v: int = VERSION
    #: The signing key's name (equal to ``sender``, checked).
    keyid: str = field(default="", compare=False)

    def payload(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "kind": self.kind,
            "host": self.host,
            "sender": self.sender,
            "ts": self.ts,
            "nonce": self.nonce,
            "id": self.id,
            "seq": self.seq,
            "boot": self.boot,
            "body": self.body,
        }


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding: ``DSSEv1 LEN(type) type LEN(body) body``."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def seal(
    key: SigningKey,
    kind: str,
    host: str,
    body: Mapping[str, Any],
    *,
    seq: int | None = None,
    boot: str | None = None,
    ts: float | None = None,
    nonce: str | None = None,
    msg_id: str | None = None,
) -> tuple[bytes, Message]:
    """Sign a new message; return the envelope's bytes and the message as sent."""
    message = Message(
        kind=kind,
        host=host,
        sender=key.name,
        ts=time.time() if ts is None else ts,
        nonce=nonce or secrets.token_hex(16),
        id=msg_id or uuid.uuid4().hex,
        body=dict(body),
        seq=seq,
        boot=boot,
        keyid=key.name,
    )
    return seal_payload(key, message.payload()), message


def seal_payload(key: SigningKey, payload: Mapping[str, Any]) -> bytes:
    """Sign an arbitrary payload mapping as is (tests use it to build bad messages)."""
    raw = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return seal_bytes(key, raw)


def seal_bytes(key: SigningKey, raw: bytes, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """The envelope around payload bytes ``raw``, signed by ``key``."""
    sig = key.sign(pae(payload_type, raw))
    envelope = {
        "payloadType": payload_type,
        "payload": base64.b64encode(raw).decode("ascii"),
        "signatures": [{"keyid": key.name, "sig": base64.b64encode(sig).decode("ascii")}],
    }
    return json.dumps(envelope, separators=(",", ":")).encode("utf-8")


class ReplayCache:
    """Nonces seen recently, per sender: bounded in time (``window``) and size.

    When the size bound forces out an entry that is still in the window, the cache
    remembers its timestamp as a floor: anything not newer than the floor is refused as a
    possible replay (it can no longer be proven new), so the bound never opens a hole.
    Thread-safe.
    """

    def __init__(self, window: float = DEFAULT_WINDOW, max_entries: int = 100_000) -> None:
        self.window = window
        self.max_entries = max_entries
        self._seen: OrderedDict[tuple[str, str], tuple[float, float]] = OrderedDict()
        self._floor = float("-inf")
        self._lock = threading.Lock()

    def seen(self, sender: str, nonce: str) -> bool:
        with self._lock:
            return (sender, nonce) in self._seen

    def check_and_add(self, sender: str, nonce: str, ts: float, now: float) -> str | None:
        """None if new (and now remembered), else why it is refused."""
        with self._lock:
            # Entries are kept in insertion order; those remembered longer than the window
            # can go (their messages are expired by the clock check by now).
            while self._seen:
                first_key, (_ts, added) = next(iter(self._seen.items()))
                if added >= now - self.window:
                    break
                del self._seen[first_key]
            key = (sender, nonce)
            if key in self._seen:
                return f"nonce {nonce} from {sender} already seen"
            if ts <= self._floor:
                return f"timestamp {ts:.3f} is older than what the replay cache still remembers"
            self._seen[key] = (ts, now)
            while len(self._seen) > self.max_entries:
                _key, (old_ts, _added) = self._seen.popitem(last=False)
                self._floor = max(self._floor, old_ts)
            return None


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise EnvelopeRejected("malformed", f"{what} is not a string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise EnvelopeRejected("malformed", f"{what} is not base64") from exc


def open_envelope(
    data: bytes,
    keyring: Keyring,
    *,
    kinds: Collection[str] = KINDS,
    host: str | None = None,
    replay: ReplayCache | None = None,
    window: float = DEFAULT_WINDOW,
    max_age: float | None = DEFAULT_WINDOW,
    now: float | None = None,
) -> Message:
    """Verify and parse one envelope, or raise :class:`EnvelopeRejected`.

    * ``kinds``: the kinds this reader accepts (others: ``unknown-kind``).
    * ``host``: the host the message must be for (an agent checks commands name it);
      a key bound to hosts must also speak for the payload's host (else ``wrong-host``).
    * ``replay``: a :class:`ReplayCache`; a nonce seen before is ``replayed``.
    * ``window``: how far in the future ``ts`` may be; ``max_age``: how far in the past
      (None: any age, for records such as a last heartbeat that are shown with their age).
    """
    now = time.time() if now is None else now
    try:
        outer = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeRejected("malformed", "not a JSON envelope") from exc
    if not isinstance(outer, dict):
        raise EnvelopeRejected("malformed", "envelope is not a JSON object")
    signatures = outer.get("signatures")
    if not signatures:
        raise EnvelopeRejected("unsigned", "envelope carries no signature")
    if not isinstance(signatures, list):
        raise EnvelopeRejected("malformed", "signatures is not a list")
    payload_type = outer.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise EnvelopeRejected("malformed", f"payloadType is not {PAYLOAD_TYPE}")
    raw = _b64(outer.get("payload"), "payload")
    signed = pae(PAYLOAD_TYPE, raw)

    keyid: str | None = None
    trusted = None
    unknown: list[str] = []
    for entry in signatures:
        if not isinstance(entry, dict) or not isinstance(entry.get("keyid"), str):
            raise EnvelopeRejected("malformed", "a signature has no keyid")
        candidate = keyring.get(entry["keyid"])
        if candidate is None:
            unknown.append(entry["keyid"][:128])
            continue
        sig = _b64(entry.get("sig"), "sig")
        if not candidate.verify(sig, signed):
            raise EnvelopeRejected(
                "bad-signature", "signature does not verify", keyid=candidate.name
            )
        keyid, trusted = candidate.name, candidate
        break
    if trusted is None or keyid is None:
        raise EnvelopeRejected("unknown-key", f"no trusted key among {unknown!r}")

    # Only now, with the bytes proven to come from a trusted key, is the payload parsed.
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EnvelopeRejected("malformed", "payload is not JSON", keyid=keyid) from exc
    message = _message(payload, keyid)
    if message.sender != keyid:
        raise EnvelopeRejected(
            "bad-signature", f"sender {message.sender!r} is not the signer", keyid=keyid
        )
    if message.kind not in kinds:
        raise EnvelopeRejected("unknown-kind", f"kind {message.kind!r} not accepted", keyid=keyid)
    if not trusted.speaks_for(message.host):
        raise EnvelopeRejected(
            "wrong-host", f"key may not speak for host {message.host!r}", keyid=keyid
        )
    if host is not None and message.host != host:
        raise EnvelopeRejected(
            "wrong-host", f"message is for host {message.host!r}, not {host!r}", keyid=keyid
        )
    if message.ts > now + window:
        raise EnvelopeRejected(
            "expired", f"timestamp {message.ts - now:.0f} s in the future", keyid=keyid
        )
    if max_age is not None and message.ts < now - max_age:
        raise EnvelopeRejected("expired", f"timestamp {now - message.ts:.0f} s old", keyid=keyid)
    if replay is not None:
        why = replay.check_and_add(message.sender, message.nonce, message.ts, now)
        if why is not None:
            raise EnvelopeRejected("replayed", why, keyid=keyid)
    return message


def _message(payload: object, keyid: str) -> Message:
    def bad(what: str) -> EnvelopeRejected:
        return EnvelopeRejected("malformed", what, keyid=keyid)

    if not isinstance(payload, dict):
        raise bad("payload is not a JSON object")
    if payload.get("v") != VERSION:
        raise bad(f"payload version {payload.get('v')!r} is not {VERSION}")
    for name in ("kind", "host", "sender", "nonce", "id"):
        if not isinstance(payload.get(name), str) or not payload[name]:
            raise bad(f"payload field {name!r} missing or not a string")
    ts = payload.get("ts")
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        raise bad("payload field 'ts' missing or not a number")
    body = payload.get("body")
    if not isinstance(body, dict):
        raise bad("payload field 'body' missing or not an object")
    seq = payload.get("seq")
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
        raise bad("payload field 'seq' is not an integer")
    boot = payload.get("boot")
    if boot is not None and not isinstance(boot, str):
        raise bad("payload field 'boot' is not a string")
    return Message(
        kind=payload["kind"],
        host=payload["host"],
        sender=payload["sender"],
        ts=float(ts),
        nonce=payload["nonce"],
        id=payload["id"],
        body=body,
        seq=seq,
        boot=boot,
        keyid=keyid,
    )
