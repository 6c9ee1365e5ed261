"""A mount handed from the host into a running process's mount namespace (the process sandbox).

The process sandbox's agent lives in a private copy of the host's mount table, taken when it
started: a mount made on the host later, such as the rootfs of a container that joins a running
pod, is never seen inside (the agent makes every mount private, and a container engine mounts
the joining container's rootfs, e.g. containerd's overlay, only just before ``create``). A bind
mount made *inside* the namespace from a host path would not work either: the path may hold
nothing there. So the mount itself is carried across, with the new mount API (Linux >= 5.2):

1. ``open_tree(source, OPEN_TREE_CLONE | AT_RECURSIVE)`` in the runtime's namespace: a detached
   copy of the mount tree at ``source`` (submounts included), held by a file descriptor;
2. a thread of ours leaves the process's shared filesystem context (``unshare(CLONE_FS)``:
   the kernel lets only a task whose root and working directory are its own change mount
   namespace), joins the target's mount namespace (``setns(/proc/<pid>/ns/mnt)``) and
   ``move_mount()``s the detached copy onto ``target`` there; then it ends, and the rest of
   the process never left the host's namespace. (A forked child did this before: ~10 ms of a
   create that takes a cached sandbox or joins a pod, for the fork of the interpreter and its
   wait.)

:func:`unmount_in` undoes it (``umount2(target, MNT_DETACH)`` inside the namespace). Both
need CAP_SYS_ADMIN. Errors are :class:`kata_runtime.mounts.MountError` naming the paths and
the pid. The syscall numbers are the same on every Linux architecture (new syscalls, >= 424).
"""

from __future__ import annotations

import ctypes
import errno
import os

from kata_runtime.mounts import MountError

SYS_OPEN_TREE = 428
SYS_MOVE_MOUNT = 429
OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
AT_RECURSIVE = 0x8000
AT_FDCWD = -100
MOVE_MOUNT_F_EMPTY_PATH = 0x4
CLONE_NEWNS = 0x00020000
CLONE_FS = 0x00000200
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def clone_tree(source: str) -> int:
    """A file descriptor holding a detached recursive copy of the mount tree at ``source``
    (like ``mount --rbind``, not attached anywhere yet). Raises MountError."""
    fd = _libc.syscall(SYS_OPEN_TREE, ctypes.c_int(AT_FDCWD), os.fsencode(source),
                       ctypes.c_uint(OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE))
    if fd < 0:
        err = ctypes.get_errno()
        raise MountError(err, f"open_tree({source}): {os.strerror(err)}")
    return int(fd)


def bind_into(pid: int, source: str, target: str) -> None:
    """Bind-mount the host's ``source`` (with its submounts) on ``target`` inside the mount
    namespace of process ``pid``; ``target`` must exist there. Raises MountError."""
    tree = clone_tree(source)
    try:
        err = _in_namespace(pid, lambda: _move_mount(tree, target))
    finally:
        os.close(tree)
    if err:
        raise MountError(err, f"bind mount of {source} on {target} in the mount namespace of pid {pid}: "
                              f"{os.strerror(err)}")


def unmount_in(pid: int, target: str) -> None:
    """Lazily unmount ``target`` inside the mount namespace of ``pid``; a target that is not
    mounted (any more) is fine. Raises MountError."""
    err = _in_namespace(pid, lambda: _umount(target))
    if err and err not in (errno.EINVAL, errno.ENOENT):
        raise MountError(err, f"unmount {target} in the mount namespace of pid {pid}: {os.strerror(err)}")


def _move_mount(tree: int, target: str) -> int:
    rc = _libc.syscall(SYS_MOVE_MOUNT, ctypes.c_int(tree), b"", ctypes.c_int(AT_FDCWD), os.fsencode(target),
                       ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH))
    return ctypes.get_errno() if rc != 0 else 0


def _umount(target: str) -> int:
    return ctypes.get_errno() if _libc.umount2(os.fsencode(target), MNT_DETACH) != 0 else 0


def _in_namespace(pid: int, action) -> int:
    """Run ``action()`` (returns 0 or an errno) in a thread of ours that joined the mount
    namespace of ``pid`` (its own filesystem context first); returns its errno (0: done)."""
    import _thread  # not threading, whose import would cost the create a few ms more

    try:
        ns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        return e.errno or errno.ESRCH
    result = [errno.EIO]
    done = _thread.allocate_lock()
    done.acquire()

    def body() -> None:
        try:
            if _libc.unshare(CLONE_FS) != 0 or _libc.setns(ns, CLONE_NEWNS) != 0:
                result[0] = ctypes.get_errno()
            else:
                result[0] = action()
        finally:
            done.release()

    try:
        _thread.start_new_thread(body, ())
        done.acquire()
    finally:
        os.close(ns)
    return result[0]
