"""A cpio archive in the kernel's ``newc`` format, written and read without a ``cpio`` binary.

The lab's guest boots from an initramfs of busybox and a few scripts. Writing it here keeps
the build reproducible byte for byte (fixed inode numbers, owners and times, entries in a
fixed order), so the image is cached by its content and a re-run rebuilds nothing; and the
host needs no extra package. The format is the one ``cpio -H newc`` writes and the kernel
reads (Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte ASCII header
of 13 eight-digit hex fields after the magic ``070701``, the NUL-terminated name, the data,
each padded to 4 bytes, and a final ``TRAILER!!!`` entry.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
_FIELDS = (
    "ino",
    "mode",
    "uid",
    "gid",
    "nlink",
    "mtime",
    "filesize",
    "devmajor",
    "devminor",
    "rdevmajor",
    "rdevminor",
    "namesize",
    "check",
)
HEADER_SIZE = len(MAGIC) + 8 * len(_FIELDS)


class CpioError(ValueError):
    """An archive that is not valid newc."""


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, a regular file, a symlink or a device node."""

    name: str
    mode: int  #: full st_mode (type bits and permissions)
    data: bytes = b""  #: file content, or a symlink's target
    rdev: tuple[int, int] = (0, 0)  #: major, minor for device nodes

    @classmethod
    def directory(cls, name: str, perm: int = 0o755) -> Entry:
        return cls(name, stat.S_IFDIR | perm)

    @classmethod
    def file(cls, name: str, data: bytes, perm: int = 0o644) -> Entry:
        return cls(name, stat.S_IFREG | perm, data)

    @classmethod
    def symlink(cls, name: str, target: str) -> Entry:
        return cls(name, stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def char_device(cls, name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        return cls(name, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(ino: int, entry: Entry, name: bytes) -> bytes:
    values = {
        "ino": ino,
        "mode": entry.mode,
        "uid": 0,
        "gid": 0,
        "nlink": 2 if stat.S_ISDIR(entry.mode) else 1,
        "mtime": 0,
        "filesize": len(entry.data),
        "devmajor": 0,
        "devminor": 0,
        "rdevmajor": entry.rdev[0],
        "rdevminor": entry.rdev[1],
        "namesize": len(name) + 1,
        "check": 0,
    }
    return MAGIC + b"".join(f"{values[f]:08x}".encode() for f in _FIELDS)


def write_newc(entries: Iterable[Entry]) -> bytes:
    """The archive of ``entries`` in the order given (parents before children), uncompressed.

    Everything is owned by root with mtime 0 and inode numbers counted from 1, so the same
    entries always give the same bytes.
    """
    out = bytearray()
    seen: set[str] = set()
    for ino, entry in enumerate(entries, start=1):
        name = entry.name.strip("/")
        if not name or name == TRAILER or ".." in name.split("/"):
            raise CpioError(f"invalid member name {entry.name!r}")
        if name in seen:
            raise CpioError(f"duplicate member {name!r}")
        seen.add(name)
        raw = name.encode()
        out += _header(ino, entry, raw) + raw + b"\0"
        out += _pad(HEADER_SIZE + len(raw) + 1)
        out += entry.data + _pad(len(entry.data))
    trailer = TRAILER.encode()
    out += _header(0, Entry(TRAILER, 0), trailer) + trailer + b"\0"
    out += _pad(HEADER_SIZE + len(trailer) + 1)
    return bytes(out)


def read_newc(archive: bytes) -> list[Entry]:
    """Parse a newc archive (to check what :func:`write_newc` wrote, or any other one)."""
    entries: list[Entry] = []
    pos = 0
    while True:
        header = archive[pos : pos + HEADER_SIZE]
        if len(header) < HEADER_SIZE or not header.startswith(MAGIC):
            raise CpioError(f"no newc header at offset {pos}")
        try:
            values = {f: int(header[6 + 8 * i : 14 + 8 * i], 16) for i, f in enumerate(_FIELDS)}
        except ValueError as exc:
            raise CpioError(f"malformed header at offset {pos}") from exc
        pos += HEADER_SIZE
        name_end = pos + values["namesize"]
        if name_end > len(archive) or archive[name_end - 1] != 0:
            raise CpioError(f"truncated member name at offset {pos}")
        name = archive[pos : name_end - 1].decode()
        pos = name_end + (-(HEADER_SIZE + values["namesize"]) % 4)
        if name == TRAILER:
            return entries
        size = values["filesize"]
        if pos + size > len(archive):
            raise CpioError(f"member {name!r} runs past the end of the archive")
        data = archive[pos : pos + size]
        pos += size + (-size % 4)
        entries.append(
            Entry(name, values["mode"], data, (values["rdevmajor"], values["rdevminor"]))
        )
