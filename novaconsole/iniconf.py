"""A small editor for oslo.config INI files (nova.conf) that changes only the keys we own.

oslo.config files are INI with ``#``/``;`` comments, ``key = value`` (or ``key: value``)
entries and indented continuation lines. :class:`IniDocument` keeps every line as written,
so an operator's other keys, comments and ordering survive; :func:`plan_options` computes
the changes for the options one step owns, and :func:`update_file` re-reads the file under
a lock, applies only those changes and writes atomically (mode 0640 by default). Two steps
that own disjoint keys of the same file therefore never undo each other's work.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from novaconsole.errors import ConfigError
from novaconsole.fileutil import atomic_write
from novaconsole.redact import scrub_secrets

_SECTION = re.compile(r"^\[(?P<name>[^\]]+)\]\s*$")
_ENTRY = re.compile(r"^(?P<key>[^\s=:#;\[][^=:]*?)\s*[=:]\s*(?P<value>.*?)\s*$")
# Option names whose values are secrets or may embed one (URLs with a password).
_SECRET_OPTION = re.compile(r"password|passwd|secret|connection|transport_url|token", re.I)


@dataclass(frozen=True)
class Want:
    """A wanted option value, with how to treat it.

    ``secret``: never show the value (plans, logs). ``only_if_missing``: set it only when
    the file has no value yet (a default another owner or the operator may override).
    """

    value: str
    secret: bool = False
    only_if_missing: bool = False


#: What a step asks for, per section and option: a value, a :class:`Want`, or ``None`` to
#: remove the option.
WantedValue = Union[str, Want, None]  # noqa: UP007 (runtime alias)
Wanted = Mapping[str, Mapping[str, WantedValue]]


@dataclass(frozen=True)
class OptionChange:
    """One option to set, change or remove."""

    section: str
    option: str
    old: str | None
    new: str | None
    secret: bool = False

    def describe(self) -> str:
        """A one-line, secret-free description for plans and logs."""
        where = f"[{self.section}] {self.option}"
        if self.new is None:
            return f"remove {where}"
        if self.secret:
            return f"{'set' if self.old is None else 'change'} {where} (secret, not shown)"
        new = scrub_secrets(self.new)
        if self.old is None:
            return f"set {where} = {new}"
        return f"change {where}: {scrub_secrets(self.old)} -> {new}"


class IniDocument:
    """The lines of an INI file, editable by (section, option) without losing anything else."""

    def __init__(self, text: str = "") -> None:
        self.lines: list[str] = text.splitlines()

    @classmethod
    def load(cls, path: Path) -> IniDocument:
        """Read ``path``; a missing file is an empty document."""
        try:
            return cls(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None

    def render(self) -> str:
        """The document as text (ends with a newline unless empty)."""
        return "\n".join(self.lines) + ("\n" if self.lines else "")

    # -- reading --------------------------------------------------------------------

    def _entries(self) -> Iterator[tuple[str | None, str, int, int]]:
        """(section, key, first line, end line exclusive incl. continuations) per entry."""
        section: str | None = None
        i = 0
        while i < len(self.lines):
            line = self.lines[i]
            m = _SECTION.match(line)
            if m:
                section = m["name"].strip()
                i += 1
                continue
            e = _ENTRY.match(line)
            if e and not line[:1].isspace():
                end = i + 1
                while (
                    end < len(self.lines)
                    and self.lines[end][:1].isspace()
                    and self.lines[end].strip()
                    and not self.lines[end].lstrip().startswith(("#", ";"))
                ):
                    end += 1
                yield section, e["key"].strip(), i, end
                i = end
                continue
            i += 1

    def sections(self) -> list[str]:
        """Section names in order of first appearance."""
        seen: list[str] = []
        for line in self.lines:
            m = _SECTION.match(line)
            if m and m["name"].strip() not in seen:
                seen.append(m["name"].strip())
        return seen

    def get(self, section: str, option: str) -> str | None:
        """The option's value (the last one if repeated), or None."""
        value = None
        for sec, key, start, end in self._entries():
            if sec == section and key == option:
                m = _ENTRY.match(self.lines[start])
                assert m is not None
                parts = [m["value"], *(line.strip() for line in self.lines[start + 1 : end])]
                value = "\n".join(parts)
        return value

    def options(self, section: str) -> dict[str, str]:
        """All options of a section (last value wins)."""
        keys = [key for sec, key, _s, _e in self._entries() if sec == section]
        return {key: self.get(section, key) or "" for key in dict.fromkeys(keys)}

    # -- editing --------------------------------------------------------------------

    def set(self, section: str, option: str, value: str) -> None:
        """Set one option, replacing its first occurrence and dropping repeats."""
        _check_name(section, option, value)
        new_line = f"{option} = {value}"
        matches = [(s, e) for sec, key, s, e in self._entries() if sec == section and key == option]
        if matches:
            first_start, first_end = matches[0]
            for start, end in reversed(matches[1:]):
                del self.lines[start:end]
            self.lines[first_start:first_end] = [new_line]
            return
        self.lines.insert(self._insertion_point(section), new_line)

    def remove(self, section: str, option: str) -> None:
        """Remove every occurrence of an option (continuation lines included)."""
        matches = [(s, e) for sec, key, s, e in self._entries() if sec == section and key == option]
        for start, end in reversed(matches):
            del self.lines[start:end]

    def _insertion_point(self, section: str) -> int:
        """After the last entry of the section's first block, creating the section if needed."""
        header = None
        for i, line in enumerate(self.lines):
            m = _SECTION.match(line)
            if m and m["name"].strip() == section:
                header = i
                break
        if header is None:
            while self.lines and not self.lines[-1].strip():
                self.lines.pop()
            if self.lines:
                self.lines.append("")
            self.lines.append(f"[{section}]")
            return len(self.lines)
        block_end = next(
            (i for i in range(header + 1, len(self.lines)) if _SECTION.match(self.lines[i])),
            len(self.lines),
        )
        last = header + 1
        for _sec, _key, start, end in self._entries():
            if header < start < block_end:
                last = end
        return last


def _check_name(section: str, option: str, value: str) -> None:
    if not section or any(c in section for c in "[]\n\r"):
        raise ConfigError(f"invalid section name {section!r}")
    if not _ENTRY.match(f"{option} = x") or any(c in option for c in " \t\n\r=:"):
        raise ConfigError(f"invalid option name {option!r} in [{section}]")
    if "\n" in value or "\r" in value:
        raise ConfigError(f"[{section}] {option}: a value must be on one line")


def _want(value: WantedValue, option: str) -> Want | None:
    if value is None:
        return None
    if isinstance(value, Want):
        return value
    return Want(str(value), secret=bool(_SECRET_OPTION.search(option)))


def plan_options(doc: IniDocument, wanted: Wanted) -> list[OptionChange]:
    """The changes that make ``doc`` hold ``wanted`` (and nothing else changes)."""
    changes: list[OptionChange] = []
    for section, options in wanted.items():
        for option, raw in options.items():
            want = _want(raw, option)
            current = doc.get(section, option)
            secret = want.secret if want else bool(_SECRET_OPTION.search(option))
            if want is None:
                if current is not None:
                    changes.append(OptionChange(section, option, current, None, secret))
                continue
            _check_name(section, option, want.value)
            if current == want.value or (want.only_if_missing and current is not None):
                continue
            changes.append(OptionChange(section, option, current, want.value, secret))
    return changes


def apply_changes(doc: IniDocument, changes: list[OptionChange]) -> None:
    """Apply planned changes to a document in memory."""
    for change in changes:
        if change.new is None:
            doc.remove(change.section, change.option)
        else:
            doc.set(change.section, change.option, change.new)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock for read-modify-write of ``path`` (a ``.NAME.lock`` beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_name(f".{path.name}.lock")
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_file(path: Path, wanted: Wanted, *, mode: int = 0o640) -> list[OptionChange]:
    """Make ``path`` hold ``wanted``: re-read under a lock, change only those keys, write.

    The write is atomic with ``mode`` from the first byte; the owner and group of an
    existing file are kept when we may. Returns the changes made (empty: untouched file).
    """
    with locked(path):
        doc = IniDocument.load(path)
        changes = plan_options(doc, wanted)
        try:
            st: os.stat_result | None = path.stat()
        except FileNotFoundError:
            st = None
        wrong_mode = st is not None and (st.st_mode & 0o7777) != mode
        if not changes and not wrong_mode:
            return []
        apply_changes(doc, changes)
        try:
            atomic_write(path, doc.render(), mode=mode)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
        if st is not None and (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
            with contextlib.suppress(PermissionError):
                os.chown(path, st.st_uid, st.st_gid)
        return changes


def file_mode_differs(path: Path, mode: int = 0o640) -> bool:
    """True when ``path`` exists with another mode than ``mode``."""
    try:
        return (path.stat().st_mode & 0o7777) != mode
    except FileNotFoundError:
        return False
