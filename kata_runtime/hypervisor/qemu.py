"""The QEMU driver: `hypervisor = "qemu"` — one sandbox's guest kernel in a QEMU VM.

    qemu = QemuHypervisor(sandbox_dir, sandbox_id, kernel=..., initrd=..., image=..., accel="tcg")
    await qemu.start()                      # QEMU daemonised; kata.sock accepts connections
    ... start kata-proxy --mux-socket qemu.channel_socket_path ...
    await qemu.wait_ready(check)            # the caller's Health Check through the proxy
    await qemu.stop()                       # QMP quit, then SIGKILL after the bound

The command line (`command_line()`, from explicit parameters only; what works here is in
DESIGN.md "Verified on this kind of machine"), per sandbox directory (see hypervisor/base.py)::

    qemu-system-x86_64 -name sandbox-<id> -machine <type>,accel=<kvm|tcg> [-cpu <model>]
      -m <memory>M -smp <vcpus> -no-user-config -nodefaults -display none -no-reboot
      [-bios <firmware>]                                                 qboot.rom unless configured
      -kernel <kernel> -initrd <initrd> -append "<kata's amd64 params> acpi=noirq console=hvc0
                                                  panic=-1 quiet|debug agent.log=<level> <kernel_params>"
      -device virtio-serial-pci,id=serial0
      -chardev socket,id=charch0,path=<sandbox>/kata.sock,server=on,wait=off      kata-proxy's -mux-socket
      -device virtserialport,bus=serial0.0,chardev=charch0,name=agent.channel.0
      -chardev socket,id=charconsole0,path=<sandbox>/console.sock,server=on,wait=off,
               logfile=<sandbox>/console.log,logappend=on                           hvc0: kata-proxy's
      -device virtconsole,bus=serial0.0,chardev=charconsole0                       -agent-logs-socket
      -fsdev local,id=extra-9p-kataShared,path=<sandbox>/shared,security_model=none,multidevs=remap
      -device virtio-9p-pci,fsdev=extra-9p-kataShared,mount_tag=kataShared
      -drive id=image0,file=<image>,if=none,format=raw,readonly=on,aio=threads
      -device virtio-blk-pci,drive=image0                                           /dev/vda in the guest
      -object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-pci,rng=rng0   entropy_source
      -qmp unix:<sandbox>/qmp.sock,server=on,wait=off
      -daemonize -pidfile <sandbox>/qemu.pid

* ``-nodefaults``: no default NIC (QEMU's default would be user-mode networking to the host),
  VGA, floppy or CD; the guest sees exactly the devices above. The image is read-only and the
  guest never sees the host's root filesystem: only ``kataShared`` is shared.
* The console is a socket chardev that kata-proxy reads (``--agent-logs-socket``: each guest line
  in the proxy's log with ``source=agent``) AND logs to ``console.log`` (the chardev's
  ``logfile``). QEMU writes the log file whether or not a reader is connected (checked here with
  QEMU 7.2: a guest that prints before the proxy connects, or with no proxy at all, still fills
  it), so the lines that explain a failed boot are always in the file: the socket alone would
  drop them (wait=off), a file chardev alone would never reach the proxy.
* ``virtio-rng`` fed from the host's ``entropy_source`` (Kata 1.x's option, default /dev/urandom;
  "" = none): without it the guest's CRNG is not ready when kata-agent starts, and Python's very
  first read of /dev/urandom (its hash seed) waits in the kernel's jitter-entropy loop until it
  is: "random: crng init done" came 1.3-1.6 s after the image was mounted, right before the
  agent's first line. The initrd loads virtio_rng with the other modules, so the CRNG is ready
  before /init mounts the image.
* Kernel parameters: Kata 1.x's amd64 defaults (virtcontainers/qemu_amd64.go) that speed up a
  boot (no i8042 probing, no crypto self tests, tsc trusted), without its root=/rootflags (our
  initrd mounts the image); ``panic=-1`` with ``-no-reboot`` makes a guest that dies (or whose
  /init powers off) end QEMU at once; ``acpi=noirq`` (ours: PCI interrupt routing without ACPI's
  interpreter, see FAST_BOOT_KERNEL_PARAMS).
* Firmware: qboot, QEMU's minimal firmware for a direct kernel boot, where QEMU ships it (see
  QBOOT_ROM: 0.45 s less from QEMU's start to the kernel than SeaBIOS under TCG); ``firmware``
  in [hypervisor.qemu] (Kata 1.x's key) names another.
* ``accel`` is ``kvm`` or ``tcg``: resolving ``auto`` (the KVM probe) is the caller's job.

Process handling: QEMU daemonises (``-daemonize``: the launcher exits once the VM is set up, so
the sockets exist when `start()` returns, and QEMU outlives the short-lived runtime) and writes
its pid to ``<sandbox>/qemu.pid``. Before any signal the pid's /proc/<pid>/cmdline must be a QEMU
with THIS sandbox's ``-pidfile``: a recycled pid is never signalled. `stop()` asks QEMU to quit over
QMP, waits up to ``timeout`` and then SIGKILLs it; then it SIGKILLs any other live QEMU with this
sandbox's ``-pidfile`` (found in /proc: a runtime killed while QEMU daemonised leaves a launcher or
a daemon that the pid file does not name yet). Any failure of `start()` or `wait_ready()`
stops what was started before raising HypervisorError, whose message ends with the console's
last lines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import shutil
import signal
import time
from typing import Awaitable, Callable, Iterable

from kata_runtime.hypervisor.base import Hypervisor, HypervisorError, wait_gone
from kata_runtime.procs import cmdline, keep_priority, kill_pid, pid_alive, read_pid_file
from kata_runtime.state import remove_file

log = logging.getLogger("kata_runtime.hypervisor.qemu")

DEFAULT_PATH = "qemu-system-x86_64"
DEFAULT_MACHINE_TYPE = "pc"
DEFAULT_VCPUS = 1
DEFAULT_MEMORY_MIB = 2048
#: QEMU's minimal x86 firmware for a direct kernel boot (qboot), shipped with QEMU beside its other
#: ROMs: under TCG here QEMU start -> the kernel's first line took 0.20 s with it against 0.65 s with
#: SeaBIOS, QEMU's default (4 alternated boots each). Kata 1.x's `firmware` key names another.
QBOOT_ROM = "qboot.rom"
#: Kata 1.x's default entropy_source: the host file a virtio-rng device reads.
DEFAULT_ENTROPY_SOURCE = "/dev/urandom"
#: Bound of "QEMU started -> the agent answers" (TCG boots take ~5-15 s here; CI shares 2 cores).
BOOT_TIMEOUT = 120.0
#: Bound of the daemonising launcher (it exits once the VM is set up: well under a second).
LAUNCH_TIMEOUT = 30.0
QMP_TIMEOUT = 2.0
POLL_INTERVAL = 0.05
UNIX_PATH_MAX = 107
CONSOLE_TAIL_LINES = 10
ACCELERATORS = ("kvm", "tcg")
#: Configuration value that the caller resolves before `start()` (kata_runtime.kvm.resolve_accel).
AUTO = "auto"

#: Kata 1.x amd64 kernel parameters (virtcontainers/qemu_amd64.go `kernelParams`) less its
#: root=/rootflags=/rootfstype= (pmem image), console=hvc1 (no second console) and iommu=off.
KATA_AMD64_KERNEL_PARAMS = (
    "tsc=reliable", "no_timer_check", "rcupdate.rcu_expedited=1", "i8042.direct=1", "i8042.dumbkbd=1",
    "i8042.nopnp=1", "i8042.noaux=1", "noreplace-smp", "reboot=k", "cryptomgr.notests", "net.ifnames=0",
    "pci=lastbus=0",
)
#: Ours, for a faster boot: ``acpi=noirq`` routes PCI INTx through the BIOS's $PIR table instead of
#: evaluating the ACPI interrupt links in AML, which under TCG took 0.15-0.5 s per virtio device
#: ("ACPI: \_SB_.LNKx: Enabled at IRQ n") while /init loaded the modules: that stage went from a
#: median 2.1 s to 1.8 s (guest clock, 5 alternated boots each on a loaded host; 4 of 5 pairs faster).
#: ``initcall_blacklist`` skips two built-in initcalls that only test or offer what a sandbox guest never
#: uses, the slowest of the kernel's start under TCG (``initcall_debug``, one boot): the SP800-108 KDF
#: self test (crypto_kdf108_init, 189 ms: it runs even with cryptomgr.notests; the KDF itself stays
#: available) and the tracefs kprobe-events interface (init_kprobe_trace, 122 ms).
FAST_BOOT_KERNEL_PARAMS = ("acpi=noirq", "initcall_blacklist=crypto_kdf108_init,init_kprobe_trace")


class QemuHypervisor(Hypervisor):
    """A QEMU VM booting the guest kernel + initrd, with the guest image on read-only virtio-blk."""

    kind = "qemu"
    QMP_SOCKET = "qmp.sock"
    CONSOLE_SOCKET = "console.sock"

    def __init__(
        self,
        sandbox_dir: str | os.PathLike,
        sandbox_id: str,
        *,
        kernel: str | None = None,
        initrd: str | None = None,
        image: str | None = None,
        accel: str = "tcg",
        path: str = DEFAULT_PATH,
        machine_type: str = DEFAULT_MACHINE_TYPE,
        cpu_model: str | None = None,
        vcpus: int = DEFAULT_VCPUS,
        memory_mib: int = DEFAULT_MEMORY_MIB,
        kernel_params: Iterable[str] | str = (),
        agent_log_level: str = "info",
        debug: bool = False,
        boot_timeout: float = BOOT_TIMEOUT,
        entropy_source: str = DEFAULT_ENTROPY_SOURCE,
        firmware: str = "",
    ):
        """Paths may be None for an object that only stops a running guest; `start()` needs them.

        ``kernel_params``: extra kernel command line words (a string is split like a shell would).
        ``boot_timeout``: seconds `wait_ready()` waits by default. ``entropy_source``: the host
        file behind the guest's virtio-rng ("" for no such device). ``firmware``: what QEMU runs
        before the kernel (``-bios``; "" for QEMU's default; see `sandbox_firmware`). ``accel``:
        "kvm" or "tcg"; "auto" is accepted here (an object that only stops a guest) but `start()` refuses it.
        Raises ValueError for a bad accel, vcpus or memory (a configuration error).
        """
        super().__init__(sandbox_dir, sandbox_id)
        if accel not in (*ACCELERATORS, AUTO):
            raise ValueError(f"accel must be one of {', '.join(ACCELERATORS)} (or {AUTO!r}, resolved by the "
                             f"caller before start()), not {accel!r}")
        if vcpus < 1 or memory_mib < 64:
            raise ValueError(f"vcpus must be >= 1 and memory_mib >= 64 (got {vcpus}, {memory_mib})")
        self.kernel = os.path.abspath(kernel) if kernel else None
        self.initrd = os.path.abspath(initrd) if initrd else None
        self.image = os.path.abspath(image) if image else None
        self.accel = accel
        self.path = path
        self.machine_type = machine_type
        self.cpu_model = cpu_model
        self.vcpus = vcpus
        self.memory_mib = memory_mib
        self.kernel_params = shlex.split(kernel_params) if isinstance(kernel_params, str) else list(kernel_params)
        self.agent_log_level = agent_log_level
        self.debug = debug
        self.boot_timeout = boot_timeout
        self.entropy_source = entropy_source
        self.firmware = firmware
        #: time.monotonic() when start() launched QEMU (None before).
        self.started_at: float | None = None
        self._console_offset = 0
        #: The pod network's taps: [(fd, MAC, netdev id)] (kata_runtime.network.PodNetwork.nics).
        self.nics: list[tuple[int, str, str]] = []

    @classmethod
    def from_config(cls, sandbox_dir, sandbox_id, settings: dict, debug: bool = False) -> "QemuHypervisor":
        """[hypervisor.qemu] of configuration.toml (kata_runtime.config.SCHEMA's keys): ``path``,
        ``kernel``, ``initrd``, ``image`` ("" = not configured: see `resolve_settings`),
        ``machine_type``, ``default_vcpus``, ``default_memory`` (MiB), ``kernel_params``, ``accel``
        (resolve "auto" before `start()`), ``boot_timeout`` (seconds), ``entropy_source`` (absent:
        /dev/urandom; "": no virtio-rng), ``firmware`` (as `resolve_settings` made it),
        ``enable_debug`` (kernel ``debug`` instead of ``quiet``). ``debug``: the agent logs at debug level (``agent.log=debug``)."""
        return cls(sandbox_dir, sandbox_id,
                   kernel=settings.get("kernel") or None, initrd=settings.get("initrd") or None,
                   image=settings.get("image") or None, accel=settings.get("accel") or "tcg",
                   path=settings.get("path") or DEFAULT_PATH,
                   machine_type=settings.get("machine_type") or DEFAULT_MACHINE_TYPE,
                   vcpus=int(settings.get("default_vcpus") or DEFAULT_VCPUS),
                   memory_mib=int(settings.get("default_memory") or DEFAULT_MEMORY_MIB),
                   kernel_params=settings.get("kernel_params") or "",
                   agent_log_level="debug" if debug else "info", debug=bool(settings.get("enable_debug")),
                   boot_timeout=float(settings.get("boot_timeout") or BOOT_TIMEOUT),
                   entropy_source=settings.get("entropy_source", DEFAULT_ENTROPY_SOURCE),
                   firmware=settings.get("firmware") or "")

    @classmethod
    def resolve_settings(cls, settings: dict, *, probe_cache_dir: str | None, warn) -> dict:
        """[hypervisor.qemu] made concrete for one sandbox, before anything starts (its sandbox.json
        records the result, so every later command rebuilds the same driver): the guest files
        (`guest_files`), the firmware (`sandbox_firmware`) and the accelerator (`resolve_accel`). ``warn(message)`` is called once
        when ``auto`` falls back to TCG. Raises HypervisorError (one line) when no guest image
        can be found."""
        resolved = dict(settings)
        resolved.update(guest_files(settings))
        resolved["firmware"] = sandbox_firmware(settings)
        resolved["accel"] = resolve_accel(resolved, probe_cache_dir, warn)
        return resolved

    # ---------------------------------------------------------------- layout
    @property
    def qmp_socket_path(self) -> str:
        return os.path.join(self.sandbox_dir, self.QMP_SOCKET)

    @property
    def console_socket_path(self) -> str:
        """The guest console (hvc0) as a unix socket: kata-proxy's ``--agent-logs-socket``."""
        return os.path.join(self.sandbox_dir, self.CONSOLE_SOCKET)

    def kernel_command_line(self) -> str:
        """Kata's amd64 parameters, ours (acpi=noirq, console, panic, quiet/debug, agent.log), then
        the caller's."""
        ours = [*FAST_BOOT_KERNEL_PARAMS, "console=hvc0", "panic=-1", "debug" if self.debug else "quiet",
                f"agent.log={self.agent_log_level}"]
        return " ".join([*KATA_AMD64_KERNEL_PARAMS, *ours, *self.kernel_params])

    def command_line(self, qemu: str | None = None) -> list[str]:
        """QEMU's argv (see the module docstring); ``qemu``: the resolved binary path."""
        machine = f"{self.machine_type},accel={self.accel}"
        argv = [qemu or self.path, "-name", f"sandbox-{self.sandbox_id}", "-machine", machine]
        if self.cpu_model:
            argv += ["-cpu", self.cpu_model]
        argv += ["-m", f"{self.memory_mib}M", "-smp", str(self.vcpus),
                 "-no-user-config", "-nodefaults", "-display", "none", "-no-reboot",
                 *(["-bios", self.firmware] if self.firmware else []),
                 "-kernel", self.kernel or "", "-initrd", self.initrd or "", "-append", self.kernel_command_line()]
        argv += self._channel_devices() + self._console_devices() + self._shared_dir_devices() + self._image_devices()
        argv += self._rng_devices()
        argv += self._network_devices()
        argv += ["-qmp", f"unix:{_opt(self.qmp_socket_path)},server=on,wait=off",
                 "-daemonize", "-pidfile", self.pid_file]
        return argv

    def _channel_devices(self) -> list[str]:
        return ["-device", "virtio-serial-pci,id=serial0",
                "-chardev", f"socket,id=charch0,path={_opt(self.channel_socket_path)},server=on,wait=off",
                "-device", "virtserialport,bus=serial0.0,chardev=charch0,name=agent.channel.0"]

    def _console_devices(self) -> list[str]:
        return ["-chardev", f"socket,id=charconsole0,path={_opt(self.console_socket_path)},server=on,wait=off,"
                            f"logfile={_opt(self.console_log_path)},logappend=on",
                "-device", "virtconsole,bus=serial0.0,chardev=charconsole0"]

    def _shared_dir_devices(self) -> list[str]:
        return ["-fsdev", f"local,id=extra-9p-kataShared,path={_opt(self.shared_dir)},security_model=none,"
                          "multidevs=remap",
                "-device", "virtio-9p-pci,fsdev=extra-9p-kataShared,mount_tag=kataShared"]

    def attach_network(self, pod_network) -> None:
        """The pod network's taps (opened in its namespace by kata_runtime.network) become NICs."""
        self.nics = list(pod_network.nics)

    def _network_devices(self) -> list[str]:
        """Per tap: ``-netdev tap,fd=N`` (inherited by QEMU) and a virtio-net with the veth's MAC."""
        argv = []
        for fd, mac, netdev in self.nics:
            argv += ["-netdev", f"tap,id={netdev},fd={fd}",
                     "-device", f"virtio-net-pci,netdev={netdev},mac={mac}"]
        return argv

    def _image_devices(self) -> list[str]:
        return ["-drive", f"id=image0,file={_opt(self.image or '')},if=none,format=raw,readonly=on,aio=threads",
                "-device", "virtio-blk-pci,drive=image0"]

    def _rng_devices(self) -> list[str]:
        """A virtio-rng reading ``entropy_source`` on the host: the guest's CRNG is ready at once."""
        if not self.entropy_source:
            return []
        return ["-object", f"rng-random,id=rng0,filename={_opt(self.entropy_source)}",
                "-device", "virtio-rng-pci,rng=rng0"]

    # ------------------------------------------------------------------ state
    @property
    def pid(self) -> int | None:
        pid = read_pid_file(self.pid_file)
        return pid if pid is not None and self._is_ours(pid) and pid_alive(pid) else None

    def _is_ours(self, pid: int) -> bool:
        """Guard against pid reuse: pid must be a QEMU whose -pidfile is this sandbox's."""
        args = cmdline(pid)
        if not args or not os.path.basename(args[0]).startswith(b"qemu-system"):
            return False
        want = os.fsencode(self.pid_file)
        return any(a == b"-pidfile" and b == want for a, b in zip(args, args[1:]))

    # -------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Launch QEMU daemonised. Raises HypervisorError (nothing left running) when it cannot."""
        if self.pid is not None:
            raise HypervisorError(f"sandbox {self.sandbox_id} is already running (QEMU pid {self.pid})")
        qemu = self._check_inputs()
        os.makedirs(self.sandbox_dir, mode=0o750, exist_ok=True)
        os.makedirs(self.shared_dir, mode=0o755, exist_ok=True)
        self._cleanup()
        self._console_offset = _size(self.console_log_path)
        argv = self.command_line(qemu)
        log.debug("qemu %s: %s", self.sandbox_id, shlex.join(argv))
        self.started_at = time.monotonic()
        try:
            await self._launch(argv)
        except BaseException:
            await self._kill_and_cleanup()
            raise
        log.info("qemu %s: started (pid %s, accel %s)", self.sandbox_id, self.pid, self.accel)

    def _check_inputs(self) -> str:
        """The QEMU binary's path; HypervisorError for a missing binary, kernel, initrd or image."""
        if self.accel not in ACCELERATORS:
            raise HypervisorError(f"qemu sandbox {self.sandbox_id}: accel {self.accel!r} is not resolved; "
                                  "the caller picks kvm or tcg first (kata_runtime.kvm.resolve_accel)")
        qemu = shutil.which(self.path)
        if qemu is None:
            raise HypervisorError(f"QEMU not found: {self.path!r} (apt-get install qemu-system-x86)")
        for what, path in (("kernel", self.kernel), ("initrd", self.initrd), ("guest image", self.image)):
            if not path:
                raise HypervisorError(f"qemu sandbox {self.sandbox_id}: no {what} configured "
                                      "(kata-runtime image build makes one)")
            if not os.path.isfile(path) or not os.access(path, os.R_OK):
                raise HypervisorError(f"qemu sandbox {self.sandbox_id}: {what} {path} does not exist or is unreadable")
        for path in (self.channel_socket_path, self.qmp_socket_path, self.console_socket_path):
            if len(os.fsencode(path)) > UNIX_PATH_MAX:
                raise HypervisorError(f"socket path is too long for a unix socket ({len(path)} > {UNIX_PATH_MAX} "
                                      f"bytes): {path}; use a shorter sandbox directory")
        return qemu

    async def _launch(self, argv: list[str]) -> None:
        """Run the daemonising launcher to its exit; HypervisorError with QEMU's stderr if it failed."""
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    cwd=self.sandbox_dir, start_new_session=True,
                                                    pass_fds=[fd for fd, _, _ in self.nics])
        try:
            out, err = await asyncio.wait_for(proc.communicate(), LAUNCH_TIMEOUT)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise HypervisorError(f"qemu sandbox {self.sandbox_id}: QEMU did not finish starting within "
                                  f"{LAUNCH_TIMEOUT:g}s{self._console_suffix()}") from None
        if proc.returncode != 0:
            why = (err or out).decode("utf-8", "replace").strip() or f"exit status {proc.returncode}"
            raise HypervisorError(f"qemu sandbox {self.sandbox_id}: QEMU failed to start: {why} (kernel "
                                  f"{self.kernel}, initrd {self.initrd}, image {self.image}){self._console_suffix()}")
        if self.pid is None:
            raise HypervisorError(f"qemu sandbox {self.sandbox_id}: QEMU exited right after starting "
                                  f"(no live pid in {self.pid_file}){self._console_suffix()}")
        keep_priority(self.pid)  # -daemonize made a session of its own

    async def wait_ready(self, probe: Callable[[], Awaitable[object]], timeout: float | None = None) -> float:
        """Wait until ``probe()`` returns (the agent answered), watching QEMU meanwhile.

        ``probe``: an async callable that returns once the agent answers, e.g. a Health Check
        through kata-proxy with gRPC's wait_for_ready; it may raise. ``timeout`` defaults to
        ``boot_timeout``. Returns the seconds since `start()` launched QEMU. Raises
        HypervisorError — QEMU exited, the probe failed, or the timeout passed — after stopping
        QEMU, with the console's last lines in the message.
        """
        timeout = self.boot_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        task = asyncio.ensure_future(probe())
        try:
            while not task.done():
                if self.pid is None:
                    raise self._boot_error("QEMU exited before the agent answered")
                if time.monotonic() >= deadline:
                    raise self._boot_error(f"the agent did not answer within {timeout:g}s")
                await asyncio.wait({task}, timeout=POLL_INTERVAL)
            if task.exception() is not None:
                raise self._boot_error(f"the agent check failed: {task.exception()}")
        except BaseException:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self._kill_and_cleanup()
            raise
        return time.monotonic() - (self.started_at or time.monotonic())

    def _boot_error(self, why: str) -> HypervisorError:
        return HypervisorError(f"qemu sandbox {self.sandbox_id}: guest boot failed: {why}{self._console_suffix()}")

    async def stop(self, timeout: float = 5.0) -> None:
        """QMP ``quit``; after ``timeout`` s SIGKILL; then any QEMU of this sandbox the pid file
        does not name (`_kill_unrecorded`). Idempotent; removes the sockets and pid file."""
        pid = self.pid
        if pid is not None:
            try:
                await qmp_execute(self.qmp_socket_path, "quit", timeout=min(QMP_TIMEOUT, timeout))
            except (OSError, asyncio.TimeoutError, QmpError) as exc:
                log.info("qemu %s: QMP quit failed (%s); killing pid %d", self.sandbox_id, exc, pid)
            if not await wait_gone(pid, timeout, POLL_INTERVAL):
                log.warning("qemu %s: still running %gs after QMP quit; killing pid %d", self.sandbox_id, timeout, pid)
                await self._kill(pid)
        await self._kill_unrecorded()
        self._cleanup()

    def _unrecorded_pids(self) -> list[int]:
        """Live QEMUs of this sandbox (their -pidfile is ours) found in /proc: a launcher still
        daemonising, or a daemon whose pid file is not written yet. A runtime killed while it
        started QEMU leaves these; the pid file alone would miss them."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid() and self._is_ours(int(entry)) and pid_alive(int(entry)):
                found.append(int(entry))
        return found

    async def _kill_unrecorded(self, rounds: int = 3) -> None:
        """SIGKILL every QEMU of this sandbox still alive, again while new ones appear (a launcher
        may fork its daemon between a scan and the kill), at most ``rounds`` scans."""
        for _ in range(rounds):
            pids = self._unrecorded_pids()
            if not pids:
                return
            log.warning("qemu %s: killing QEMU pid(s) %s not named by %s", self.sandbox_id,
                        ", ".join(map(str, pids)), self.pid_file)
            for pid in pids:
                await self._kill(pid)

    async def _kill(self, pid: int) -> None:
        if self._is_ours(pid):
            kill_pid(pid, signal.SIGKILL)
        if not await wait_gone(pid, 5.0, POLL_INTERVAL):
            raise HypervisorError(f"qemu sandbox {self.sandbox_id}: QEMU pid {pid} survived SIGKILL")

    async def _kill_and_cleanup(self) -> None:
        """After a failed start: no QEMU of this sandbox left, no socket, no pid file."""
        pid = self.pid
        if pid is not None:
            await self._kill(pid)
        await self._kill_unrecorded()
        self._cleanup()

    def _cleanup(self) -> None:
        for path in (self.channel_socket_path, self.qmp_socket_path, self.console_socket_path, self.pid_file):
            remove_file(path)

    # ---------------------------------------------------------------- console
    def console_tail(self, lines: int = CONSOLE_TAIL_LINES) -> list[str]:
        """The last lines the guest printed since this object's `start()` (whole log otherwise)."""
        try:
            with open(self.console_log_path, "rb") as f:
                f.seek(max(self._console_offset, _size(self.console_log_path) - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line.rstrip("\r") for line in text.strip().splitlines()][-lines:]

    def _console_suffix(self) -> str:
        tail = self.console_tail()
        body = " | ".join(tail) if tail else "no output"
        return f"; console ({self.console_log_path}): {body}"


# ------------------------------------------------------- configuration


def sandbox_firmware(settings: dict) -> str:
    """The firmware a sandbox of [hypervisor.qemu] ``settings`` boots with: its ``firmware``, else
    `default_firmware` of its QEMU (``path``); "" for QEMU's own default."""
    return settings.get("firmware") or default_firmware(settings.get("path") or DEFAULT_PATH)


def default_firmware(qemu: str) -> str:
    """The firmware to boot with when the configuration names none: qboot (`QBOOT_ROM`) from the
    data directory of the QEMU binary ``qemu`` (a path or a name on $PATH; ``<prefix>/share/qemu``
    for ``<prefix>/bin/qemu-system-x86_64``, symlinks resolved), or "" (QEMU's own default,
    SeaBIOS) when that QEMU ships none."""
    binary = shutil.which(qemu) or qemu
    if not os.path.isabs(binary):  # not found: no prefix to look in
        return ""
    prefix = os.path.dirname(os.path.dirname(os.path.realpath(binary)))
    candidate = os.path.join(prefix, "share", "qemu", QBOOT_ROM)
    return candidate if os.path.isfile(candidate) else ""


def guest_files(settings: dict) -> dict:
    """``{"kernel", "initrd", "image"}`` to boot: the configured paths when all three are set;
    when none is, the guest image that `kata-runtime image build` built for THIS kata-py (its
    cache key covers the agent's code, its dependencies, the kernel and the recipe) in
    ``image_cache_dir``. A user's `create` never builds one: a first build takes minutes and
    downloads packages, which a container engine's create must not wait for. Raises
    HypervisorError: some but not all paths set, or no build for these inputs."""
    names = ("kernel", "initrd", "image")
    given = {n: settings.get(n) or "" for n in names}
    if all(given.values()):
        return given
    if any(given.values()):
        unset = ", ".join(n for n in names if not given[n])
        raise HypervisorError(f"[hypervisor.qemu] sets {', '.join(n for n in names if given[n])} but not {unset}: "
                              "set all three, or none to use the guest image of `kata-runtime image build`")
    return _built_guest_files(settings.get("image_cache_dir") or "")


def _built_guest_files(cache_dir: str) -> dict:
    from kata_runtime.image import DEFAULT_CACHE_DIR, ImageError, Recipe, gather_inputs, load_entry

    cache_dir = cache_dir or DEFAULT_CACHE_DIR
    try:
        key = gather_inputs(Recipe()).cache_key()
    except ImageError as exc:
        raise HypervisorError(f"cannot tell which guest image this kata-py needs: {exc}") from None
    entry = load_entry(cache_dir, key)
    if entry is None:
        flag = "" if os.path.abspath(cache_dir) == DEFAULT_CACHE_DIR else f" --cache-dir {cache_dir}"
        raise HypervisorError(f"no guest image of this kata-py (key {key[:24]}) in {cache_dir}: build it once with "
                              f"`kata-runtime image build{flag}` (a few minutes; cached), or set kernel, initrd "
                              "and image in [hypervisor.qemu]")
    return {"kernel": entry.kernel, "initrd": entry.initrd, "image": entry.image}


def resolve_accel(settings: dict, probe_cache_dir: str | None, warn) -> str:
    """"kvm" or "tcg" for ``settings["accel"]``: forced values as they are; ``auto`` is the KVM
    probe's verdict (kata_runtime.kvm.resolve_accel, cached in ``probe_cache_dir``) for the QEMU
    binary and guest kernel this sandbox boots, with QEMU's default -cpu model as the driver
    uses. A fall-back to TCG calls ``warn()`` once with the verdict's reason."""
    from kata_runtime import kvm

    accel = settings.get("accel") or AUTO
    if accel != AUTO:
        return accel
    chosen, verdict = kvm.resolve_accel(AUTO, cache_dir=probe_cache_dir, qemu=settings.get("path") or None,
                                        kernel=settings.get("kernel") or None, cpu=None)
    if chosen == "tcg":
        when = "cached verdict" if verdict.cached else f"probed in {verdict.seconds:.1f} s"
        warn(f"{verdict.warning()} ({when}; kata-runtime check --verbose says more)")
    return chosen


# ----------------------------------------------------------------- QMP


class QmpError(Exception):
    """QMP answered with an error, or not in QMP's shape."""


async def qmp_execute(path: str, command: str, arguments: dict | None = None, *, timeout: float = QMP_TIMEOUT) -> dict:
    """Run one QMP command on the unix socket ``path``: greeting, qmp_capabilities, command.

    Returns the command's ``return`` value (``{}`` for quit). Raises OSError (no socket),
    asyncio.TimeoutError, or QmpError. `quit` may close the socket before answering: that counts
    as done.
    """
    async def run() -> dict:
        reader, writer = await asyncio.open_unix_connection(path)
        try:
            await _qmp_read(reader)  # {"QMP": {...}} greeting
            await _qmp_call(reader, writer, "qmp_capabilities")
            try:
                return await _qmp_call(reader, writer, command, arguments)
            except (ConnectionError, asyncio.IncompleteReadError, QmpError) as exc:
                if command == "quit" and not isinstance(exc, QmpError):
                    return {}
                raise
        finally:
            writer.close()

    return await asyncio.wait_for(run(), timeout)


async def _qmp_call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, command: str,
                    arguments: dict | None = None) -> dict:
    msg = {"execute": command}
    if arguments:
        msg["arguments"] = arguments
    writer.write(json.dumps(msg).encode() + b"\n")
    await writer.drain()
    while True:
        reply = await _qmp_read(reader)
        if "return" in reply:
            return reply["return"]
        if "error" in reply:
            raise QmpError(f"{command}: {reply['error'].get('desc', reply['error'])}")
        # an asynchronous event ({"event": ...}): keep reading


async def _qmp_read(reader: asyncio.StreamReader) -> dict:
    line = await reader.readline()
    if not line:
        raise asyncio.IncompleteReadError(b"", None)
    try:
        reply = json.loads(line)
    except ValueError as exc:
        raise QmpError(f"not QMP: {line[:100]!r}") from exc
    if not isinstance(reply, dict):
        raise QmpError(f"not QMP: {line[:100]!r}")
    return reply


# -------------------------------------------------------------- helpers


def _opt(value: str) -> str:
    """A value inside a QEMU -option list: commas doubled."""
    return value.replace(",", ",,")


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
