"""The console's settings: the ``[console]`` table of ``$XDG_CONFIG_HOME/novaconsole/config.toml``.

Command-line flags win over the file. Saving rewrites only the keys it owns inside
``[console]`` and leaves the rest of the file (other tables, comments) as it was.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from novaconsole.errors import ConfigError
from novaconsole.terminal_graphics import check_mode

DEFAULT_THEME = "novaconsole-dark"


def config_path(environ: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """Where the user's config lives (``XDG_CONFIG_HOME`` honoured)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "novaconsole" / "config.toml"


def state_dir(environ: os._Environ[str] | dict[str, str] | None = None) -> Path:
    """Where the console keeps its action log (``XDG_STATE_HOME`` honoured)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "novaconsole"


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """What the console needs to start; every field has a default."""

    theme: str = DEFAULT_THEME
    """Theme name (``dark``, ``light``, ``high-contrast`` or any registered theme)."""
    refresh: float = 10.0
    """Seconds between automatic refreshes of the visible pane; 0 turns them off."""
    timeout: float = 10.0
    """Seconds an API call may take before the pane shows it as failed."""
    readonly: bool = False
    """Hide and refuse every mutating action."""
    graphics: str = "auto"
    """How the console screen draws a guest: ``auto`` (ask the terminal), ``kitty``,
    ``sixel`` or ``cells`` (half blocks, any terminal)."""


_TYPES: dict[str, type] = {
    "theme": str,
    "refresh": float,
    "timeout": float,
    "readonly": bool,
    "graphics": str,
}


def load_settings(path: Path | None = None) -> ConsoleSettings:
    """Settings from the file (defaults when it does not exist); bad values are one line."""
    path = path or config_path()
    if not path.exists():
        return ConsoleSettings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    table: Any = data.get("console", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [console] must be a table")
    values: dict[str, Any] = {}
    for key, value in table.items():
        wanted = _TYPES.get(key)
        if wanted is None:
            raise ConfigError(
                f"{path}: [console] has unknown key {key!r} (known: {', '.join(_TYPES)})"
            )
        original = value
        if wanted is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, wanted):
            raise ConfigError(f"{path}: [console] {key} = {original!r} is not a {wanted.__name__}")
        if isinstance(value, float) and value < 0:
            raise ConfigError(f"{path}: [console] {key} = {original!r} must be 0 or more")
        if key == "graphics":
            check_mode(str(value), f"{path}: [console]")
        values[key] = value
    return replace(ConsoleSettings(), **values)


def _toml_value(value: str | float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def save_setting(key: str, value: str | float | bool, path: Path | None = None) -> Path:
    """Set one ``[console]`` key in the file, keeping everything else; returns the path."""
    if key not in _TYPES:
        raise ConfigError(f"unknown console setting {key!r}")
    path = path or config_path()
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = text.splitlines()
    line = f"{key} = {_toml_value(value)}"
    start = next((i for i, raw in enumerate(lines) if raw.strip() == "[console]"), None)
    if start is None:
        if lines and lines[-1].strip():
            lines.append("")
        lines += ["[console]", line]
    else:
        end = next(
            (i for i in range(start + 1, len(lines)) if re.match(r"\s*\[", lines[i])), len(lines)
        )
        for i in range(start + 1, end):
            if re.match(rf"\s*{re.escape(key)}\s*=", lines[i]):
                lines[i] = line
                break
        else:
            last = max(i for i in range(start, end) if lines[i].strip())
            lines.insert(last + 1, line)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
