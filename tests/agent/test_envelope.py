"""The signed envelope: what verifies, and every way a message is refused."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from novaconsole.agentbus import (
    CommandReply,
    CommandRequest,
    Domain,
    DomainEvent,
    EnvelopeRejected,
    Graphics,
    Heartbeat,
    HostFacts,
    Inventory,
    Keyring,
    NovaMetadata,
    ReplayCache,
    ServiceStatus,
    SigningKey,
    TrustedKey,
    generate_key_files,
    open_envelope,
    parse_body,
    seal,
)
from novaconsole.agentbus.envelope import PAYLOAD_TYPE, pae, seal_bytes, seal_payload
from novaconsole.errors import ConfigError


@pytest.fixture
def console_key() -> SigningKey:
    return SigningKey.generate("console")


@pytest.fixture
def agent_key() -> SigningKey:
    return SigningKey.generate("vm")


def ring(*keys: SigningKey, hosts: frozenset[str] | None = None) -> Keyring:
    return Keyring(TrustedKey(k.name, k.public_key(), hosts) for k in keys)


def rejected(data: bytes, keyring: Keyring, **kw: object) -> EnvelopeRejected:
    with pytest.raises(EnvelopeRejected) as info:
        open_envelope(data, keyring, **kw)  # type: ignore[arg-type]
    return info.value


def test_round_trip(console_key: SigningKey) -> None:
    data, sent = seal(console_key, "command", "vm", {"command": "inventory"})
    got = open_envelope(data, ring(console_key), host="vm", replay=ReplayCache())
    assert got == sent
    assert got.keyid == "console"
    outer = json.loads(data)
    assert outer["payloadType"] == PAYLOAD_TYPE
    assert outer["signatures"][0]["keyid"] == "console"


def test_signature_covers_pae_of_exact_bytes(console_key: SigningKey) -> None:
    data, _ = seal(console_key, "command", "vm", {"command": "inventory"})
    outer = json.loads(data)
    raw = base64.b64decode(outer["payload"])
    sig = base64.b64decode(outer["signatures"][0]["sig"])
    console_key.public_key().verify(sig, pae(PAYLOAD_TYPE, raw))
    # The same JSON re-serialised with other whitespace is different bytes: refused.
    respaced = json.dumps(json.loads(raw), indent=1).encode()
    outer["payload"] = base64.b64encode(respaced).decode()
    assert rejected(json.dumps(outer).encode(), ring(console_key)).reason == "bad-signature"


def test_unsigned(console_key: SigningKey) -> None:
    data, _ = seal(console_key, "command", "vm", {"command": "inventory"})
    outer = json.loads(data)
    outer["signatures"] = []
    assert rejected(json.dumps(outer).encode(), ring(console_key)).reason == "unsigned"
    del outer["signatures"]
    assert rejected(json.dumps(outer).encode(), ring(console_key)).reason == "unsigned"


def test_malformed(console_key: SigningKey) -> None:
    assert rejected(b"not json", ring(console_key)).reason == "malformed"
    assert rejected(b"[1]", ring(console_key)).reason == "malformed"
    # Signed, but the payload is not ours: malformed, found only after verification.
    bad = seal_bytes(console_key, b'{"v": 99}')
    err = rejected(bad, ring(console_key))
    assert err.reason == "malformed"
    assert err.keyid == "console"


def test_forged_payload(console_key: SigningKey) -> None:
    data, _ = seal(console_key, "command", "vm", {"command": "inventory"})
    outer = json.loads(data)
    payload = json.loads(base64.b64decode(outer["payload"]))
    payload["body"]["command"] = "restart_service"
    outer["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    assert rejected(json.dumps(outer).encode(), ring(console_key)).reason == "bad-signature"


def test_wrong_key(console_key: SigningKey) -> None:
    # Signed by a key of the same name that the reader does not trust.
    impostor = SigningKey.generate("console")
    data, _ = seal(impostor, "command", "vm", {"command": "inventory"})
    assert rejected(data, ring(console_key)).reason == "bad-signature"
    stranger = SigningKey.generate("mallory")
    data, _ = seal(stranger, "command", "vm", {"command": "inventory"})
    assert rejected(data, ring(console_key)).reason == "unknown-key"


def test_sender_must_be_signer(console_key: SigningKey, agent_key: SigningKey) -> None:
    _, message = seal(console_key, "command", "vm", {"command": "inventory"})
    payload = message.payload() | {"sender": "vm"}
    data = seal_payload(console_key, payload)
    assert rejected(data, ring(console_key, agent_key)).reason == "bad-signature"


def test_expired_and_future(console_key: SigningKey) -> None:
    keys = ring(console_key)
    old, _ = seal(console_key, "command", "vm", {"command": "x"}, ts=1000.0)
    assert rejected(old, keys, now=1000.0 + 301).reason == "expired"
    assert open_envelope(old, keys, now=1000.0 + 299).ts == 1000.0
    assert open_envelope(old, keys, now=1e9, max_age=None).ts == 1000.0
    assert rejected(old, keys, now=1000.0 - 301).reason == "expired"


def test_replayed(console_key: SigningKey) -> None:
    cache = ReplayCache()
    data, _ = seal(console_key, "command", "vm", {"command": "x"})
    open_envelope(data, ring(console_key), replay=cache)
    assert rejected(data, ring(console_key), replay=cache).reason == "replayed"


def test_replay_cache_bound_keeps_no_hole(console_key: SigningKey) -> None:
    cache = ReplayCache(max_entries=2)
    sent = [seal(console_key, "command", "vm", {}, ts=100.0 + i) for i in range(3)]
    for data, _ in sent:
        open_envelope(data, ring(console_key), replay=cache, now=103.0)
    # The first one fell out of the bounded cache; its replay is still refused.
    err = rejected(sent[0][0], ring(console_key), replay=cache, now=103.0)
    assert err.reason == "replayed"


def test_wrong_host(console_key: SigningKey, agent_key: SigningKey) -> None:
    data, _ = seal(console_key, "command", "other", {"command": "x"})
    assert rejected(data, ring(console_key), host="vm").reason == "wrong-host"
    # An agent's key is bound to its host: it cannot speak for another.
    data, _ = seal(agent_key, "heartbeat", "other", {})
    assert rejected(data, ring(agent_key, hosts=frozenset({"vm"}))).reason == "wrong-host"


def test_unknown_kind(console_key: SigningKey) -> None:
    data, _ = seal(console_key, "selfdestruct", "vm", {})
    assert rejected(data, ring(console_key)).reason == "unknown-kind"
    data, _ = seal(console_key, "heartbeat", "vm", {})
    assert rejected(data, ring(console_key), kinds={"command"}).reason == "unknown-kind"


def test_key_files(tmp_path: Path) -> None:
    key_path, pub_path = generate_key_files(tmp_path, "vm")
    assert stat.S_IMODE(pub_path.stat().st_mode) == 0o644
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = SigningKey.load(key_path)
    assert key.name == "vm"
    assert "PRIVATE" not in repr(key)
    with pytest.raises(ConfigError, match="exists"):
        generate_key_files(tmp_path, "vm")
    # Rotation: a second key for the same host, as vm@2.pub.
    generate_key_files(tmp_path / "new", "vm@2")
    (tmp_path / "vm@2.pub").write_bytes((tmp_path / "new" / "vm@2.pub").read_bytes())
    keys = Keyring.load(tmp_path, host_bound=True)
    assert keys.names() == ["vm", "vm@2"]
    assert keys.hosts() == ["vm"]
    new = SigningKey.load(tmp_path / "new" / "vm@2.key")
    data, _ = seal(new, "heartbeat", "vm", {})
    assert open_envelope(data, keys).keyid == "vm@2"
    os.chmod(key_path, 0o644)
    with pytest.raises(ConfigError, match="lets others read it"):
        SigningKey.load(key_path)


def test_keyring_toml(tmp_path: Path, agent_key: SigningKey) -> None:
    (tmp_path / "keys.toml").write_text(
        f'[[key]]\nname = "vm"\nhosts = ["vm"]\npublic = """{agent_key.public_pem()}"""\n'
    )
    keys = Keyring.load(tmp_path / "keys.toml")
    assert keys.hosts() == ["vm"]
    (tmp_path / "bad.toml").write_text('[[key]]\nname = "vm"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: key\[0\]: needs"):
        Keyring.load(tmp_path / "bad.toml")


def test_bodies_round_trip() -> None:
    inv = Inventory(
        host=HostFacts(hostname="vm", nova_host="vm", cpus=2, memory_mib=4096),
        domains=[
            Domain(
                uuid="u1",
                name="instance-00000001",
                state="running",
                reason="booted",
                nova=NovaMetadata(display_name="s1", flavor="m1.tiny", project_id="p"),
                graphics=[Graphics(type="vnc", port=5900, listen="127.0.0.1")],
                stats={"state.state": 1},
            )
        ],
        services=[ServiceStatus(name="libvirtd", running=True, pid=1, since=2.0)],
        errors=["ERROR x"],
    )
    assert parse_body("inventory", inv.to_dict()) == inv
    hb = Heartbeat("0.1", 1.0, 10.0, True, "qemu:///system", 1)
    assert parse_body("heartbeat", hb.to_dict()) == hb
    ev = DomainEvent(uuid="u1", name="n", event="lifecycle", detail="stopped", reason="destroyed")
    assert parse_body("event", ev.to_dict()) == ev
    req = CommandRequest(command="inventory", correlation_id="c")
    assert parse_body("command", req.to_dict()) == req
    rep = CommandReply(correlation_id="c", ok=True, result={"a": 1})
    assert parse_body("reply", rep.to_dict()) == rep
    with pytest.raises(ValueError, match="command"):
        parse_body("command", {})
