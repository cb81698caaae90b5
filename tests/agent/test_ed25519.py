"""Ed25519 through the interpreter's libcrypto: RFC 8032's vectors, and agreement with
pyca/cryptography (the fallback) on signatures and key files, both ways."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature as CryptographyInvalid
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from novaconsole.agentbus import ed25519
from novaconsole.agentbus.keys import SigningKey
from novaconsole.errors import ConfigError

# RFC 8032, 7.1: TEST 1, TEST 2, TEST 3 (secret key, public key, message, signature).
VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


def test_the_agent_uses_the_interpreters_libcrypto() -> None:
    # This machine's Python links OpenSSL 3: the ctypes path must be the one that runs,
    # or the agent carries cryptography's second OpenSSL again (bench/agent_footprint.py).
    assert ed25519.backend() == "openssl"


@pytest.mark.parametrize(("seed", "public", "message", "signature"), VECTORS)
def test_rfc8032_vectors(seed: str, public: str, message: str, signature: str) -> None:
    key = ed25519.private_key(bytes.fromhex(seed))
    assert key.public_key().raw().hex() == public
    assert key.sign(bytes.fromhex(message)).hex() == signature
    ed25519.public_key(bytes.fromhex(public)).verify(
        bytes.fromhex(signature), bytes.fromhex(message)
    )


@pytest.mark.parametrize(("seed", "public", "message", "signature"), VECTORS)
def test_rfc8032_vectors_refused_when_altered(
    seed: str, public: str, message: str, signature: str
) -> None:
    pub = ed25519.public_key(bytes.fromhex(public))
    sig = bytearray.fromhex(signature)
    sig[5] ^= 0x01
    with pytest.raises(ed25519.InvalidSignature):
        pub.verify(bytes(sig), bytes.fromhex(message))
    with pytest.raises(ed25519.InvalidSignature):
        pub.verify(bytes.fromhex(signature), bytes.fromhex(message) + b"x")
    with pytest.raises(ed25519.InvalidSignature):
        pub.verify(bytes.fromhex(signature)[:63], bytes.fromhex(message))


def test_agrees_with_cryptography_both_ways() -> None:
    ours = ed25519.generate()
    theirs = Ed25519PrivateKey.from_private_bytes(ours.seed())
    data = b"the exact bytes that travel"
    assert ours.sign(data) == theirs.sign(data)  # Ed25519 is deterministic
    assert ours.public_key().raw() == theirs.public_key().public_bytes_raw()
    theirs.public_key().verify(ours.sign(data), data)
    ours.public_key().verify(theirs.sign(data), data)
    with pytest.raises(CryptographyInvalid):
        theirs.public_key().verify(ours.sign(data), data + b"!")


def test_key_files_are_what_cryptography_and_openssl_read_and_write(tmp_path: Path) -> None:
    key = SigningKey.generate("vm")
    key_path, pub_path = key.save(tmp_path)
    loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    assert loaded.private_bytes_raw() == key._private.seed()
    public = serialization.load_pem_public_key(pub_path.read_bytes())
    assert isinstance(public, Ed25519PublicKey)
    public.verify(key.sign(b"x"), b"x")
    # And the other way: a key written by cryptography loads and signs the same.
    other = Ed25519PrivateKey.generate()
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "other.key").write_bytes(pem)
    (tmp_path / "other.key").chmod(0o600)
    assert SigningKey.load(tmp_path / "other.key").sign(b"y") == other.sign(b"y")


def test_openssl_cli_reads_our_key(tmp_path: Path) -> None:
    openssl = "/usr/bin/openssl"
    if not Path(openssl).exists():
        pytest.skip("no openssl command")
    key_path, _ = SigningKey.generate("vm").save(tmp_path)
    out = subprocess.run(
        [openssl, "pkey", "-in", str(key_path), "-noout", "-text_pub"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "ED25519 Public-Key" in out.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"hello", "not a PEM private key"),
        (b"-----BEGIN PRIVATE KEY-----\n!!!\n-----END PRIVATE KEY-----\n", "bad base64"),
    ],
)
def test_bad_key_files_are_one_line_errors(tmp_path: Path, text: bytes, message: str) -> None:
    path = tmp_path / "bad.key"
    path.write_bytes(text)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match=message):
        SigningKey.load(path)


def test_an_rsa_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path = tmp_path / "rsa.key"
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        SigningKey.load(path)


def test_fallback_backend_signs_the_same(tmp_path: Path) -> None:
    # The fallback, forced in a fresh interpreter: same signature as the OpenSSL path.
    seed = bytes(range(32))
    code = (
        "from novaconsole.agentbus import ed25519 as e;"
        "k=e.private_key(bytes(range(32)));print(e.backend(), k.sign(b'm').hex())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"NOVACONSOLE_ED25519": "cryptography", "PATH": "/usr/bin:/bin"},
    )
    name, sig = out.stdout.split()
    assert name == "cryptography"
    assert sig == ed25519.private_key(seed).sign(b"m").hex()
