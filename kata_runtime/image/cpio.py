"""A cpio "newc" (SVR4, no CRC) archive writer: the format the Linux kernel unpacks an initrd from.

    with NewcWriter(fileobj) as cpio:
        cpio.add_dir("bin")
        cpio.add_file("bin/busybox", data, mode=0o755)
        cpio.add_symlink("bin/sh", "busybox")
        cpio.add_char_device("dev/console", 5, 1)
    # the "TRAILER!!!" entry is written on exit

Format (Documentation/driver-api/early-userspace/buffer-format.rst in the kernel tree, and
cpio(5)): each entry is a 110-byte ASCII header — the magic ``070701`` then 13 fields of 8
upper-case hex digits (ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
rdevmajor, rdevminor, namesize including the NUL, check = 0) — followed by the name and a NUL,
padded with NULs to a multiple of 4 bytes, then the data, padded likewise. A symlink's data is
its target. The archive ends with an entry named ``TRAILER!!!``.

Entries are owned by root (uid/gid 0) with mtime 0 unless told otherwise, so the same inputs make
the same bytes (a reproducible initrd). Names are relative (no leading "/"), as the kernel and
`cpio -i` expect. Standard library only.
"""

from __future__ import annotations

import stat
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110


class CpioError(ValueError):
    """An entry cannot be written (bad name, field out of range)."""


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def newc_header(*, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, filesize: int,
                rdevmajor: int, rdevminor: int, namesize: int) -> bytes:
    """The 110-byte header of one entry (devmajor/devminor of the archive's own device are 0)."""
    fields = (ino, mode, uid, gid, nlink, mtime, filesize, 0, 0, rdevmajor, rdevminor, namesize, 0)
    for value in fields:
        if not 0 <= value <= 0xFFFFFFFF:
            raise CpioError(f"cpio newc field out of range: {value}")
    return MAGIC + b"".join(b"%08X" % value for value in fields)


class NewcWriter:
    """Writes newc entries to a binary file object (an open file, a GzipFile, a BytesIO).

    Inode numbers count up from 1; every entry has nlink 1 (dirs 2), so the kernel never
    mistakes two entries for hard links of each other.
    """

    def __init__(self, fileobj: BinaryIO, *, mtime: int = 0, uid: int = 0, gid: int = 0):
        self._f = fileobj
        self._mtime = mtime
        self._uid = uid
        self._gid = gid
        self._ino = 0
        self._names: set[str] = set()
        self._closed = False

    # ---------------------------------------------------------------- entries
    def add_dir(self, name: str, mode: int = 0o755) -> None:
        self._entry(name, stat.S_IFDIR | mode, b"", nlink=2)

    def add_file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def add_symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def add_char_device(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, b"", rdev=(major, minor))

    def close(self) -> None:
        """Write the trailer (once). Does not close the underlying file object."""
        if not self._closed:
            self._write(TRAILER, 0, b"", nlink=1, ino=0)
            self._closed = True

    def __enter__(self) -> "NewcWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()

    # --------------------------------------------------------------- internal
    def _entry(self, name: str, mode: int, data: bytes, *, nlink: int = 1, rdev: tuple[int, int] = (0, 0)) -> None:
        if self._closed:
            raise CpioError("archive already closed")
        name = _check_name(name)
        if name in self._names:
            raise CpioError(f"duplicate cpio entry {name!r}")
        self._names.add(name)
        self._ino += 1
        self._write(name, mode, data, nlink=nlink, ino=self._ino, rdev=rdev)

    def _write(self, name: str, mode: int, data: bytes, *, nlink: int, ino: int, rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        header = newc_header(ino=ino, mode=mode, uid=self._uid if ino else 0, gid=self._gid if ino else 0,
                             nlink=nlink, mtime=self._mtime if ino else 0, filesize=len(data),
                             rdevmajor=rdev[0], rdevminor=rdev[1], namesize=len(encoded))
        self._f.write(header + encoded + _pad(HEADER_SIZE + len(encoded)))
        self._f.write(data + _pad(len(data)))


def _check_name(name: str) -> str:
    """A relative, normalised path inside the archive; raises CpioError otherwise."""
    if not name or name.startswith("/") or "\0" in name:
        raise CpioError(f"bad cpio entry name {name!r} (relative, non-empty, no NUL)")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise CpioError(f"bad cpio entry name {name!r} (no empty, '.' or '..' components)")
    if name == TRAILER:
        raise CpioError(f"{TRAILER!r} is reserved for the trailer")
    return name
