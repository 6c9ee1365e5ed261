"""mount(2)/umount2(2) through ctypes, and the agent's Storage handlers."""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger("kata_agent.mount")

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

_FLAGS = {
    "ro": (MS_RDONLY, True), "rw": (MS_RDONLY, False),
    "nosuid": (MS_NOSUID, True), "suid": (MS_NOSUID, False),
    "nodev": (MS_NODEV, True), "dev": (MS_NODEV, False),
    "noexec": (MS_NOEXEC, True), "exec": (MS_NOEXEC, False),
    "sync": (MS_SYNCHRONOUS, True), "async": (MS_SYNCHRONOUS, False),
    "dirsync": (MS_DIRSYNC, True), "remount": (MS_REMOUNT, True),
    "mand": (MS_MANDLOCK, True), "nomand": (MS_MANDLOCK, False),
    "noatime": (MS_NOATIME, True), "atime": (MS_NOATIME, False),
    "nodiratime": (MS_NODIRATIME, True), "diratime": (MS_NODIRATIME, False),
    "bind": (MS_BIND, True), "rbind": (MS_BIND | MS_REC, True),
    "relatime": (MS_RELATIME, True), "norelatime": (MS_RELATIME, False),
    "strictatime": (MS_STRICTATIME, True),
    "defaults": (0, True),
}


class MountError(OSError):
    pass


def parse_options(options: list[str]) -> tuple[int, str]:
    """["nodev", "trans=virtio"] -> (MS_NODEV, "trans=virtio")."""
    flags = 0
    data = []
    for opt in options:
        for o in opt.split(","):
            if not o:
                continue
            if o in _FLAGS:
                bit, on = _FLAGS[o]
                flags = flags | bit if on else flags & ~bit
            else:
                data.append(o)
    return flags, ",".join(data)


_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                                ctypes.c_ulong, ctypes.c_char_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str = "") -> None:
    libc = _lib()
    rc = libc.mount(source.encode() if source else None, target.encode(),
                    fstype.encode() if fstype else None, flags,
                    data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"mount {source!r} on {target!r} (type {fstype or '-'}, "
                              f"flags {flags:#x}, data {data!r}): {os.strerror(err)}")


def umount(target: str, detach: bool = True) -> None:
    rc = _lib().umount2(target.encode(), MNT_DETACH if detach else 0)
    if rc != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"umount {target!r}: {os.strerror(err)}")


def is_mountpoint(path: str) -> bool:
    path = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4].replace("\\040", " ") == path:
                    return True
    except OSError:
        pass
    return False


class StorageError(ValueError):
    """A Storage that cannot be handled (bad request)."""


def mount_storage(storage, shared_dir_source: str | None) -> str:
    """Mount one agent Storage; returns its mount point (for later unmount).

    9p "kataShared" in the process sandbox: a bind mount of shared_dir_source.
    """
    driver = storage.driver
    target = storage.mount_point
    if not target or not target.startswith("/"):
        raise StorageError(f"Storage (driver {driver!r}): mount_point {target!r} must be an absolute path")
    os.makedirs(target, exist_ok=True)
    flags, data = parse_options(list(storage.options))
    if driver == "9p":
        if shared_dir_source is not None:
            log.info("storage %s: bind %s on %s (process sandbox)", storage.source,
                     shared_dir_source, target)
            mount(shared_dir_source, target, None, MS_BIND | MS_REC)
            # A bind ignores other flags: apply them with a remount.
            if flags & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC):
                mount("", target, None, MS_REMOUNT | MS_BIND | (flags & (
                    MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)))
            return target
        mount(storage.source, target, storage.fstype or "9p", flags, data)
        return target
    if driver in ("local",):
        os.chmod(target, 0o777)
        return target
    if driver in ("ephemeral", "tmpfs"):
        mount("tmpfs", target, "tmpfs", flags, data)
        return target
    if driver in ("blk", "virtio-blk", "scsi", "virtio-scsi", "bind") or storage.fstype:
        if not storage.source:
            raise StorageError(f"Storage (driver {driver!r}) has no source")
        fstype = storage.fstype or None
        if driver == "bind" or fstype == "bind":
            flags |= MS_BIND
            fstype = None
        mount(storage.source, target, fstype, flags, data)
        return target
    raise StorageError(f"Storage driver {driver!r} is not supported (9p, local, ephemeral, "
                       f"blk/bind with an fstype are)")
