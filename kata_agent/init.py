"""System set-up done by kata-agent itself, depending on where it runs.

* **VM, PID 1** (`setup_guest`): the initrd ``switch_root``s into the guest
  image with the agent as PID 1 and nothing mounted. The agent mounts proc,
  sysfs, devtmpfs on /dev (+ devpts on /dev/pts, tmpfs on /dev/shm), tmpfs on
  /run and /tmp, and cgroups (v1 hierarchies, one per controller, as on the
  host, unless ``agent.cgroups=v2`` is on the kernel command line), sets a
  hostname and a PATH. Every mount is skipped when already there, so an initrd
  that did part of the work is fine.

* **Process sandbox, PID 1 of its own pid namespace** (`setup_process_sandbox`):
  the driver started us in fresh mount/pid/uts/ipc namespaces with /proc
  already remounted (``unshare --mount-proc``). We make every mount private
  (nothing propagates to the host's mount table) and put a private tmpfs on
  /run/kata-containers, under which CreateSandbox mounts the shared dir and the
  agent keeps its state. /sys, /dev and /tmp stay the host's.

* **Anything else** (a developer running kata-agent on the host): nothing is
  mounted.

Reaping (child subreaper, SIGCHLD, waitpid) belongs to the service's reaper
(kata_agent/reaper.py), which owns the processes. Only the standard library is imported here.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("kata_agent.init")

KATA_RUN_DIR = "/run/kata-containers"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_HOSTNAME = "localhost"

# <linux/mount.h>
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

def mount(source: str, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    """mount(2) (kata_agent.mount's, imported lazily); raises OSError naming the target."""
    from kata_agent.mount import mount as _mount

    _mount(source, target, fstype, flags, data or "")


def mounted_targets(mountinfo: str = "/proc/self/mountinfo") -> set[str]:
    """Mount points currently visible (field 5 of mountinfo, octal escapes decoded)."""
    targets = set()
    try:
        with open(mountinfo, "rb") as f:
            for line in f:
                fields = line.split(b" ")
                if len(fields) > 4:
                    targets.add(_unescape(fields[4]))
    except FileNotFoundError:
        pass
    return targets


def _unescape(raw: bytes) -> str:
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x5C and i + 4 <= len(raw) and raw[i + 1 : i + 4].isdigit():
            out.append(int(raw[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def parse_cmdline(text: str) -> dict[str, str]:
    """``agent.*`` options of a kernel command line (``agent.`` stripped).

    A bare flag (``agent.debug_console``) maps to ``""``. Later options win.
    """
    opts: dict[str, str] = {}
    for word in text.split():
        if not word.startswith("agent."):
            continue
        key, sep, value = word[len("agent.") :].partition("=")
        if key:
            opts[key] = value if sep else ""
    return opts


def read_cmdline_options(path: str = "/proc/cmdline") -> dict[str, str]:
    try:
        with open(path) as f:
            return parse_cmdline(f.read())
    except OSError:
        return {}


# ------------------------------------------------------------------ the VM


def _mount_once(mounted: set[str], source: str, target: str, fstype: str, flags: int = 0, data: str | None = None, mode: int = 0o755) -> bool:
    if target in mounted:
        return False
    os.makedirs(target, mode=mode, exist_ok=True)
    mount(source, target, fstype, flags, data)
    mounted.add(target)
    return True


def setup_guest(cmdline_options: dict[str, str] | None = None) -> dict[str, str]:
    """Everything PID 1 of the guest needs before containers can run.

    Returns the kernel command line's ``agent.*`` options (read once /proc is up).
    """
    nosuid_noexec_nodev = MS_NOSUID | MS_NOEXEC | MS_NODEV
    mounted = mounted_targets()
    _mount_once(mounted, "proc", "/proc", "proc", nosuid_noexec_nodev)
    mounted = mounted_targets()  # now readable for real
    _mount_once(mounted, "sysfs", "/sys", "sysfs", nosuid_noexec_nodev)
    _mount_once(mounted, "devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755")
    _mount_once(mounted, "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666")
    _mount_once(mounted, "shm", "/dev/shm", "tmpfs", nosuid_noexec_nodev, "mode=1777", mode=0o1777)
    _mount_once(mounted, "tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    _mount_once(mounted, "tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", mode=0o1777)
    for link, dest in (("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"),
                       ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2")):
        if not os.path.lexists(link):
            try:
                os.symlink(dest, link)
            except OSError:
                pass
    opts = read_cmdline_options() if cmdline_options is None else cmdline_options
    mode = opts.get("cgroups", "v1")
    try:
        if mode == "v2":
            setup_cgroup2(mounted)
        else:
            setup_cgroup1(mounted)
    except OSError as exc:
        log.error("cgroups: %s (containers with resource limits will fail)", exc)
    os.environ.setdefault("PATH", DEFAULT_PATH)
    os.environ.setdefault("HOME", "/root")
    _set_default_hostname()
    _loopback_up()
    return opts


def setup_cgroup1(mounted: set[str] | None = None, *, root: str = "/sys/fs/cgroup", proc_cgroups: str = "/proc/cgroups") -> list[str]:
    """A tmpfs on /sys/fs/cgroup and one v1 hierarchy per enabled controller.

    Same layout as a Debian host without systemd's unified mode
    (/sys/fs/cgroup/{cpu,cpuacct,memory,pids,...}); runc finds them through
    /proc/self/mountinfo. Returns the controllers mounted.
    """
    mounted = mounted_targets() if mounted is None else mounted
    _mount_once(mounted, "cgroup", root, "tmpfs", MS_NOSUID | MS_NOEXEC | MS_NODEV, "mode=0755")
    done = []
    for name in enabled_controllers(proc_cgroups):
        target = os.path.join(root, name)
        try:
            if _mount_once(mounted, "cgroup", target, "cgroup", MS_NOSUID | MS_NOEXEC | MS_NODEV, name):
                done.append(name)
        except OSError as exc:
            log.warning("cgroup v1 %s: %s", name, exc)
    # libcontainer's memory.use_hierarchy default is fine; nothing else to tune.
    return done


def setup_cgroup2(mounted: set[str] | None = None, *, root: str = "/sys/fs/cgroup") -> list[str]:
    """The unified hierarchy on /sys/fs/cgroup, controllers delegated to children."""
    mounted = mounted_targets() if mounted is None else mounted
    _mount_once(mounted, "cgroup2", root, "cgroup2", MS_NOSUID | MS_NOEXEC | MS_NODEV, "nsdelegate")
    enabled = []
    try:
        with open(os.path.join(root, "cgroup.controllers")) as f:
            available = f.read().split()
    except OSError:
        available = []
    for name in available:
        try:
            with open(os.path.join(root, "cgroup.subtree_control"), "w") as f:
                f.write(f"+{name}")
            enabled.append(name)
        except OSError as exc:
            log.debug("cgroup2 +%s: %s", name, exc)
    return enabled


def enabled_controllers(proc_cgroups: str = "/proc/cgroups") -> list[str]:
    names = []
    try:
        with open(proc_cgroups) as f:
            for line in f:
                if line.startswith("#"):
                    continue
                fields = line.split()
                if len(fields) >= 4 and fields[3] == "1":
                    names.append(fields[0])
    except OSError:
        pass
    return names


def _set_default_hostname() -> None:
    current = socket.gethostname()
    if current in ("", "(none)", "localhost"):
        try:
            socket.sethostname(DEFAULT_HOSTNAME)
        except OSError as exc:
            log.debug("sethostname: %s", exc)


def _loopback_up() -> None:
    """`ip link set lo up` without ip(8): SIOCSIFFLAGS on lo."""
    import fcntl
    import struct

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            ifr = struct.pack("16sH22x", b"lo", 0)
            flags = struct.unpack("16sH22x", fcntl.ioctl(s, SIOCGIFFLAGS, ifr))[1]
            if not flags & IFF_UP:
                fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | IFF_UP))
    except OSError as exc:
        log.debug("loopback up: %s", exc)


# ------------------------------------------------------- process sandbox


def setup_process_sandbox(run_dir: str = KATA_RUN_DIR) -> None:
    """Private mounts and a private tmpfs on /run/kata-containers.

    Called as PID 1 of the sandbox's pid namespace, inside its own mount
    namespace. Making "/" recursively private first guarantees that nothing
    mounted afterwards (the tmpfs, the shared-dir bind mount, runc's container
    mounts) can propagate back to the host, whatever propagation the caller set.
    """
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    os.makedirs(run_dir, mode=0o755, exist_ok=True)
    mount("tmpfs", run_dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
    os.environ.setdefault("PATH", DEFAULT_PATH)
    _set_sandbox_hostname()


def _set_sandbox_hostname() -> None:
    # Our uts namespace is a copy of the host's: don't show the host's name.
    try:
        socket.sethostname(DEFAULT_HOSTNAME)
    except OSError as exc:
        log.debug("sethostname: %s", exc)
