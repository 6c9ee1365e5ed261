"""Host mounts of the runtime: what a sandbox's shared dir holds, and how a spec's mounts reach a guest.

Kata 1.x shares each container's rootfs with the guest by bind-mounting it to
``<shared dir>/<container id>/rootfs`` (the guest sees it through 9p). Removing a
directory that still holds such a mount would delete the user's rootfs through it, so
:func:`remove_tree` refuses to touch a tree with a mount point inside it.

A spec's own mounts name host paths the guest does not have (containerd's CRI plugin binds
``<state>/sandboxes/<id>/shm`` on /dev/shm, its hosts, hostname and resolv.conf files; docker's
``-v /host/dir:/ctr/dir`` is a bind too). As Kata 1.x did (virtcontainers container.go
``mountSharedDirMounts``, kata_agent.go ``handleShm``), each mount is one of:

* :data:`GUEST` - the guest's own: not a bind (proc, sysfs, tmpfs, devpts, mqueue, cgroup...), a
  bind of /proc or /sys (``isSystemMount``), or of a host device node or /dev (``isHostDevice``);
  sent unchanged.
* :data:`SHM` - a bind on /dev/shm: the sandbox's shared memory, a guest tmpfs the agent mounts at
  :data:`kata_oci.GUEST_SANDBOX_SHM` from CreateSandbox's "ephemeral" Storage (one per sandbox, so
  a pod's containers share it, as on the host).
* :data:`SHARE` - a bind of any other host file or directory: bind-mounted to
  ``<shared dir>/<container id>-<16 hex>-<basename of the destination>`` (:func:`share`, read-only
  when the mount is), and the spec's source becomes that entry as the guest sees it
  (:func:`kata_oci.guest_shared_path`). :func:`unshare` undoes it at delete.

:func:`plan_shares` picks the names (recorded in the container's state before anything is
mounted, so a ``delete --force`` after a crash finds them); :func:`guest_mounts` rewrites the
spec's mount list for the agent.
"""

from __future__ import annotations

import ctypes
import os
import stat

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_RELATIME = 0x200000
ST_RELATIME = 0x1000
MNT_DETACH = 2

GUEST, SHM, SHARE = "guest", "shm", "share"
DEV_SHM = "/dev/shm"
#: Bind sources under these are the guest's own (Kata 1.x ``systemMountPrefixes``).
SYSTEM_MOUNT_PREFIXES = ("/proc", "/sys")
#: The sandbox's /dev/shm size when its spec binds no host one there (bytes; Kata 1.x ``DefaultShmSize``).
DEFAULT_SHM_SIZE = 64 << 20
#: The sandbox shm tmpfs's options, ``size=<bytes>`` added (Kata 1.x's ephemeral shm Storage).
SHM_OPTIONS = ("noexec", "nosuid", "nodev", "mode=1777")
#: Longest file name (bytes) of a shared dir entry.
NAME_MAX = 255

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


def bind_mount(source: str, target: str, recursive: bool = True) -> None:
    """``mount --rbind source target`` (``recursive`` False: ``--bind``, without the mounts below
    ``source``); target must exist. Raises MountError."""
    flags = MS_BIND | (MS_REC if recursive else 0)
    if _lib().mount(os.fsencode(source), os.fsencode(target), None, flags, None) != 0:
        err = ctypes.get_errno()
        raise MountError(err, f"bind mount of {source} on {target}: {os.strerror(err)}")


def remount_readonly(target: str) -> None:
    """Make the bind mount at ``target`` (and every mount below it) read-only, keeping each one's
    nosuid/nodev/noexec/atime flags (a remount clears the flags it does not name). Raises MountError."""
    for path in sorted(mounts_under(target), key=len):
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | _kept_flags(path)
        if _lib().mount(None, os.fsencode(path), None, flags, None) != 0:
            err = ctypes.get_errno()
            raise MountError(err, f"read-only remount of {path}: {os.strerror(err)}")


def _kept_flags(path: str) -> int:
    """The per-mount flags of the mount at ``path`` a bind remount must repeat (from statvfs)."""
    have = os.statvfs(path).f_flag
    flags = have & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    return flags | (MS_RELATIME if have & ST_RELATIME else 0)


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
    import shutil  # here: shutil (with bz2, lzma) is ~2-3 ms a create would pay before the agent's spawn

    shutil.rmtree(path)


# ------------------------------------------------------------ a spec's host mounts in a guest


def is_bind(mount: dict) -> bool:
    """runc's rule: a mount is a bind mount when its type is ``bind`` or its options name
    ``bind`` / ``rbind`` (``type: none`` binds, as in rootless specs)."""
    return mount.get("type") == "bind" or any(o in ("bind", "rbind") for o in mount.get("options") or [])


def bind_source(mount: dict, bundle: str) -> str:
    """A bind mount's host source as an absolute path (a relative one is relative to the bundle,
    as runc resolves it from the bundle directory)."""
    return os.path.normpath(os.path.join(bundle, mount.get("source") or ""))


def mount_kind(mount: dict, bundle: str) -> str:
    """How one OCI mount (a config.json ``mounts`` entry) reaches the guest: :data:`GUEST`,
    :data:`SHM` or :data:`SHARE` (module docstring). Reads the host source's type (stat); a
    source that does not exist is SHARE (:func:`plan_shares` refuses it)."""
    if not is_bind(mount):
        return GUEST
    if os.path.normpath(mount.get("destination") or "/") == DEV_SHM:
        return SHM
    source = bind_source(mount, bundle)
    if any(source == p or source.startswith(p + "/") for p in SYSTEM_MOUNT_PREFIXES) or source == "/dev":
        return GUEST
    try:
        mode = os.stat(source).st_mode
    except OSError:
        return SHARE
    return GUEST if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else SHARE


def shared_name(container_id: str, destination: str) -> str:
    """A fresh shared dir entry name for a container's mount: ``<id>-<16 hex>-<basename of the
    destination>`` (Kata 1.x ``shareFiles``), the basename cut to fit NAME_MAX bytes."""
    prefix = f"{container_id}-{os.urandom(8).hex()}-"
    base = os.path.basename(os.path.normpath(destination or "/")) or "mount"
    room = NAME_MAX - len(os.fsencode(prefix))
    return prefix + os.fsencode(base)[:room].decode("utf-8", "ignore")


def _option_on(options: list, on: str, off: str) -> bool:
    """Whether flag ``on`` is set by a mount's options (the last of ``on`` / ``off`` wins)."""
    value = False
    for option in options:
        if option in (on, off):
            value = option == on
    return value


def plan_shares(spec: dict, container_id: str, bundle: str) -> list[dict]:
    """The :data:`SHARE` mounts of a spec, each as the record a container's state keeps::

        {"index": <position in spec["mounts"]>, "name": <shared dir entry>, "source": <host path>,
         "destination": <container path>, "readonly": bool, "recursive": bool ("rbind")}

    Nothing is mounted. Raises kata_oci.SpecError (one line) for a bind mount whose host source
    does not exist (runc would refuse it too)."""
    from kata_oci import SpecError

    shares = []
    for index, mount in enumerate(spec.get("mounts") or []):
        if mount_kind(mount, bundle) != SHARE:
            continue
        source = bind_source(mount, bundle)
        if not os.path.exists(source):
            raise SpecError(f"config.json: mounts[{index}] ({mount.get('destination')}): bind source {source} "
                            "does not exist")
        options = list(mount.get("options") or [])
        shares.append({"index": index, "name": shared_name(container_id, mount.get("destination") or ""),
                       "source": source, "destination": mount.get("destination") or "",
                       "readonly": _option_on(options, "ro", "rw"), "recursive": "rbind" in options})
    return shares


def guest_mounts(spec: dict, shares: list[dict], sandbox_shm: bool) -> list[dict]:
    """The spec's ``mounts`` as the agent must get them: each shared one's source is its shared dir
    entry as the guest sees it; a /dev/shm bind is a bind of the sandbox's shm (``sandbox_shm``:
    the sandbox has one, see :func:`sandbox_shm_size`) or else a tmpfs of its own (Kata 1.x
    ``handleShm``); the others are unchanged. Options are kept (read-only stays read-only)."""
    from kata_oci import GUEST_SANDBOX_SHM, guest_shared_path

    by_index = {share["index"]: share for share in shares}
    out = []
    for index, mount in enumerate(spec.get("mounts") or []):
        mount = dict(mount)
        if index in by_index:
            mount["source"] = guest_shared_path(by_index[index]["name"])
        elif is_bind(mount) and os.path.normpath(mount.get("destination") or "/") == DEV_SHM:
            mount = _shm_mount(mount, GUEST_SANDBOX_SHM if sandbox_shm else None)
        out.append(mount)
    return out


def _shm_mount(mount: dict, sandbox_shm: str | None) -> dict:
    """A /dev/shm bind made guest-native: an rbind of ``sandbox_shm``, or (None) a tmpfs of
    DEFAULT_SHM_SIZE bytes for the container alone."""
    options = [o for o in mount.get("options") or [] if o not in ("bind", "rbind")]
    if sandbox_shm is not None:
        return {**mount, "type": "bind", "source": sandbox_shm, "options": ["rbind", *options]}
    return {**mount, "type": "tmpfs", "source": "shm",
            "options": [*SHM_OPTIONS, f"size={DEFAULT_SHM_SIZE}"] + [o for o in options if o == "ro"]}


def sandbox_shm_size(spec: dict, bundle: str) -> int:
    """The sandbox's shared memory size in bytes, from its first container's spec: the size of the
    filesystem its /dev/shm bind names (CRI's pod shm, or the host's /dev/shm), else
    DEFAULT_SHM_SIZE (Kata 1.x ``getShmSize``)."""
    for mount in spec.get("mounts") or []:
        if os.path.normpath(mount.get("destination") or "/") != DEV_SHM or not is_bind(mount):
            continue
        try:
            st = os.statvfs(bind_source(mount, bundle))
        except OSError:
            break
        return st.f_blocks * st.f_frsize or DEFAULT_SHM_SIZE
    return DEFAULT_SHM_SIZE


def share(entry: dict, shared_dir: str) -> str:
    """Bind-mount a :func:`plan_shares` entry's host source to ``<shared_dir>/<name>`` (a directory,
    or an empty file for a file source, made for it), read-only when the entry is. Returns that
    path. Raises MountError / OSError; on failure nothing of it is left."""
    target = os.path.join(shared_dir, entry["name"])
    _make_mount_point(target, os.path.isdir(entry["source"]))
    try:
        bind_mount(entry["source"], target, recursive=entry["recursive"])
        if entry["readonly"]:
            remount_readonly(target)
    except BaseException:
        unshare(target)
        raise
    return target


def _make_mount_point(path: str, directory: bool) -> None:
    if directory:
        os.mkdir(path, 0o755)
    else:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def unshare(path: str) -> None:
    """Undo :func:`share`: unmount ``path`` (with the mounts below it) and remove its mount point
    (an empty directory or file); a path that is gone is fine. Raises MountError / OSError."""
    unmount(path)
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.rmdir(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        pass
