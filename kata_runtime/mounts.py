"""Host mounts of the runtime: a bundle's rootfs bind-mounted into a sandbox's shared dir.

Kata 1.x shares each container's rootfs with the guest by bind-mounting it to
``<shared dir>/<container id>/rootfs`` (the guest sees it through 9p). Removing a
directory that still holds such a mount would delete the user's rootfs through it, so
:func:`remove_tree` refuses to touch a tree with a mount point inside it.
"""

from __future__ import annotations

import ctypes
import os
import shutil

MS_BIND = 0x1000
MS_REC = 0x4000
MNT_DETACH = 2

_libc = None


class MountError(OSError):
    """mount(2) or umount2(2) failed; the message names the paths."""


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


def bind_mount(source: str, target: str) -> None:
    """``mount --rbind source target`` (target must exist). Raises MountError."""
    if _lib().mount(os.fsencode(source), os.fsencode(target), None, MS_BIND | MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"bind mount of {source} on {target}: {os.strerror(err)}")


def unmount(target: str) -> None:
    """Lazily unmount ``target`` (MNT_DETACH), with everything below it; a path not mounted is fine."""
    for path in sorted(mounts_under(target), key=len, reverse=True):
        if _lib().umount2(os.fsencode(path), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (22, 2):  # EINVAL: not a mount point (any more); ENOENT
                raise MountError(err, f"unmount {path}: {os.strerror(err)}")


def _unescape(field: str) -> str:
    # /proc/self/mountinfo escapes space, tab, newline and backslash as \\ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> list[str]:
    """Every mount point of this mount namespace (/proc/self/mountinfo field 5)."""
    with open("/proc/self/mountinfo") as f:
        return [_unescape(line.split()[4]) for line in f if len(line.split()) > 4]


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path``."""
    path = os.path.realpath(path)
    prefix = path.rstrip("/") + "/"
    return [m for m in mount_points() if m == path or m.startswith(prefix)]


def remove_tree(path: str) -> None:
    """``rm -r path``, refusing when a mount point is at or below it (it would be emptied through it)."""
    if not os.path.lexists(path):
        return
    inside = mounts_under(path)
    if inside:
        raise MountError(16, f"not removing {path}: {inside[0]} is still mounted")
    shutil.rmtree(path)
