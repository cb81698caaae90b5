"""Themes: Textual ``Theme`` objects from ``themes/*.toml``, and the console's stylesheet.

In a checkout the files live in the repository's ``themes/``; in an installed wheel they are
``novaconsole/_themes``. Plugins add directories through ``novaconsole_theme_dirs``.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textual.theme import Theme

from novaconsole.errors import ConfigError

#: Short names the operator may type (``--theme light``) for the shipped themes.
PREFIX = "novaconsole-"
_THEME_FIELDS = {
    "primary", "secondary", "warning", "error", "success", "accent", "foreground",
    "background", "surface", "panel", "boost", "dark", "luminosity_spread", "text_alpha",
}  # fmt: skip


def builtin_theme_dir() -> Path:
    """The directory holding the shipped ``.tcss`` and theme files."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "_themes"
    if installed.is_dir():
        return installed
    return package.parent / "themes"


def stylesheet_paths(dirs: Iterable[Path]) -> list[Path]:
    """Every ``*.tcss`` in the theme directories (the built-in one first)."""
    return [p for d in dirs for p in sorted(Path(d).glob("*.tcss"))]


def theme_from_file(path: Path) -> Theme:
    """A Textual theme from a TOML file with a ``[theme]`` table; errors name the file."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"theme file {path}: {exc}") from exc
    table = data.get("theme")
    if not isinstance(table, dict) or not isinstance(table.get("name"), str):
        raise ConfigError(f"theme file {path}: needs a [theme] table with a name")
    unknown = set(table) - _THEME_FIELDS - {"name", "variables"}
    if unknown:
        raise ConfigError(f"theme file {path}: unknown keys {', '.join(sorted(unknown))}")
    if "primary" not in table:
        raise ConfigError(f"theme file {path}: [theme] needs a primary colour")
    variables = table.get("variables", {})
    if not isinstance(variables, dict):
        raise ConfigError(f"theme file {path}: [theme.variables] must be a table")
    kwargs = {k: v for k, v in table.items() if k in _THEME_FIELDS}
    return Theme(
        name=table["name"], variables={str(k): str(v) for k, v in variables.items()}, **kwargs
    )


def load_themes(dirs: Iterable[Path]) -> list[Theme]:
    """All themes found in ``dirs`` (``*.toml``), in directory order."""
    return [theme_from_file(p) for d in dirs for p in sorted(Path(d).glob("*.toml"))]


def resolve_theme_name(name: str, available: Iterable[str]) -> str:
    """``light`` -> ``novaconsole-light``; unknown names are a one-line error listing the known."""
    names = set(available)
    for candidate in (name, PREFIX + name):
        if candidate in names:
            return candidate
    ours = sorted(n.removeprefix(PREFIX) for n in names if n.startswith(PREFIX))
    raise ConfigError(
        f"unknown theme {name!r} (novaconsole themes: {', '.join(ours)}; "
        f"Textual's built-in themes work too, e.g. textual-dark)"
    )
