"""The newc writer of the lab's initramfs: read back by our parser and by GNU cpio."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from novaconsole.lab.initramfs import HEADER_SIZE, CpioError, Entry, read_newc, write_newc

ENTRIES = [
    Entry.directory("bin"),
    Entry.directory("dev"),
    Entry.directory("tmp", 0o1777),
    Entry.char_device("dev/console", 5, 1),
    Entry.file("bin/tool", b"\x7fELF" + bytes(range(256)) * 3, 0o755),
    Entry.file("init", b"#!/bin/sh\necho hi\n", 0o755),
    Entry.file("empty", b""),
    Entry.file("odd", b"abc"),  # 3 bytes: data padding to 4
    Entry.symlink("bin/sh", "tool"),
]


def test_round_trip_keeps_every_member_and_its_type() -> None:
    archive = write_newc(ENTRIES)
    back = read_newc(archive)
    assert back == ENTRIES
    kinds = {e.name: stat.S_IFMT(e.mode) for e in back}
    assert kinds["bin"] == stat.S_IFDIR
    assert kinds["dev/console"] == stat.S_IFCHR
    assert kinds["bin/sh"] == stat.S_IFLNK
    assert next(e for e in back if e.name == "dev/console").rdev == (5, 1)


def test_layout_is_newc_with_4_byte_alignment_and_a_trailer() -> None:
    archive = write_newc(ENTRIES)
    assert archive.startswith(b"070701")
    assert len(archive) % 4 == 0
    assert b"TRAILER!!!\0" in archive[-HEADER_SIZE - 16 :]
    # Each header starts on a 4-byte boundary.
    pos = 0
    for _ in range(len(ENTRIES) + 1):
        assert pos % 4 == 0
        assert archive[pos : pos + 6] == b"070701"
        namesize = int(archive[pos + 94 : pos + 102], 16)
        filesize = int(archive[pos + 54 : pos + 62], 16)
        pos += HEADER_SIZE + namesize
        pos += -pos % 4
        pos += filesize + (-filesize % 4)
    assert pos == len(archive)


def test_the_same_entries_give_the_same_bytes() -> None:
    assert write_newc(ENTRIES) == write_newc(list(ENTRIES))
    assert write_newc(ENTRIES) != write_newc(ENTRIES[::-1])


@pytest.mark.parametrize("name", ["", "/", "a/../b", "TRAILER!!!"])
def test_bad_member_names_are_refused(name: str) -> None:
    with pytest.raises(CpioError, match="invalid member name"):
        write_newc([Entry.file(name, b"x")])


def test_duplicates_are_refused() -> None:
    with pytest.raises(CpioError, match="duplicate member 'a'"):
        write_newc([Entry.file("a", b"1"), Entry.file("/a", b"2")])


@pytest.mark.parametrize(
    ("archive", "message"),
    [
        (b"", "no newc header at offset 0"),
        (b"070707" + b"0" * 104, "no newc header"),
        (b"070701" + b"zz" * 52, "malformed header"),
    ],
)
def test_malformed_archives_are_one_clear_error(archive: bytes, message: str) -> None:
    with pytest.raises(CpioError, match=message):
        read_newc(archive)


def test_truncated_archive_is_refused() -> None:
    archive = write_newc([Entry.file("big", b"x" * 100)])
    with pytest.raises(CpioError, match="'big' runs past the end"):
        read_newc(archive[: HEADER_SIZE + 8 + 50])


needs_cpio = pytest.mark.skipif(
    shutil.which("cpio") is None, reason="GNU cpio not installed (.ci/host-setup.sh installs it)"
)


@needs_cpio
def test_gnu_cpio_lists_and_extracts_what_we_wrote(tmp_path: Path) -> None:
    archive = write_newc(ENTRIES)
    listing = subprocess.run(
        ["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True
    )
    assert listing.stdout.decode().split() == [e.name for e in ENTRIES]
    # Extract (no device nodes: they need privileges and are not what we check here).
    plain = write_newc([e for e in ENTRIES if not stat.S_ISCHR(e.mode)])
    subprocess.run(
        ["cpio", "-i", "-d", "--quiet", "--no-preserve-owner"],
        input=plain,
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    assert (tmp_path / "init").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert (tmp_path / "init").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin" / "sh").readlink() == Path("tool")
    assert (tmp_path / "odd").read_bytes() == b"abc"
    assert (tmp_path / "tmp").stat().st_mode & 0o7777 == 0o1777


@needs_cpio
def test_we_read_what_gnu_cpio_wrote(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"hello world")
    (tmp_path / "d" / "l").symlink_to("f")
    made = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        input=b"d\nd/f\nd/l\n",
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    members = {e.name: e for e in read_newc(made.stdout)}
    assert set(members) == {"d", "d/f", "d/l"}
    assert members["d/f"].data == b"hello world"
    assert members["d/l"].data == b"f"
    assert stat.S_ISLNK(members["d/l"].mode)
