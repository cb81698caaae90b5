"""Ed25519 keys for the agent bus: a named signing key and a keyring of trusted public keys.

* A :class:`SigningKey` is a private key with a name (the key id every envelope it signs
  carries). It lives in a PEM file of mode 0600 (PKCS#8, unencrypted) and is loaded from
  that path; nothing else ever holds its bytes. The signatures themselves are OpenSSL's
  (see :mod:`novaconsole.agentbus.ed25519`).
* A :class:`Keyring` is the set of public keys a reader trusts, by name. Rotation is a
  list: a new key is added next to the old one, the signer switches, the old one is removed.
  An entry may be *bound* to hosts: an agent's key speaks for its own host only, so a
  compromised hypervisor cannot pass its messages off as another's.

Keyring sources: a directory of ``NAME.pub`` files (PEM public keys), or a TOML file with
a list of ``[[key]]`` tables (``name``, ``public`` = the PEM text or ``file`` = a path,
optional ``hosts``). For agent keyrings (``host_bound=True``) a ``NAME.pub`` file speaks for
host ``NAME`` (or the part of NAME before an ``@``: ``vm@2026-12.pub`` rotates ``vm``'s key).
"""

from __future__ import annotations

import re
import stat
import tomllib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from novaconsole.agentbus import ed25519
from novaconsole.agentbus.ed25519 import InvalidSignature, KeyFormatError, PrivateKey, PublicKey
from novaconsole.errors import ConfigError
from novaconsole.fileutil import atomic_write

#: Key names: what may appear in a file name and a log line.
KEY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$")


def check_key_name(name: str, where: str) -> str:
    """``name`` if it is a valid key name, else a :class:`ConfigError` naming ``where``."""
    if not KEY_NAME.match(name):
        raise ConfigError(
            f"{where}: invalid key name {name!r} (letters, digits, '_', '.', '@', '-'; at most 128)"
        )
    return name


class SigningKey:
    """A named Ed25519 private key. ``repr`` and ``str`` never show the key."""

    def __init__(self, name: str, private: PrivateKey) -> None:
        self.name = check_key_name(name, "signing key")
        self._private = private

    @classmethod
    def generate(cls, name: str) -> SigningKey:
        return cls(name, ed25519.generate())

    @classmethod
    def load(cls, path: Path, name: str | None = None) -> SigningKey:
        """Load the key from ``path`` (PEM, mode 0600). The name defaults to the file's stem.

        A key file readable by group or others is refused: it is a secret.
        """
        try:
            st = path.stat()
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"signing key {path}: cannot read: {exc.strerror}") from exc
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(
                f"signing key {path}: mode {stat.S_IMODE(st.st_mode):04o} lets others read it",
                hint=f"chmod 600 {path}",
            )
        try:
            key = ed25519.private_key(ed25519.seed_from_pem(data))
        except KeyFormatError as exc:
            raise ConfigError(f"signing key {path}: {exc}") from exc
        return cls(name or _stem(path), key)

    def save(self, directory: Path) -> tuple[Path, Path]:
        """Write ``NAME.key`` (0600) and ``NAME.pub`` (0644) into ``directory``."""
        private_pem = ed25519.private_pem(self._private.seed())
        key_path = directory / f"{self.name}.key"
        pub_path = directory / f"{self.name}.pub"
        atomic_write(key_path, private_pem, mode=0o600)
        atomic_write(pub_path, self.public_pem(), mode=0o644)
        return key_path, pub_path

    def public_key(self) -> PublicKey:
        return self._private.public_key()

    def public_pem(self) -> str:
        return ed25519.public_pem(self.public_key().raw())

    def sign(self, data: bytes) -> bytes:
        return self._private.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(name={self.name!r})"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".key", ".pem", ".pub"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class TrustedKey:
    """A public key the reader trusts; ``hosts`` None means any host (a console key)."""

    name: str
    public: PublicKey
    hosts: frozenset[str] | None = None

    def verify(self, signature: bytes, data: bytes) -> bool:
        try:
            self.public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def speaks_for(self, host: str) -> bool:
        return self.hosts is None or host in self.hosts


def _load_public(pem: bytes, where: str) -> PublicKey:
    try:
        return ed25519.public_key(ed25519.public_from_pem(pem))
    except KeyFormatError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


class Keyring:
    """Trusted public keys by name (see the module docstring for the file formats)."""

    def __init__(self, keys: Iterable[TrustedKey] = ()) -> None:
        self._keys: dict[str, TrustedKey] = {}
        for key in keys:
            self.add(key)

    def add(self, key: TrustedKey) -> None:
        self._keys[key.name] = key

    def get(self, name: str) -> TrustedKey | None:
        return self._keys.get(name)

    def names(self) -> list[str]:
        return sorted(self._keys)

    def hosts(self) -> list[str]:
        """Every host some key is bound to (the enrolled agents)."""
        out: set[str] = set()
        for key in self._keys.values():
            out.update(key.hosts or ())
        return sorted(out)

    def __iter__(self) -> Iterator[TrustedKey]:
        return iter(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def load(cls, path: Path, *, host_bound: bool = False) -> Keyring:
        """A keyring from a directory of ``NAME.pub`` files or a TOML file."""
        if path.is_dir():
            return cls.from_dir(path, host_bound=host_bound)
        if path.is_file():
            return cls.from_toml(path)
        raise ConfigError(f"keyring {path}: no such file or directory")

    @classmethod
    def from_dir(cls, directory: Path, *, host_bound: bool = False) -> Keyring:
        ring = cls()
        for pub in sorted(directory.glob("*.pub")):
            name = check_key_name(pub.name[: -len(".pub")], f"keyring {pub}")
            hosts = frozenset({name.split("@", 1)[0]}) if host_bound else None
            try:
                pem = pub.read_bytes()
            except OSError as exc:
                raise ConfigError(f"keyring {pub}: cannot read: {exc.strerror}") from exc
            ring.add(TrustedKey(name, _load_public(pem, f"keyring {pub}"), hosts))
        return ring

    @classmethod
    def from_toml(cls, path: Path) -> Keyring:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"keyring {path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"keyring {path}: not valid TOML: {exc}") from exc
        entries = data.get("key", [])
        if not isinstance(entries, list):
            raise ConfigError(f"keyring {path}: key: expected a list of [[key]] tables")
        ring = cls()
        for i, entry in enumerate(entries):
            where = f"keyring {path}: key[{i}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where}: expected a table")
            name = entry.get("name")
            if not isinstance(name, str):
                raise ConfigError(f"{where}.name: expected a string")
            check_key_name(name, f"{where}.name")
            if isinstance(entry.get("public"), str):
                pem = entry["public"].encode("ascii", "replace")
            elif isinstance(entry.get("file"), str):
                file = Path(entry["file"])
                if not file.is_absolute():
                    file = path.parent / file
                try:
                    pem = file.read_bytes()
                except OSError as exc:
                    raise ConfigError(f"{where}.file: {file}: {exc.strerror}") from exc
            else:
                raise ConfigError(f"{where}: needs 'public' (PEM text) or 'file' (a path)")
            hosts_raw = entry.get("hosts")
            hosts: frozenset[str] | None = None
            if hosts_raw is not None:
                if not isinstance(hosts_raw, list) or not all(
                    isinstance(h, str) for h in hosts_raw
                ):
                    raise ConfigError(f"{where}.hosts: expected a list of host names")
                hosts = frozenset(hosts_raw)
            ring.add(TrustedKey(name, _load_public(pem, where), hosts))
        return ring


def generate_key_files(directory: Path, name: str) -> tuple[Path, Path]:
    """Generate a key pair ``NAME.key``/``NAME.pub`` in ``directory``; refuse to overwrite."""
    check_key_name(name, "keygen --name")
    for suffix in (".key", ".pub"):
        if (directory / f"{name}{suffix}").exists():
            raise ConfigError(f"keygen: {directory / (name + suffix)} exists (not overwritten)")
    directory.mkdir(parents=True, exist_ok=True)
    return SigningKey.generate(name).save(directory)
