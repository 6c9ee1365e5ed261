"""Is KVM usable on this host? The probe behind `accel = "auto"` and `kata-runtime check`.

Opening /dev/kvm is not enough to know: on a PVM host (`kvm_pvm`), KVM opens,
reports API version 12 and creates VMs, yet a stock kernel never boots (QEMU
hangs after "Probing EDD", or asserts on MSR 0x10a with `-cpu host`). So the
verdict comes in two stages:

1. cheap checks, microseconds, in order, stopping at the first failure
   (`cheap_checks`): /dev/kvm exists and is a character device; it opens
   read-write; KVM_GET_API_VERSION answers 12; KVM_CREATE_VM gives a VM fd.
   Any failure is definitive: KVM is not usable, no QEMU is started.
2. a boot (`boot_probe`): QEMU with accel=kvm boots the guest kernel with a
   tiny initrd (busybox-static; its /init prints `PROBE_MARKER` on the serial
   console and powers off) and must show the marker within `kvm_timeout`
   seconds. The same boot under TCG runs beside it (only waited for when KVM
   fails): if TCG reaches the marker, the probe itself works and the failure
   is KVM's; if neither does, the verdict says the probe cannot tell.

Host facts that explain a failure (`host_virt_facts`: kvm_pvm loaded, no
vmx/svm CPU flag, nested settings of kvm_intel/kvm_amd) go into the reason.

The boot verdict costs seconds, so `probe_cached` keeps it in
`<cache_dir>/kvm-probe.json` (default /run/kata-py, i.e. until reboot), keyed
by the host kernel, the QEMU binary, the guest kernel, /dev/kvm's identity
(its ctime changes when the node is re-created) and the probe's parameters;
a lock file makes concurrent first callers probe once. The cheap checks run on
every call (a removed /dev/kvm is noticed at once).

Every QEMU started here is killed before its function returns, and dies with
the thread that started it if this process is killed (PR_SET_PDEATHSIG, set by
util-linux `setpriv --pdeathsig` when it is installed); the initrd lives in a
temporary directory removed at the end.

Stdlib only. Import cost: this module and json/dataclasses; subprocess,
threading and tempfile load only when a boot runs.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import time
from dataclasses import asdict, dataclass, field

KVM_DEVICE = "/dev/kvm"
#: The only KVM API version Linux has ever reported (linux/kvm.h KVM_API_VERSION).
KVM_API_VERSION = 12
_KVMIO = 0xAE
#: _IO(KVMIO, 0x00) and _IO(KVMIO, 0x01) from linux/kvm.h.
KVM_GET_API_VERSION = (_KVMIO << 8) | 0x00
KVM_CREATE_VM = (_KVMIO << 8) | 0x01

#: The line the probe initrd's /init prints on the console (never on the kernel command line,
#: so the kernel's own "Command line:" echo cannot fake it).
PROBE_MARKER = "kata-py kvm probe: initrd reached"

DEFAULT_QEMU = "qemu-system-x86_64"
#: Seconds a KVM guest gets to reach its initrd (a real KVM host needs about 1).
DEFAULT_KVM_TIMEOUT = 8.0
#: Seconds the TCG control boot gets (about 8 here, unloaded; CI may be slower).
DEFAULT_TCG_TIMEOUT = 60.0
DEFAULT_CACHE_DIR = "/run/kata-py"
CACHE_FILE = "kvm-probe.json"
CACHE_LOCK = "kvm-probe.lock"
#: Bump when the verdict's shape or the probe's method changes (old caches are then ignored).
CACHE_FORMAT = 1
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox", "/usr/lib/busybox/busybox")
PROBE_MEMORY_MIB = 256
_CONSOLE_TAIL_LINES = 5


# --------------------------------------------------------------------- results
@dataclass(frozen=True)
class Check:
    """One cheap check: `name` (device|open|api_version|create_vm), `ok`, one line `detail`."""
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class BootResult:
    """One probe boot.

    accel: "kvm" or "tcg". reached_initrd: the marker was seen. seconds: wall
    time from starting QEMU to the marker, to QEMU's exit, or to giving up
    (killing and reaping QEMU afterwards is not counted).
    reason: one line ("reached its initrd in 2.6 s", "did not reach its
    initrd within 8 s", "qemu-system-x86_64 exited with status 1 after 0.1 s:
    <its last stderr line>"). console_tail / stderr_tail: last lines of the
    guest's serial console and of QEMU's stderr.
    """
    accel: str
    reached_initrd: bool
    seconds: float
    reason: str
    console_tail: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)


@dataclass
class KvmVerdict:
    """The answer: can this host run KVM guests?

    usable: True only when a KVM guest reached its initrd. accel: what
    `accel = "auto"` uses ("kvm" or "tcg"). reason: exactly why, one line.
    checks: the cheap checks that ran (the last failed if any failed).
    facts: `host_virt_facts()`. kvm_boot / tcg_boot: the boots (None when not
    run or not needed). seconds: wall time of the whole probe. probed_at: Unix
    time of the probe. cached: this verdict came from the cache file.
    """
    usable: bool
    accel: str
    reason: str
    checks: list[Check] = field(default_factory=list)
    facts: dict = field(default_factory=dict)
    kvm_boot: BootResult | None = None
    tcg_boot: BootResult | None = None
    qemu: str | None = None
    qemu_version: str | None = None
    kernel: str | None = None
    seconds: float = 0.0
    probed_at: float = 0.0
    cached: bool = False

    def to_dict(self) -> dict:
        """JSON-ready dict (nested dataclasses as dicts)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "KvmVerdict":
        """Inverse of `to_dict`; raises KeyError/TypeError on a malformed dict."""
        data = dict(data)
        data["checks"] = [Check(**c) for c in data.get("checks", [])]
        for key in ("kvm_boot", "tcg_boot"):
            if data.get(key) is not None:
                data[key] = BootResult(**data[key])
        return cls(**data)

    def warning(self) -> str:
        """The one warning `accel = "auto"` logs when it falls back to TCG."""
        return f"KVM is not usable, using TCG (slow): {self.reason}"


# ---------------------------------------------------------------- cheap checks
def errno_text(err: OSError) -> str:
    """'EPERM' style name of an OSError's errno, falling back to its number."""
    return errno.errorcode.get(err.errno, str(err.errno)) if err.errno else str(err)


def cheap_checks(device: str = KVM_DEVICE) -> list[Check]:
    """Run the microsecond checks in order; stop at the first failure.

    What each proves: `device` - the node exists and is a character device
    (the kvm module is loaded and devtmpfs/udev made the node); `open` - this
    process may use it (root or group kvm); `api_version` - a KVM that speaks
    the stable API (KVM_GET_API_VERSION == 12); `create_vm` - KVM will create a
    VM for us (EBUSY: another hypervisor owns VT-x/AMD-V; EPERM: a policy
    forbids it). None of them proves a guest can boot (see `boot_probe`).
    Returns the checks run; never raises for a missing or broken device.
    """
    checks: list[Check] = []
    try:
        st = os.stat(device)
    except FileNotFoundError:
        return [Check("device", False, f"{device} missing")]
    except OSError as err:
        return [Check("device", False, f"{device} cannot be examined: {errno_text(err)}")]
    if not stat.S_ISCHR(st.st_mode):
        return [Check("device", False, f"{device} is not a character device")]
    checks.append(Check("device", True, f"{device} is a character device "
                                        f"({os.major(st.st_rdev)}:{os.minor(st.st_rdev)})"))
    try:
        fd = os.open(device, os.O_RDWR | os.O_CLOEXEC)
    except OSError as err:
        checks.append(Check("open", False, f"{device} cannot be opened read-write: "
                                           f"{errno_text(err)} ({err.strerror})"))
        return checks
    try:
        checks.append(Check("open", True, f"{device} opens read-write"))
        checks.append(_check_api_version(fd))
        if checks[-1].ok:
            checks.append(_check_create_vm(fd))
    finally:
        os.close(fd)
    return checks


def _check_api_version(kvm_fd: int) -> Check:
    """KVM_GET_API_VERSION on an open /dev/kvm fd must answer `KVM_API_VERSION`."""
    import fcntl
    try:
        version = fcntl.ioctl(kvm_fd, KVM_GET_API_VERSION, 0)
    except OSError as err:
        return Check("api_version", False, f"KVM_GET_API_VERSION failed: {errno_text(err)}")
    if version != KVM_API_VERSION:
        return Check("api_version", False,
                     f"KVM_GET_API_VERSION returned {version}, expected {KVM_API_VERSION}")
    return Check("api_version", True, f"KVM_GET_API_VERSION is {version}")


def _check_create_vm(kvm_fd: int) -> Check:
    """KVM_CREATE_VM (machine type 0) must return a VM fd, which is closed at once."""
    import fcntl
    try:
        vm_fd = fcntl.ioctl(kvm_fd, KVM_CREATE_VM, 0)
    except OSError as err:
        detail = f"KVM_CREATE_VM failed: {errno_text(err)}"
        if err.errno == errno.EBUSY:
            detail += " (another hypervisor is using the CPU's virtualization extensions)"
        return Check("create_vm", False, detail)
    os.close(vm_fd)
    return Check("create_vm", True, "KVM_CREATE_VM works")


# ------------------------------------------------------------------ host facts
def host_virt_facts(sys_module: str = "/sys/module", cpuinfo: str = "/proc/cpuinfo") -> dict:
    """What the host says about its virtualization, from sysfs and /proc/cpuinfo.

    Returns {"modules": {name: {param: value}} for the loaded ones of kvm,
    kvm_intel, kvm_amd and kvm_pvm (only the `nested` parameter is kept for
    the vendor modules), "cpu_virt_flags": the CPU flags among vmx/svm,
    "under_hypervisor": the CPU has the `hypervisor` flag (this host is itself
    a VM)}. Missing files give empty answers, never errors.
    """
    modules: dict[str, dict[str, str]] = {}
    for name in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm"):
        if os.path.isdir(os.path.join(sys_module, name)):
            params = {}
            nested = _read_text(os.path.join(sys_module, name, "parameters", "nested"))
            if nested is not None and name in ("kvm_intel", "kvm_amd"):
                params["nested"] = nested
            modules[name] = params
    flags = _cpu_flags(cpuinfo)
    return {"modules": modules, "cpu_virt_flags": sorted(flags & {"vmx", "svm"}),
            "under_hypervisor": "hypervisor" in flags}


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _cpu_flags(cpuinfo: str) -> set[str]:
    """The first CPU's `flags` line of /proc/cpuinfo as a set (empty if unreadable)."""
    text = _read_text(cpuinfo) or ""
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def likely_cause(facts: dict) -> str | None:
    """The host fact that best explains a KVM guest that does not boot, or None.

    A loaded kvm_pvm comes first (PVM runs only PVM-enabled guest kernels);
    then a CPU without vmx/svm (virtualization not exposed to this host).
    """
    if "kvm_pvm" in facts.get("modules", {}):
        return "PVM host: kvm_pvm is loaded, and PVM runs only PVM-enabled guest kernels"
    if not facts.get("cpu_virt_flags"):
        where = " (this host is itself a VM without nested virtualization)" \
            if facts.get("under_hypervisor") else ""
        return f"the CPU shows no vmx/svm flag{where}"
    return None


def describe_facts(facts: dict) -> list[str]:
    """Human lines for `check --verbose`: one per loaded KVM module and one for the CPU."""
    lines = []
    for name, params in facts.get("modules", {}).items():
        extra = ", ".join(f"{k}={v}" for k, v in params.items())
        lines.append(f"module {name} loaded" + (f" ({extra})" if extra else ""))
    flags = facts.get("cpu_virt_flags") or []
    lines.append("CPU virtualization flags: " + (" ".join(flags) if flags else "none (no vmx/svm)")
                 + ("; running under a hypervisor" if facts.get("under_hypervisor") else ""))
    return lines


# ------------------------------------------------------------- cpio (newc) writer
@dataclass(frozen=True)
class CpioEntry:
    """One member of a newc archive.

    name: path inside the archive, relative ("bin/busybox"); parents must
    come earlier (the kernel creates no missing directories). mode: full
    st_mode (stat.S_IFREG | 0o755, S_IFDIR, S_IFCHR, S_IFLNK). data: a file's
    bytes or a symlink's target. rdev: (major, minor) of a device node.
    """
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)
    mtime: int = 0


NEWC_MAGIC = b"070701"
NEWC_TRAILER = "TRAILER!!!"


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def newc_member(entry: CpioEntry, ino: int) -> bytes:
    """Header, name and data of one member in the "newc" format (SVR4, no CRC).

    Layout (linux/Documentation/driver-api/early-userspace/buffer-format.rst):
    magic "070701", then 13 fields of 8 uppercase hex digits - ino, mode, uid,
    gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
    namesize (with its NUL), check (0) - then the NUL-terminated name padded
    to a multiple of 4 (counting the 110-byte header), then the data padded
    to 4. uid/gid are 0; directories get nlink 2, everything else 1 (no hard
    links: the kernel only links regular files whose nlink >= 2).
    """
    name = entry.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, entry.mtime, len(entry.data), 0, 0,
              entry.rdev[0], entry.rdev[1], len(name), 0)
    header = NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)
    return header + name + _pad4(len(header) + len(name)) + entry.data + _pad4(len(entry.data))


def write_newc(out, entries) -> int:
    """Write `entries` (CpioEntry iterable) and the trailer to binary file `out`; returns bytes written.

    Inode numbers are 1, 2, ... in entry order. Raises ValueError for an
    absolute or empty name (the kernel would take it relative anyway, GNU cpio
    would refuse it; we refuse both ambiguities).
    """
    written = 0
    for ino, entry in enumerate(entries, start=1):
        if not entry.name or entry.name.startswith("/"):
            raise ValueError(f"cpio member name must be relative and non-empty: {entry.name!r}")
        written += out.write(newc_member(entry, ino))
    written += out.write(newc_member(CpioEntry(NEWC_TRAILER, 0), 0))
    return written


# --------------------------------------------------------------- probe initrd
class ProbeError(Exception):
    """The boot probe cannot run (no QEMU, kernel or static busybox); the message says which."""


def is_static_elf(path: str) -> bool:
    """True when `path` is an ELF executable without a PT_INTERP program header.

    Reads the ELF header (32- or 64-bit, either endianness) and the program
    header table. Raises ProbeError when the file is not ELF; OSError when
    unreadable.
    """
    import struct
    with open(path, "rb") as f:
        ident = f.read(16)
        if ident[:4] != b"\x7fELF":
            raise ProbeError(f"{path} is not an ELF executable")
        is64, order = ident[4] == 2, "<" if ident[5] == 1 else ">"
        if is64:
            f.seek(32)
            phoff, = struct.unpack(order + "Q", f.read(8))
            f.seek(54)
        else:
            f.seek(28)
            phoff, = struct.unpack(order + "I", f.read(4))
            f.seek(42)
        phentsize, phnum = struct.unpack(order + "HH", f.read(4))
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            p_type, = struct.unpack(order + "I", f.read(4))
            if p_type == 3:  # PT_INTERP: needs a dynamic loader the initrd does not have
                return False
    return True


def find_static_busybox(candidates=BUSYBOX_PATHS) -> str:
    """Path of a statically linked busybox (Debian's busybox-static); raises ProbeError if none."""
    for path in candidates:
        try:
            if os.path.isfile(path) and is_static_elf(path):
                return path
        except (ProbeError, OSError):
            continue
    raise ProbeError("no statically linked busybox (install busybox-static): looked at "
                     + ", ".join(candidates))


def probe_init_script() -> bytes:
    """/init of the probe initrd: print `PROBE_MARKER` on the console, then power off at once."""
    return (b"#!/bin/busybox sh\n"
            b"/bin/busybox echo '" + PROBE_MARKER.encode() + b"'\n"
            b"/bin/busybox poweroff -f\n")


def build_probe_initrd(path: str, busybox: str | None = None) -> str:
    """Write the probe initrd (uncompressed newc cpio, about 2 MB) to `path`; returns `path`.

    Members: dev/, dev/console (char 5:1, so /init has a console even if the
    kernel's built-in initramfs lacks one), bin/, bin/busybox, init. Raises
    ProbeError when no static busybox exists.
    """
    busybox = busybox or find_static_busybox()
    with open(busybox, "rb") as f:
        busybox_bytes = f.read()
    entries = [
        CpioEntry("dev", stat.S_IFDIR | 0o755),
        CpioEntry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("bin", stat.S_IFDIR | 0o755),
        CpioEntry("bin/busybox", stat.S_IFREG | 0o755, busybox_bytes),
        CpioEntry("init", stat.S_IFREG | 0o755, probe_init_script()),
    ]
    with open(path, "wb") as out:
        write_newc(out, entries)
    return path


# ---------------------------------------------------------------------- boots
def find_qemu(qemu: str | None = None) -> str:
    """Absolute path of the QEMU binary (`qemu` as given, else qemu-system-x86_64 from PATH).

    Raises ProbeError when it is not an executable file.
    """
    import shutil
    found = shutil.which(qemu or DEFAULT_QEMU)
    if not found:
        raise ProbeError(f"{qemu or DEFAULT_QEMU} not found" + ("" if qemu else " in PATH"))
    return os.path.abspath(found)


def _version_key(path: str) -> list:
    """Sort key that compares the numbers in a kernel file name as numbers (6.1.0-9 < 6.1.0-10)."""
    import re
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def default_guest_kernel(boot_dir: str = "/boot", release: str | None = None) -> str:
    """The host's kernel image to boot: <boot_dir>/vmlinuz-<running release> if present, else
    the highest-versioned <boot_dir>/vmlinuz-*. Raises ProbeError when there is none."""
    release = release or os.uname().release
    preferred = os.path.join(boot_dir, f"vmlinuz-{release}")
    if os.path.isfile(preferred):
        return preferred
    try:
        images = [os.path.join(boot_dir, n) for n in os.listdir(boot_dir) if n.startswith("vmlinuz-")]
    except OSError:
        images = []
    if not images:
        raise ProbeError(f"no kernel image {boot_dir}/vmlinuz-* (install linux-image-amd64)")
    return max(images, key=_version_key)


def qemu_version(qemu: str) -> str | None:
    """First line of `qemu --version` ("QEMU emulator version 7.2.22 (...)"), or None on failure."""
    import subprocess
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def probe_command(qemu: str, kernel: str, initrd: str, accel: str, cpu: str | None = None) -> list[str]:
    """The QEMU command line of one probe boot.

    Machine `pc` as the runtime's guests, one vCPU, `PROBE_MEMORY_MIB` MiB, no
    default devices, the serial port on QEMU's stdout (console=ttyS0: the
    Debian kernel has the 8250 driver built in, unlike virtio_console), quiet
    kernel, and no reboot: a panic ends QEMU instead of looping.
    """
    command = [qemu, "-no-user-config", "-nodefaults", "-machine", f"pc,accel={accel}",
               "-m", str(PROBE_MEMORY_MIB), "-smp", "1", "-display", "none", "-no-reboot",
               "-serial", "stdio", "-kernel", kernel, "-initrd", initrd,
               "-append", "console=ttyS0 quiet panic=-1 rdinit=/init"]
    if cpu:
        command[5:5] = ["-cpu", cpu]
    return command


def _pdeathsig_prefix() -> list[str]:
    """`setpriv --pdeathsig KILL --` (util-linux) if available, else nothing.

    setpriv sets PR_SET_PDEATHSIG and execs QEMU in the same process, so QEMU
    is SIGKILLed if the thread that started it dies (e.g. the runtime is
    killed mid-probe). A preexec_fn would do the same but is unsafe while the
    other probe thread runs.
    """
    import shutil
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def boot_probe(qemu: str, kernel: str, initrd: str, accel: str, timeout: float,
               cpu: str | None = None, cancel=None) -> BootResult:
    """Boot the probe guest under `accel` and wait at most `timeout` seconds for `PROBE_MARKER`.

    Returns as soon as the marker appears, QEMU exits, `timeout` passes or
    `cancel` (a threading.Event) is set; QEMU is killed and reaped before
    returning in every case (also on exceptions). Never raises for a guest
    that fails; raises OSError only if QEMU cannot be executed at all.
    """
    import subprocess
    start = time.monotonic()
    proc = subprocess.Popen(_pdeathsig_prefix() + probe_command(qemu, kernel, initrd, accel, cpu),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    exit_status = None
    try:
        console, stderr, reached = _watch_console(proc, start + timeout, cancel)
        seconds = round(time.monotonic() - start, 2)
        if not reached:
            exit_status = _exit_status(proc, start + timeout, cancel)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    if reached:
        reason = f"reached its initrd in {seconds:.1f} s"
    elif cancel is not None and cancel.is_set():
        reason = "cancelled"
    elif exit_status is not None:
        reason = _exit_reason(qemu, exit_status, seconds, console, stderr)
    else:
        reason = f"did not reach its initrd within {timeout:g} s"
    return BootResult(accel, reached, seconds, reason, _tail(console), _tail(stderr))


def _exit_status(proc, deadline: float, cancel) -> int | None:
    """QEMU's exit status if it ended (or ends before `deadline`: its pipes close a moment
    before it is reapable), else None."""
    import subprocess
    if cancel is not None and cancel.is_set():
        return proc.poll()
    try:
        return proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return None


def _watch_console(proc, deadline: float, cancel) -> tuple[bytes, bytes, bool]:
    """Read QEMU's stdout (the guest console) and stderr until the marker, EOF on both,
    the monotonic `deadline`, or `cancel`. Returns (console bytes, stderr bytes, marker seen)."""
    import selectors
    marker = PROBE_MARKER.encode()
    buffers = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
    with selectors.DefaultSelector() as selector:
        for fd in buffers:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (cancel is not None and cancel.is_set()):
                break
            for key, _ in selector.select(min(remaining, 0.25)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                buffers[key.fd] += chunk
                if key.fd == proc.stdout.fileno() and marker in buffers[key.fd]:
                    return bytes(buffers[key.fd]), bytes(buffers[proc.stderr.fileno()]), True
    return bytes(buffers[proc.stdout.fileno()]), bytes(buffers[proc.stderr.fileno()]), False


def _exit_reason(qemu: str, status: int, seconds: float, console: bytes, stderr: bytes) -> str:
    """One line for a QEMU that ended on its own before the marker.

    Status 0 means the guest powered off or (with -no-reboot) rebooted, e.g.
    after a panic: the console's last line says why. Otherwise QEMU failed
    (bad option, assertion, ...): its last stderr line says why.
    """
    import signal
    how = (f"was killed by {signal.Signals(-status).name}" if status < 0
           else f"exited with status {status}")
    last = _tail(console, 1) if status == 0 else (_tail(stderr, 1) or _tail(console, 1))
    return f"{os.path.basename(qemu)} {how} after {seconds:.1f} s" + (f": {last[0]}" if last else "")


def _tail(data: bytes, lines: int = _CONSOLE_TAIL_LINES) -> list[str]:
    """Last `lines` non-blank lines of console or stderr bytes, decoded leniently, CRs removed."""
    text = data.decode("utf-8", "replace").replace("\r", "")
    return [line for line in text.splitlines() if line.strip()][-lines:]


# ------------------------------------------------------------------- verdicts
def probe(qemu: str | None = None, kernel: str | None = None, device: str = KVM_DEVICE,
          kvm_timeout: float = DEFAULT_KVM_TIMEOUT, tcg_timeout: float = DEFAULT_TCG_TIMEOUT,
          cpu: str | None = None, busybox: str | None = None) -> KvmVerdict:
    """Decide, without the cache, whether KVM can boot a guest here (see the module docstring).

    qemu: binary (default qemu-system-x86_64 from PATH); kernel: guest kernel
    (default `default_guest_kernel()`); device: the KVM node; kvm_timeout /
    tcg_timeout: seconds each boot may take to reach the initrd; cpu: QEMU
    `-cpu` model of the KVM boot, as the runtime's guests use it (e.g. "host";
    None = QEMU's default); the TCG control always uses QEMU's default, since
    "host" exists only under KVM. Never raises for an
    unusable host: everything becomes the verdict's reason.
    """
    started, probed_at = time.monotonic(), time.time()
    facts = host_virt_facts()
    checks = cheap_checks(device)
    verdict = KvmVerdict(False, "tcg", "", checks, facts, probed_at=probed_at)
    if not checks[-1].ok:
        verdict.reason = checks[-1].detail
    else:
        _boot_both(verdict, qemu, kernel, kvm_timeout, tcg_timeout, cpu, busybox)
    verdict.seconds = round(time.monotonic() - started, 2)
    return verdict


def _boot_both(verdict: KvmVerdict, qemu, kernel, kvm_timeout, tcg_timeout, cpu, busybox) -> None:
    """Run the KVM boot with the TCG control boot beside it and fill in `verdict`.

    The TCG boot starts at the same time (so a host without working KVM pays
    one bound, not two) and is cancelled as soon as KVM reaches its initrd.
    """
    import tempfile
    import threading
    try:
        verdict.qemu = find_qemu(qemu)
        verdict.kernel = kernel or default_guest_kernel()
        if not os.path.isfile(verdict.kernel):
            raise ProbeError(f"guest kernel {verdict.kernel} missing")
        with tempfile.TemporaryDirectory(prefix="kata-kvm-probe-") as tmp:
            initrd = build_probe_initrd(os.path.join(tmp, "initrd.cpio"), busybox)
            verdict.qemu_version = qemu_version(verdict.qemu)
            cancel_tcg, tcg = threading.Event(), {}
            worker = threading.Thread(target=_boot_into, args=(
                tcg, verdict.qemu, verdict.kernel, initrd, "tcg", tcg_timeout, None, cancel_tcg),
                name="kvm-probe-tcg", daemon=True)
            worker.start()
            try:
                verdict.kvm_boot = boot_probe(verdict.qemu, verdict.kernel, initrd, "kvm",
                                              kvm_timeout, cpu)
            finally:
                if verdict.kvm_boot is None or verdict.kvm_boot.reached_initrd:
                    cancel_tcg.set()
                worker.join()
            if not verdict.kvm_boot.reached_initrd:
                verdict.tcg_boot = tcg.get("result")
    except (ProbeError, OSError) as err:
        verdict.reason = ("KVM opens and creates VMs, but the boot probe cannot run: "
                          f"{err if isinstance(err, ProbeError) else _os_error_line(err)}")
        return
    verdict.usable = verdict.kvm_boot.reached_initrd
    verdict.accel = "kvm" if verdict.usable else "tcg"
    verdict.reason = boot_verdict_reason(verdict.kvm_boot, verdict.tcg_boot, verdict.facts)


def _boot_into(results: dict, qemu, kernel, initrd, accel, timeout, cpu, cancel) -> None:
    """Thread body: results["result"] = boot_probe(...), or a BootResult saying why QEMU did not start."""
    try:
        results["result"] = boot_probe(qemu, kernel, initrd, accel, timeout, cpu, cancel)
    except OSError as err:
        results["result"] = BootResult(accel, False, 0.0, f"could not start: {_os_error_line(err)}")


def _os_error_line(err: OSError) -> str:
    where = f" {err.filename}" if err.filename else ""
    return f"{errno_text(err)}{where}: {err.strerror or err}"


def boot_verdict_reason(kvm: BootResult, tcg: BootResult | None, facts: dict) -> str:
    """One line for the boot stage: why KVM is (not) usable, with the TCG control's outcome."""
    if kvm.reached_initrd:
        return f"a KVM guest {kvm.reason}"
    cause = likely_cause(facts)
    kvm_part = f"a KVM guest {kvm.reason}" + (f" ({cause})" if cause else "")
    if tcg is not None and tcg.reached_initrd:
        return f"{kvm_part}; the same guest under TCG {tcg.reason}"
    tcg_part = tcg.reason if tcg is not None else "was not run"
    return f"the probe cannot tell: {kvm_part}, and the same guest under TCG {tcg_part}"


# ---------------------------------------------------------------------- cache
def file_identity(path: str | None) -> list | None:
    """[realpath, size, mtime_ns, inode] of a file, None if missing: changes on any upgrade."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [os.path.realpath(path), st.st_size, st.st_mtime_ns, st.st_ino]


def cache_key(qemu: str, kernel: str, device: str = KVM_DEVICE, cpu: str | None = None,
              kvm_timeout: float = DEFAULT_KVM_TIMEOUT) -> dict:
    """What a cached verdict depends on; a verdict is reused only when all of it is equal.

    The host kernel (release and build), the QEMU binary and guest kernel
    (file identities), /dev/kvm's identity (rdev and ctime, which change when
    the node is re-created, e.g. after reboot or a module reload), the `-cpu`
    model, the KVM bound and `CACHE_FORMAT`.
    """
    uname = os.uname()
    try:
        st = os.stat(device)
        kvm_id = [device, st.st_rdev, st.st_ctime_ns]
    except OSError:
        kvm_id = None
    return {"format": CACHE_FORMAT, "host_kernel": f"{uname.release} {uname.version}",
            "qemu": file_identity(qemu), "kernel": file_identity(kernel), "kvm_device": kvm_id,
            "cpu": cpu, "kvm_timeout": kvm_timeout}


def load_cached(path: str, key: dict) -> KvmVerdict | None:
    """The verdict stored at `path` for exactly `key`, marked cached; None if absent,
    unreadable, malformed or stored for another key."""
    try:
        with open(path) as f:
            stored = json.load(f)
        if stored.get("key") != key:
            return None
        verdict = KvmVerdict.from_dict(stored["verdict"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    verdict.cached = True
    return verdict


def store_cached(path: str, key: dict, verdict: KvmVerdict) -> None:
    """Write {"key", "verdict"} to `path` atomically (temp file + rename), mode 0644."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump({"key": key, "verdict": verdict.to_dict()}, f, indent=1)
    os.replace(tmp, path)


def probe_cached(cache_dir: str | None = DEFAULT_CACHE_DIR, refresh: bool = False,
                 qemu: str | None = None, kernel: str | None = None, device: str = KVM_DEVICE,
                 kvm_timeout: float = DEFAULT_KVM_TIMEOUT, tcg_timeout: float = DEFAULT_TCG_TIMEOUT,
                 cpu: str | None = None, busybox: str | None = None) -> KvmVerdict:
    """`probe()` with its boot verdict cached in `<cache_dir>/kvm-probe.json`.

    The cheap checks always run first; only when they pass is the cache
    consulted (refresh=True skips it) and, on a miss, the boot probe run
    under an exclusive lock (`<cache_dir>/kvm-probe.lock`), so that
    concurrent callers (containerd creating several containers) boot it once.
    cache_dir None, or one that cannot be created, means no caching. Every
    verdict that comes from a boot is stored, "the probe cannot tell" too (it
    also means TCG, and re-probing would cost both bounds on every call).
    """
    kwargs = dict(qemu=qemu, kernel=kernel, device=device, kvm_timeout=kvm_timeout,
                  tcg_timeout=tcg_timeout, cpu=cpu, busybox=busybox)
    checks = cheap_checks(device)
    if not checks[-1].ok or cache_dir is None:
        return probe(**kwargs)
    try:
        resolved_qemu, resolved_kernel = find_qemu(qemu), kernel or default_guest_kernel()
        os.makedirs(cache_dir, mode=0o755, exist_ok=True)
        lock_fd = os.open(os.path.join(cache_dir, CACHE_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except (ProbeError, OSError):
        return probe(**kwargs)
    key = cache_key(resolved_qemu, resolved_kernel, device, cpu, kvm_timeout)
    path = os.path.join(cache_dir, CACHE_FILE)
    try:
        import fcntl
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        verdict = None if refresh else load_cached(path, key)
        if verdict is None:
            verdict = probe(**{**kwargs, "qemu": resolved_qemu, "kernel": resolved_kernel})
            _store_quietly(path, key, verdict)
        return verdict
    finally:
        os.close(lock_fd)


def _store_quietly(path: str, key: dict, verdict: KvmVerdict) -> None:
    """store_cached, ignoring a read-only or full cache dir (the verdict is still returned).
    A verdict whose probe could not run (no boot happened) is not stored."""
    if verdict.kvm_boot is None:
        return
    try:
        store_cached(path, key, verdict)
    except OSError:
        pass


def resolve_accel(accel: str, **probe_kwargs) -> tuple[str, KvmVerdict | None]:
    """The QEMU accelerator for a configured `accel` ("auto", "kvm" or "tcg").

    "kvm" and "tcg" are returned as they are (forced, no probe). "auto" runs
    `probe_cached(**probe_kwargs)` and returns ("kvm", verdict) or ("tcg",
    verdict); the caller logs `verdict.warning()` once when it is "tcg".
    Raises ValueError for any other value.
    """
    if accel in ("kvm", "tcg"):
        return accel, None
    if accel != "auto":
        raise ValueError(f"accel must be auto, kvm or tcg, not {accel!r}")
    verdict = probe_cached(**probe_kwargs)
    return verdict.accel, verdict
