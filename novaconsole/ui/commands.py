"""The ``:`` command line: aliases, parsing and completion (no widgets here)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Built-in pane names and the aliases that reach them (k9s style: short forms first).
PANE_ALIASES: dict[str, tuple[str, ...]] = {
    "services": ("svc", "service", "services", "compute-services"),
    "catalog": ("cat", "catalog", "endpoints", "ep"),
    "images": ("img", "image", "images"),
    "hypervisors": ("hyp", "hypervisor", "hypervisors", "hv"),
    "servers": ("srv", "server", "servers", "vm"),
}

#: Commands that are not panes: name -> (aliases, help text).
OTHER_COMMANDS: dict[str, tuple[tuple[str, ...], str]] = {
    "cloud": (("cloud", "ctx"), "switch to another cloud from clouds.yaml: :cloud NAME"),
    "theme": (("theme",), "switch theme: :theme NAME"),
    "help": (("help", "?"), "show every key"),
    "quit": (("q", "quit", "q!"), "leave the console"),
}


@dataclass(frozen=True, slots=True)
class Command:
    """A parsed command line: ``kind`` is a pane name or one of :data:`OTHER_COMMANDS`."""

    kind: str
    argument: str = ""


class CommandError(ValueError):
    """A command line that names nothing known; the message is one line for the operator."""


def alias_table(pane_aliases: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Every alias -> what it names (panes first, so a plugin cannot shadow ``:cloud``)."""
    table: dict[str, str] = {}
    for name, aliases in pane_aliases.items():
        for alias in (name, *aliases):
            table.setdefault(alias, name)
    for name, (aliases, _help) in OTHER_COMMANDS.items():
        for alias in aliases:
            table.setdefault(alias, name)
    return table


def parse_command(text: str, pane_aliases: Mapping[str, Sequence[str]]) -> Command:
    """Parse ``svc``, ``:svc``, ``cloud NAME``; raise :class:`CommandError` if unknown."""
    words = text.strip().lstrip(":").split(maxsplit=1)
    if not words:
        raise CommandError("empty command (try :svc, :cat, :img, :hyp, :srv, :cloud NAME)")
    word, argument = words[0].lower(), (words[1].strip() if len(words) > 1 else "")
    table = alias_table(pane_aliases)
    kind = table.get(word)
    if kind is None:
        known = ", ".join(f":{a}" for a in sorted(table) if len(a) <= 4)
        raise CommandError(f"unknown command ':{word}' (known: {known})")
    if kind in ("cloud", "theme") and not argument:
        raise CommandError(f":{word} needs a name, e.g. :{word} NAME")
    return Command(kind, argument)


def completions(
    text: str,
    pane_aliases: Mapping[str, Sequence[str]],
    clouds: Iterable[str] = (),
    themes: Iterable[str] = (),
) -> list[str]:
    """Complete command lines starting with ``text`` (shortest first)."""
    text = text.lstrip(":")
    words = text.split(" ", 1)
    if len(words) == 2:
        table = alias_table(pane_aliases)
        kind = table.get(words[0].lower())
        names = list(clouds) if kind == "cloud" else list(themes) if kind == "theme" else []
        return [f"{words[0]} {n}" for n in sorted(names) if n.startswith(words[1])]
    candidates = set(alias_table(pane_aliases))
    return sorted((c for c in candidates if c.startswith(text.lower())), key=lambda c: (len(c), c))
