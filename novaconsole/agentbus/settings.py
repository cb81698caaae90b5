"""Where the bus is and how to trust it: :class:`BusSettings`, from a TOML file.

The console finds its file at ``$NOVACONSOLE_AGENTS_CONFIG``, else
``$XDG_CONFIG_HOME/novaconsole/agents.toml`` (``~/.config/...``); the agent's config file
holds the same ``[bus]`` and ``[keys]`` tables (see ``docs/agents.example.toml``). The
broker password comes from ``password_file`` or the environment variable named by
``password_env``, never from the file itself, a URL or the command line; it is kept out of
``repr`` and never logged.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# The console's file rule lives where verify can read it without loading the bus.
from novaconsole.agents.paths import CONFIG_ENV, console_config_path
from novaconsole.errors import ConfigError

__all__ = ["CONFIG_ENV", "BrokerAddress", "BusSettings", "console_config_path"]

DEFAULT_VHOST = "/novaconsole"
DEFAULT_URL = "amqp://127.0.0.1:5672"


@dataclass(frozen=True)
class BrokerAddress:
    """One broker of the list (a RabbitMQ cluster node)."""

    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        return f"{'amqps' if self.tls else 'amqp'}://{self.host}:{self.port}"


@dataclass(frozen=True)
class BusSettings:
    """Everything a bus endpoint needs; ``source`` names the file for error messages."""

    brokers: tuple[BrokerAddress, ...]
    vhost: str = DEFAULT_VHOST
    user: str = "guest"
    password: str = field(default="guest", repr=False)
    #: The private key this side signs with (console key, or the agent's own key).
    signing_key: Path | None = None
    #: The public keys this side trusts (agents' keys for a console, consoles' for an agent).
    trusted_keys: Path | None = None
    #: AMQP heartbeat (seconds): how soon a dead TCP connection is noticed.
    heartbeat: int = 30
    #: Clock window (seconds) for signed timestamps.
    window: float = 300.0
    #: How long a command waits in an agent's queue before it is dropped (seconds).
    command_ttl: float = 30.0
    #: Unconfirmed publishes kept for replay after a reconnect.
    replay_buffer: int = 10_000
    #: The console's durable queue is ``novaconsole.console.NAME`` (one per console).
    console_name: str = "console"
    source: str = "<defaults>"

    @classmethod
    def load(cls, path: Path) -> BusSettings:
        """Read ``[bus]`` and ``[keys]`` from a TOML file."""
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"{path}: no such file") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        return cls.from_tables(data, path)

    @classmethod
    def from_tables(
        cls, data: dict[str, Any], path: Path, environ: dict[str, str] | None = None
    ) -> BusSettings:
        """Build from a parsed file's ``bus`` and ``keys`` tables (paths relative to it)."""
        env = os.environ if environ is None else environ
        bus = _table(data, "bus", path)
        keys = _table(data, "keys", path)
        urls = bus.get("urls", [DEFAULT_URL])
        if isinstance(urls, str):
            urls = [urls]
        if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
            raise ConfigError(f"{path}: bus.urls: expected a list of amqp:// URLs")
        brokers = tuple(_broker(u, path) for u in urls)
        vhost = _str(bus, "vhost", path, "bus", DEFAULT_VHOST)
        user = _str(bus, "user", path, "bus", "")
        password_file = bus.get("password_file")
        password_env = bus.get("password_env")
        if "password" in bus:
            raise ConfigError(
                f"{path}: bus.password: a password is not kept in this file; "
                "use bus.password_file or bus.password_env"
            )
        password = ""
        if password_file is not None:
            if not isinstance(password_file, str):
                raise ConfigError(f"{path}: bus.password_file: expected a path")
            pw_path = resolve_path(password_file, path)
            try:
                password = pw_path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError(f"{path}: bus.password_file: {pw_path}: {exc.strerror}") from exc
        elif password_env is not None:
            if not isinstance(password_env, str) or not password_env:
                raise ConfigError(f"{path}: bus.password_env: expected a variable name")
            if password_env not in env:
                raise ConfigError(
                    f"{path}: bus.password_env: environment variable {password_env} is not set"
                )
            password = env[password_env]
        elif user and user != "guest":
            raise ConfigError(f"{path}: bus: user {user!r} needs password_file or password_env")
        if not user:
            user, password = "guest", password or "guest"
        return cls(
            brokers=brokers,
            vhost=vhost,
            user=user,
            password=password,
            signing_key=optional_path(keys, "signing_key", path, section="keys"),
            trusted_keys=optional_path(keys, "trusted", path, section="keys"),
            heartbeat=int(bounded_number(bus, "heartbeat", path, 30, lo=0, hi=600, section="bus")),
            window=bounded_number(bus, "clock_window", path, 300.0, lo=1, hi=86400, section="bus"),
            command_ttl=bounded_number(
                bus, "command_ttl", path, 30.0, lo=1, hi=3600, section="bus"
            ),
            replay_buffer=int(
                bounded_number(
                    bus, "replay_buffer", path, 10_000, lo=1, hi=1_000_000, section="bus"
                )
            ),
            console_name=_str(bus, "console_name", path, "bus", "console"),
            source=str(path),
        )


def _table(data: dict[str, Any], name: str, path: Path) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {name}: expected a table [{name}]")
    return value


def _str(table: dict[str, Any], key: str, path: Path, section: str, default: str) -> str:
    value = table.get(key, default)
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {section}.{key}: expected a string")
    return value


def bounded_number(
    table: dict[str, Any],
    key: str,
    path: Path,
    default: float,
    *,
    lo: float,
    hi: float,
    section: str = "",
    unit: str = "",
) -> float:
    """``table[key]`` (or ``default``) as a number in ``lo..hi``; else one ConfigError
    naming the file and ``section.key`` (shared by the bus's and the agent's files)."""
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= value <= hi:
        where = f"{section}.{key}" if section else key
        suffix = f" ({unit})" if unit else ""
        raise ConfigError(f"{path}: {where}: expected a number from {lo:g} to {hi:g}{suffix}")
    return float(value)


def resolve_path(value: str, path: Path) -> Path:
    """``value`` as a path; relative paths are relative to the file ``path``."""
    p = Path(value).expanduser()
    return p if p.is_absolute() else path.parent / p


def optional_path(table: dict[str, Any], key: str, path: Path, *, section: str = "") -> Path | None:
    """``table[key]`` as a path relative to ``path``, or None when absent."""
    value = table.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        where = f"{section}.{key}" if section else key
        raise ConfigError(f"{path}: {where}: expected a path")
    return resolve_path(value, path)


def _broker(url: str, path: Path) -> BrokerAddress:
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
        raise ConfigError(f"{path}: bus.urls: {parts.scheme or '?'}://... is not an amqp:// URL")
    if parts.password is not None or parts.username is not None:
        raise ConfigError(
            f"{path}: bus.urls: credentials do not go in URLs; use bus.user and bus.password_file"
        )
    if parts.path not in ("", "/"):
        raise ConfigError(f"{path}: bus.urls: put the vhost in bus.vhost, not the URL")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{path}: bus.urls: {parts.hostname}: bad port") from exc
    tls = parts.scheme == "amqps"
    return BrokerAddress(parts.hostname, port or (5671 if tls else 5672), tls)
