"""The sandbox as kata-agent runs it: its containers and their processes (libcontainer's part).

kata_agent.service is the CLI's part (runc's split): it turns agent.proto requests into calls of
:class:`Sandbox` and :class:`SandboxError` into gRPC statuses. Nothing here imports grpc or the
``*_grpc`` stubs; arguments are plain values, OCI messages of katapb (handed to kata_agent.spec)
and the dataclasses of kata_agent.network.

    sandbox = Sandbox(config)
    sandbox.start()                      # the reaper, runc; main thread, running event loop
    await sandbox.create(hostname="h", sandbox_id="sb", storages=[], dns=[])
    await sandbox.create_container("c1", oci_spec)      # runc create, stdio wired
    await sandbox.start_container("c1")
    data = await sandbox.read_output("c1", "", 65536)  # SandboxError(Fault.EOF) at the end
    code = await sandbox.wait_process("c1", "")         # 128+N for a death by signal N
    await sandbox.shutdown()             # every container removed, storages unmounted

The rules are the Kata 1.x agent's (research/kata1x.md): exec id "" names a container's init,
except in ``signal_process`` where it means every process of the container; an exec'd process is
forgotten once waited for and its output drained, the init stays until ``remove_container``; a
process's output ends with its exit (what it left is delivered, then EOF) even while a
descendant holds its pipe or terminal.

From ``start()`` on nothing else in the process may wait for child processes: use
``sandbox.reaper.run(argv)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import enum
import logging
import os
import re
import signal
import socket

import kata_cgroups as cgroups
from kata_log import cjson

from .config import AgentConfig
from .container import (LIVE, Container, ContainerStatus, Process, ProcessLauncher, record_cgroups,
                        remove_state_dir, write_json)
from .mount import MountError, StorageError, mount_storage, umount
from .reaper import Reaper
from .runc import Runc, RuncError
from .spec import SpecError, ensure_mountpoints, message_to_oci, prepare_spec, process_to_oci

log = logging.getLogger("kata_agent.sandbox")

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,1023}$")
#: CreateSandbox.dns lands here in a container with an /etc/resolv.conf mount (Kata 1.x).
RESOLV_CONF = "/etc/resolv.conf"
#: RemoveContainer gives pending WaitProcess calls this long (s) to get the real exit status.
REMOVE_WAIT = 2
STORAGE_HANDLERS = ("9p", "local", "ephemeral", "blk", "bind")


class Fault(enum.Enum):
    """Why a sandbox operation failed; kata_agent.service maps each to one gRPC status."""

    NOT_FOUND = "not found"        # no such container or process
    INVALID = "invalid"            # a bad id, spec, storage or argument
    EXISTS = "exists"              # the id is taken, the sandbox is already created
    WRONG_STATE = "wrong state"    # no sandbox yet, start twice, exec into a stopped container...
    TIMED_OUT = "timed out"        # remove_container past its timeout
    UNAVAILABLE = "unavailable"    # no cgroup to read a container's stats from
    EOF = "end of output"          # a process's stdout/stderr is over
    INTERNAL = "internal"          # the agent could not do what was asked


class SandboxError(Exception):
    """A sandbox operation failed: ``fault`` (a :class:`Fault`) and a one-line ``message``."""

    def __init__(self, fault: Fault, message: str) -> None:
        super().__init__(message)
        self.fault = fault
        self.message = message


#: kata_agent.network's error codes (gRPC status names) in this vocabulary.
_NETWORK_FAULTS = {"NOT_FOUND": Fault.NOT_FOUND, "INVALID_ARGUMENT": Fault.INVALID,
                   "ALREADY_EXISTS": Fault.EXISTS, "FAILED_PRECONDITION": Fault.WRONG_STATE}


def runc_fault(e: RuncError) -> Fault:
    """The fault of a failed runc call, read from its message (runc has no error codes)."""
    m = e.message.lower()
    if "already exists" in m:
        return Fault.EXISTS
    if "does not exist" in m or "not exist" in m and "container" in m:
        return Fault.NOT_FOUND
    if any(s in m for s in ("executable file not found", "no such file or directory",
                            "permission denied", "not a directory", "invalid")):
        return Fault.INVALID
    return Fault.INTERNAL


def as_sandbox_error(exc: BaseException) -> SandboxError | None:
    """``exc`` as a SandboxError when it is one of the domain's own failures (a bad spec or
    storage, runc's error, a failed mount, a network error), else None (a bug: the caller
    reports it as internal with its traceback)."""
    if isinstance(exc, SandboxError):
        return exc
    if isinstance(exc, (SpecError, StorageError)):
        return SandboxError(Fault.INVALID, str(exc))
    if isinstance(exc, RuncError):
        return SandboxError(runc_fault(exc), str(exc))
    if isinstance(exc, MountError):
        return SandboxError(Fault.INTERNAL, str(exc))
    from .network import NetworkError

    if isinstance(exc, NetworkError):
        return SandboxError(_NETWORK_FAULTS.get(exc.code, Fault.INTERNAL), exc.message)
    return None


def check_id(what: str, value: str) -> None:
    """A container id must be a runc id (letters, digits, ``_ . + -``): SandboxError(INVALID)."""
    if not value:
        raise SandboxError(Fault.INVALID, f"{what} is empty")
    if not _ID_RE.match(value):
        raise SandboxError(Fault.INVALID,
                           f"{what} {value!r} is invalid: use letters, digits and _ . + - "
                           "(starting with a letter or digit)")


@dataclasses.dataclass
class GuestDetails:
    """GetGuestDetails: memory block size (bytes, 0 = not asked or unknown), whether memory can
    be hot-plugged through the probe file, and this agent's details."""

    mem_block_size_bytes: int
    support_mem_hotplug_probe: bool
    version: str
    init_daemon: bool
    storage_handlers: tuple[str, ...] = STORAGE_HANDLERS
    supports_seccomp: bool = True


class Sandbox:
    """The sandbox, its containers (by id) and the reaper and runc that run them.

    Every operation raises :class:`SandboxError` for what the caller did wrong or the sandbox
    could not do, and lets the domain's own errors through (SpecError, StorageError, RuncError,
    MountError, NetworkError: :func:`as_sandbox_error` classifies them)."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.reaper = Reaper()
        self.runc: Runc | None = None
        self.launcher: ProcessLauncher | None = None
        self.created = False
        self.sandbox_id = ""
        self.hostname = ""
        #: CreateSandbox's DNS lines written out; containers' /etc/resolv.conf mounts use it.
        self.resolv_conf: str | None = None
        self.mounts: list[str] = []
        self.containers: dict[str, Container] = {}
        self.lock = asyncio.Lock()

    def start(self) -> None:
        """Make the state directories, install the reaper (main thread, running loop), set up
        runc. Raises OSError when the state directory cannot be made."""
        cfg = self.config
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(cfg.state_dir, "containers"), exist_ok=True)
        self.reaper.install()
        self.runc = Runc(self.reaper, cfg.runc, cfg.runc_root, env=cfg.runc_env)
        self.launcher = ProcessLauncher(cfg, self.reaper, self.runc)

    # -- lookups --------------------------------------------------------
    def require_created(self) -> None:
        """SandboxError(WRONG_STATE) until ``create`` is done."""
        if not self.created:
            raise SandboxError(Fault.WRONG_STATE, "sandbox not created: call CreateSandbox first")

    def container(self, cid: str) -> Container:
        """The container ``cid`` (not one still being created); SandboxError INVALID (empty id),
        WRONG_STATE (no sandbox) or NOT_FOUND."""
        if not cid:
            raise SandboxError(Fault.INVALID, "container_id is empty")
        self.require_created()
        c = self.containers.get(cid)
        if c is None or c.status is ContainerStatus.CREATING:
            raise SandboxError(Fault.NOT_FOUND, f"container {cid!r} not found in this sandbox")
        return c

    def process(self, cid: str, exec_id: str) -> tuple[Container, Process]:
        """The container and its process ``exec_id`` ("" = the init); errors as ``container``."""
        c = self.container(cid)
        p = c.get_process(exec_id)
        if p is None:
            raise SandboxError(Fault.NOT_FOUND,
                               f"process exec_id={exec_id!r} not found in container {cid!r} "
                               "(exited processes are forgotten once waited for and drained)")
        return c, p

    @staticmethod
    def forget_if_finished(c: Container, p: Process) -> None:
        """An exec'd process waited for and drained is forgotten (Kata 1.x)."""
        if not p.is_init and p.finished() and c.processes.get(p.exec_id) is p:
            del c.processes[p.exec_id]
            p.close()

    # -- the sandbox ----------------------------------------------------
    async def create(self, *, hostname: str, sandbox_id: str, storages=(), dns=(),
                     extras_ignored: bool = False) -> None:
        """CreateSandbox: set the hostname, mount the ``storages`` (agent.proto Storage: driver,
        source, fstype, options, mount_point), write the ``dns`` lines as the sandbox's
        resolv.conf. Only with ``config.manage_system`` are hostname and mounts touched.
        ``extras_ignored``: kernel modules, guest hooks or a sandbox pid namespace were asked
        for (logged, not done). SandboxError(EXISTS) when created already; a failed mount
        undoes the ones before it."""
        cfg = self.config
        async with self.lock:
            if self.created:
                raise SandboxError(Fault.EXISTS,
                                   "sandbox already created (DestroySandbox first to recreate it)")
            if hostname and cfg.manage_system:
                socket.sethostname(hostname)
            mounts = self._mount_sandbox_storages(storages)
            if dns:
                self.resolv_conf = write_resolv_conf(cfg, list(dns))
            if extras_ignored:
                log.info("CreateSandbox: kernel_modules / guest hooks / sandbox_pidns ignored")
            os.makedirs(cfg.shared_mount, exist_ok=True)
            self.mounts = mounts
            self.sandbox_id = sandbox_id or hostname
            self.hostname = hostname
            self.created = True

    def _mount_sandbox_storages(self, storages) -> list[str]:
        """Mount each storage (manage_system) and return the mount points; all or none."""
        mounts: list[str] = []
        try:
            for s in storages:
                if self.config.manage_system:
                    mounts.append(mount_storage(s, self.config.shared_dir_source))
                else:
                    log.info("storage %s -> %s not mounted (manage_system off)", s.source, s.mount_point)
        except BaseException:
            umount_all(mounts)
            raise
        return mounts

    async def destroy(self) -> None:
        """DestroySandbox: remove every container, unmount the storages, sync. A sandbox not
        created is no error. SandboxError(INTERNAL) naming the containers that could not be
        removed (the sandbox stays created then)."""
        async with self.lock:
            if not self.created:
                return
            errors = []
            for c in list(self.containers.values()):
                try:
                    await self._remove(c)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{c.id}: {e}")
            if errors:
                raise SandboxError(Fault.INTERNAL, "could not remove containers: " + "; ".join(errors))
            self._unmount()
            self.created = False
            self.sandbox_id = ""
            self.resolv_conf = None
            os.sync()

    async def shutdown(self) -> None:
        """The agent is stopping: remove every container (failures logged), unmount the
        storages, uninstall the reaper."""
        for c in list(self.containers.values()):
            try:
                await self._remove(c)
            except Exception as e:  # noqa: BLE001
                log.warning("removing container %s at shutdown: %s", c.id, e)
        self._unmount()
        self.reaper.uninstall()

    def _unmount(self) -> None:
        umount_all(self.mounts, "sandbox storage")
        self.mounts = []

    # -- containers -----------------------------------------------------
    async def create_container(self, cid: str, oci, *, storages=(), exec_id: str = "",
                               devices: int = 0) -> Container:
        """CreateContainer: ``runc create`` of ``oci`` (katapb oci.Spec; None = absent) in the
        bundle ``<shared_mount>/<cid>``, whose rootfs the host shared; ``storages`` mounted for
        it; ``exec_id`` names its init ("" = ``cid``); ``devices``: how many Devices were asked
        for (logged: no hotplug here). All or nothing: a failure removes what was done and
        frees the id. Raises SandboxError (INVALID, WRONG_STATE, EXISTS), SpecError,
        StorageError, RuncError, MountError."""
        check_id("container_id", cid)
        self.require_created()
        if oci is None:
            raise SandboxError(Fault.INVALID,
                               "CreateContainerRequest.OCI (the container's OCI spec) is missing")
        if cid in self.containers:
            raise SandboxError(Fault.EXISTS, f"container {cid!r} already exists")
        bundle = os.path.join(self.config.shared_mount, cid)
        c = Container(cid, bundle, self.config.container_state_dir(cid))
        self.containers[cid] = c  # reserve the id while creating
        created = False
        try:
            spec = self._container_spec(c, oci, storages, devices)
            await self._runc_create(c, spec, exec_id or cid)
            created = True
            self._created(c)
        except BaseException:
            await self._undo_create(c, created)
            raise
        return c

    def _container_spec(self, c: Container, oci, storages, devices: int) -> dict:
        """The config.json of ``c`` written in its bundle, its storages mounted, mount points
        made in its rootfs, its state directory fresh."""
        cfg = self.config
        spec = prepare_spec(oci, c.id, c.bundle, cfg.cgroup_parent)
        use_sandbox_dns(spec, self.resolv_conf)
        for s in storages:
            if cfg.manage_system:
                c.mounts.append(mount_storage(s, cfg.shared_dir_source))
        rootfs = spec["root"]["path"]
        if not os.path.isdir(rootfs):
            raise SandboxError(Fault.WRONG_STATE,
                               f"container rootfs {rootfs} does not exist: the host must share "
                               f"it under the sandbox's shared directory before CreateContainer")
        if devices:
            log.info("container %s: %d Device(s) ignored (no device hotplug here)", c.id, devices)
        ensure_mountpoints(spec)
        remove_state_dir(c.state_dir)
        os.makedirs(c.state_dir, mode=0o700)
        write_json(os.path.join(c.bundle, "config.json"), spec)
        c.spec = spec
        return spec

    async def _runc_create(self, c: Container, spec: dict, exec_id: str) -> None:
        """``runc create`` with the init's stdio wired; ``c.init`` is set first."""
        proc = Process(c.id, exec_id, bool(spec["process"].get("terminal")), is_init=True)
        c.init = proc
        args = ["create", "--bundle", c.bundle, "--no-new-keyring"]
        if self.config.no_pivot_root:
            args.append("--no-pivot")
        await self.launcher.launch(c, proc, args, os.path.join(c.state_dir, "init.pid"))

    def _created(self, c: Container) -> None:
        record_cgroups(c)
        c.status = ContainerStatus.CREATED
        c.init.exit_future.add_done_callback(lambda _f, c=c: _init_exited(c))
        log.info("container %s created (init pid %d)", c.id, c.init.pid)

    async def _undo_create(self, c: Container, created: bool) -> None:
        """Roll a failed create back: runc's container (if made), mounts, stdio, the state
        directory, the id."""
        if created:
            try:
                await self.runc.delete(c.id, force=True)
            except Exception:  # noqa: BLE001
                pass
        umount_all(c.mounts)
        c.mounts = []
        if c.init is not None:
            c.init.close()
        remove_state_dir(c.state_dir)
        if self.containers.get(c.id) is c:
            del self.containers[c.id]

    @contextlib.asynccontextmanager
    async def _container_in(self, cid: str, status: ContainerStatus, operation: str):
        """The container, its lock held, if it is ``status`` (else SandboxError WRONG_STATE)."""
        c = self.container(cid)
        async with c.lock:
            if c.status is not status:
                raise SandboxError(Fault.WRONG_STATE,
                                   f"container {c.id!r} is {c.status}, {operation} needs {status}")
            yield c

    async def start_container(self, cid: str) -> None:
        """StartContainer: ``runc start`` of a created container (WRONG_STATE otherwise)."""
        async with self._container_in(cid, ContainerStatus.CREATED, "StartContainer") as c:
            await self.runc.start(c.id)
            if c.status is ContainerStatus.CREATED:
                c.status = ContainerStatus.RUNNING

    async def remove_container(self, cid: str, timeout: float = 0) -> None:
        """RemoveContainer: kill and delete it, unmount its storages, remove its cgroups and
        state; pending waits get the real status. ``timeout`` seconds (0 = none):
        SandboxError(TIMED_OUT) past it."""
        c = self.container(cid)
        async with c.lock:
            if not timeout:
                await self._remove(c)
                return
            try:
                await asyncio.wait_for(self._remove(c), timeout)
            except asyncio.TimeoutError:
                raise SandboxError(Fault.TIMED_OUT,
                                   f"removing container {c.id!r} took over {timeout}s") from None

    async def _remove(self, c: Container) -> None:
        try:
            await self.runc.delete(c.id, force=True)
        except RuncError as e:
            if runc_fault(e) is not Fault.NOT_FOUND:
                raise
        c.status = ContainerStatus.STOPPED
        # Give the reaper a moment to collect the killed processes, so a pending
        # WaitProcess answers with the real status.
        pending = [p.exit_future for p in _processes(c)
                   if p.exit_future is not None and not p.exit_future.done()]
        if pending:
            await asyncio.wait(pending, timeout=REMOVE_WAIT)
        for p in _processes(c):
            p.close()
        c.processes.clear()
        umount_all(c.mounts, f"container {c.id}")
        c.mounts = []
        cgroups.remove_container_cgroups(c.cgroup_paths, self.config.cgroup_parent)
        remove_state_dir(c.state_dir)
        if self.containers.get(c.id) is c:
            del self.containers[c.id]

    async def pause_container(self, cid: str) -> None:
        """PauseContainer: ``runc pause`` of a running container (WRONG_STATE otherwise)."""
        async with self._container_in(cid, ContainerStatus.RUNNING, "PauseContainer") as c:
            await self.runc.pause(c.id)
            c.status = ContainerStatus.PAUSED

    async def resume_container(self, cid: str) -> None:
        """ResumeContainer: ``runc resume`` of a paused container (WRONG_STATE otherwise)."""
        async with self._container_in(cid, ContainerStatus.PAUSED, "ResumeContainer") as c:
            await self.runc.resume(c.id)
            if c.status is ContainerStatus.PAUSED:  # the reaper may have seen it exit meanwhile
                c.status = ContainerStatus.RUNNING

    async def update_container(self, cid: str, resources) -> None:
        """UpdateContainer: ``runc update`` with ``resources`` (katapb oci.LinuxResources; None =
        absent: INVALID); WRONG_STATE unless created, running or paused."""
        c = self.container(cid)
        if resources is None:
            raise SandboxError(Fault.INVALID, "UpdateContainerRequest.resources is missing")
        if c.status not in LIVE:
            raise SandboxError(Fault.WRONG_STATE, f"container {c.id!r} is {c.status}")
        await self.runc.update(c.id, message_to_oci(resources))

    def stats(self, cid: str) -> dict:
        """StatsContainer: the container's cgroup statistics (kata_cgroups.read_stats: the
        CgroupStats fields as a dict); SandboxError(UNAVAILABLE) when none is found."""
        c = self.container(cid)
        if not c.cgroup_paths:
            record_cgroups(c)
        stats = cgroups.read_stats(c.cgroup_paths)
        if not stats:
            raise SandboxError(Fault.UNAVAILABLE, f"no cgroup found for container {c.id!r}")
        return stats

    async def list_processes(self, cid: str, fmt: str = "", args=()) -> bytes:
        """ListProcesses: ``"json"``: the container's pids as a JSON list; ``"table"`` (or ""):
        ``ps ARGS`` (default ``-ef``) limited to those pids, or "PID CMD" lines from /proc when
        ps fails. SandboxError INVALID for another format or a ps output with no PID column."""
        c = self.container(cid)
        fmt = fmt or "table"
        if fmt not in ("table", "json"):
            raise SandboxError(Fault.INVALID, f"format {fmt!r} is invalid: use 'table' or 'json'")
        pids = await self.runc.ps_pids(c.id)
        if fmt == "json":
            return cjson.dumps(pids).encode()
        args = list(args) or ["-ef"]
        try:
            code, out, _ = await self.reaper.run(["ps", *args], timeout=30)
        except FileNotFoundError:
            code, out = -1, b""
        if code != 0:
            return _proc_table(pids)
        return _ps_table(out, args, pids)

    # -- processes ------------------------------------------------------
    async def exec_process(self, cid: str, exec_id: str, process) -> Process:
        """ExecProcess: ``runc exec --detach`` of ``process`` (katapb oci.Process; None = absent)
        in a created or running container. SandboxError INVALID (empty exec id, no process),
        EXISTS (exec id in use), WRONG_STATE; SpecError; RuncError."""
        c = self.container(cid)
        if not exec_id:
            raise SandboxError(Fault.INVALID, "exec_id is empty")
        if exec_id in c.processes or (c.init and c.init.exec_id == exec_id):
            raise SandboxError(Fault.EXISTS, f"exec_id {exec_id!r} already used in container {c.id!r}")
        if process is None:
            raise SandboxError(Fault.INVALID, "ExecProcessRequest.process is missing")
        proc_spec = process_to_oci(process)
        if c.status not in (ContainerStatus.CREATED, ContainerStatus.RUNNING):
            raise SandboxError(Fault.WRONG_STATE, f"cannot exec in container {c.id!r}: it is {c.status}")
        proc = Process(c.id, exec_id, bool(proc_spec.get("terminal")), is_init=False)
        c.processes[exec_id] = proc  # reserve
        try:
            await self._runc_exec(c, proc, proc_spec)
        except BaseException:
            if c.processes.get(exec_id) is proc:
                del c.processes[exec_id]
            raise
        log.info("exec %s in %s: pid %d", exec_id, c.id, proc.pid)
        return proc

    async def _runc_exec(self, c: Container, proc: Process, proc_spec: dict) -> None:
        """``runc exec --detach --process`` through a process.json and pid file of its own."""
        n = id(proc)
        pjson = os.path.join(c.state_dir, f"exec-{n}.json")
        pid_file = os.path.join(c.state_dir, f"exec-{n}.pid")
        try:
            write_json(pjson, proc_spec)
            await self.launcher.launch(c, proc, ["exec", "--detach", "--process", pjson], pid_file)
        finally:
            for f in (pjson, pid_file):
                try:
                    os.unlink(f)
                except OSError:
                    pass

    async def signal_process(self, cid: str, exec_id: str, sig: int) -> None:
        """SignalProcess: signal ``sig`` (0..64) to the process, or with exec id "" to every
        process of the container (``runc kill --all``). A process that has exited, or a stopped
        container, is no error (the signal is discarded). SIGKILL to the init of a paused
        container thaws it (a frozen process dies only once thawed)."""
        c = self.container(cid)
        if not 0 <= sig <= 64:
            raise SandboxError(Fault.INVALID, f"signal {sig} is not a valid signal number")
        if not exec_id:
            if c.status is not ContainerStatus.STOPPED:
                await self.runc.kill(c.id, sig, all_processes=True)
            return
        c, p = self.process(cid, exec_id)
        if p.pid is None or p.exited:
            log.info("signal %d to %s discarded: it has exited", sig, p.describe())
            return
        # The pid is ours until we reap it, so it cannot have been reused.
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL and p.is_init and c.status is ContainerStatus.PAUSED:
            await self._thaw(c)

    async def _thaw(self, c: Container) -> None:
        async with c.lock:
            if c.status is ContainerStatus.PAUSED:
                await self.runc.resume(c.id)
                if c.status is ContainerStatus.PAUSED:
                    c.status = ContainerStatus.RUNNING

    async def wait_process(self, cid: str, exec_id: str) -> int:
        """WaitProcess: the exit code once the process exits (128+N for signal N); an exec'd
        process waited for and drained is forgotten. WRONG_STATE if it never started."""
        c, p = self.process(cid, exec_id)
        if p.exit_future is None:
            raise SandboxError(Fault.WRONG_STATE, f"{p.describe()} has not started")
        code = await asyncio.shield(p.exit_future)
        if p.is_init:
            _init_exited(c)  # its done-callback may not have run yet when the future was done
        p.waited = True
        self.forget_if_finished(c, p)
        return code

    async def write_stdin(self, cid: str, exec_id: str, data: bytes) -> int:
        """WriteStdin: write all of ``data`` (waiting while the pipe is full); returns its length.
        WRONG_STATE when the process has no stdin or it is closed or broken."""
        _, p = self.process(cid, exec_id)
        if p.stdin is None:
            raise SandboxError(Fault.WRONG_STATE, f"{p.describe()} has no stdin")
        try:
            return await p.stdin.write(data)
        except ValueError:
            why = "the process has exited" if p.exited else "CloseStdin was called"
            raise SandboxError(Fault.WRONG_STATE, f"stdin of {p.describe()} is closed ({why})") from None
        except BrokenPipeError:
            raise SandboxError(Fault.WRONG_STATE,
                               f"stdin of {p.describe()} is broken: the process no longer reads it") from None

    async def read_output(self, cid: str, exec_id: str, n: int, stderr: bool = False) -> bytes:
        """ReadStdout/ReadStderr: up to ``n`` (> 0) bytes, never empty: waits for data, and at
        the end raises SandboxError(EOF) (message "EOF"). A terminal's stderr is empty."""
        if n == 0:
            raise SandboxError(Fault.INVALID, "len must be > 0")
        c, p = self.process(cid, exec_id)
        data = await (p.stderr if stderr else p.stdout).read(n)
        if not data:
            self.forget_if_finished(c, p)
            raise SandboxError(Fault.EOF, "EOF")
        return data

    async def close_stdin(self, cid: str, exec_id: str) -> None:
        """CloseStdin: EOF on the process's stdin (VEOF on a terminal) once what is written is in."""
        _, p = self.process(cid, exec_id)
        if p.stdin is not None:
            await p.stdin.close()

    def resize_terminal(self, cid: str, exec_id: str, rows: int, columns: int) -> None:
        """TtyWinResize: set the terminal's size. WRONG_STATE without a terminal (none, or closed
        at the exit), INVALID beyond 16 bits."""
        from .stdio import set_winsize

        _, p = self.process(cid, exec_id)
        if p.master_fd is None:
            why = "its terminal closed when it exited" if p.terminal else "it has no terminal"
            raise SandboxError(Fault.WRONG_STATE, f"cannot resize {p.describe()}: {why}")
        if rows > 0xFFFF or columns > 0xFFFF:
            raise SandboxError(Fault.INVALID, "row and column must fit in 16 bits")
        set_winsize(p.master_fd, rows, columns)

    # -- the guest machine ----------------------------------------------
    def guest_details(self, *, mem_block_size: bool = False, mem_hotplug_probe: bool = False) -> GuestDetails:
        """GetGuestDetails: the memory block size (sysfs, when asked), the probe file's presence
        (when asked), and this agent's version and role."""
        size = read_mem_block_size() if mem_block_size else 0
        probe = mem_hotplug_probe and os.path.exists("/sys/devices/system/memory/probe")
        return GuestDetails(mem_block_size_bytes=size, support_mem_hotplug_probe=probe,
                            version=self.config.agent_version, init_daemon=os.getpid() == 1)

    def set_guest_time(self, sec: int, usec: int) -> None:
        """SetGuestDateTime: CLOCK_REALTIME := sec + usec. Only in a VM (a process sandbox shares
        the host's clock: a no-op). INVALID out of range, INTERNAL when clock_settime fails."""
        if not self.config.machine_managed:
            log.info("SetGuestDateTime ignored: this agent shares the host's clock")
            return
        if usec < 0 or usec >= 1_000_000 or sec < 0:
            raise SandboxError(Fault.INVALID, "Sec must be >= 0 and 0 <= Usec < 1000000")
        err = clock_settime(sec, usec * 1000)
        if err:
            raise SandboxError(Fault.INTERNAL, f"clock_settime: {os.strerror(err)}")

    @staticmethod
    def reseed_random(data: bytes) -> None:
        """ReseedRandomDev: mix ``data`` into the kernel's pool (no entropy credited: harmless
        anywhere)."""
        if data:
            with open("/dev/random", "wb") as f:
                f.write(data)

    def online_cpu_mem(self, nb_cpus: int = 0, cpu_only: bool = False) -> int:
        """OnlineCPUMem: online up to ``nb_cpus`` offline CPUs (0 = all) and, unless
        ``cpu_only``, every offline memory block; returns the CPUs onlined. Only in a VM."""
        if not self.config.machine_managed:
            log.info("OnlineCPUMem: nothing to do (not a VM)")
            return 0
        import glob  # imported here, not on the agent's start path

        onlined = 0
        for path in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/online")):
            if nb_cpus and onlined >= nb_cpus:
                break
            if online(path):
                onlined += 1
        if not cpu_only:
            for path in glob.glob("/sys/devices/system/memory/memory[0-9]*/online"):
                online(path)
        log.info("OnlineCPUMem: %d cpu(s) onlined", onlined)
        return onlined

    # -- the guest's network (kata_agent.network, on netlink) -------------
    @staticmethod
    async def network(fn, *args):
        """Run a kata_agent.network function (``update_interface``, ``update_routes``,
        ``list_interfaces``, ``list_routes``, ``add_arp_neighbors``) in a worker thread
        (pyroute2 is synchronous); its NetworkError becomes a SandboxError."""
        from .network import NetworkError

        try:
            return await asyncio.to_thread(fn, *args)
        except NetworkError as e:
            raise as_sandbox_error(e) from None


def _processes(c: Container) -> list[Process]:
    return [p for p in (c.init, *c.processes.values()) if p is not None]


def _init_exited(c: Container) -> None:
    if c.status in LIVE:
        c.status = ContainerStatus.STOPPED


def _proc_table(pids: list[int]) -> bytes:
    """"PID CMD" lines of ``pids`` from /proc (ListProcesses when ps is missing or fails)."""
    lines = ["PID CMD"]
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        lines.append(f"{pid} {cmd}")
    return ("\n".join(lines) + "\n").encode()


def _ps_table(out: bytes, args: list[str], pids: list[int]) -> bytes:
    """ps's header and the lines of its output whose PID column is one of ``pids``."""
    lines = out.decode("utf-8", "replace").splitlines()
    if not lines:
        raise SandboxError(Fault.INTERNAL, "ps printed nothing")
    header = lines[0].split()
    if "PID" not in header:
        raise SandboxError(Fault.INVALID, f"ps {' '.join(args)} prints no PID column")
    idx = header.index("PID")
    keep = [lines[0]]
    pidset = set(pids)
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > idx and fields[idx].isdigit() and int(fields[idx]) in pidset:
            keep.append(line)
    return ("\n".join(keep) + "\n").encode()


def umount_all(mounts: list[str], what: str | None = None) -> None:
    """Unmount ``mounts`` in reverse order; a failure is logged as ``what: error`` (ignored
    when ``what`` is None) and does not stop the others."""
    for mp in reversed(mounts):
        try:
            umount(mp)
        except OSError as e:
            if what is not None:
                log.warning("%s: %s", what, e)


def write_resolv_conf(cfg: AgentConfig, lines: list[str]) -> str:
    """CreateSandbox.dns -> ``<state_dir>/sandbox/resolv.conf`` (Kata 1.x: the guest's
    /run/kata-containers/sandbox/resolv.conf), mode 0644; returns its path."""
    from .network import resolv_conf_text

    path = os.path.join(cfg.state_dir, "sandbox", "resolv.conf")
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "w") as f:
        f.write(resolv_conf_text(lines))
    os.chmod(path, 0o644)
    return path


def use_sandbox_dns(spec: dict, resolv_conf: str | None) -> None:
    """A container mount of /etc/resolv.conf (the host file the runtime sent as CreateSandbox.dns)
    gets the sandbox's copy as its source, read-only: the host path means nothing in the guest."""
    if resolv_conf is None:
        return
    for m in spec.get("mounts", []):
        if os.path.normpath(m.get("destination", "")) == RESOLV_CONF:
            m["source"] = resolv_conf
            m["type"] = "bind"
            options = [o for o in m.get("options", []) if o not in ("rw", "ro")]
            m["options"] = sorted(set(options) | {"bind"}) + ["ro"]


def online(path: str) -> bool:
    """Write 1 to a sysfs ``online`` file that reads 0; True if it did (failures are logged)."""
    try:
        with open(path) as f:
            if f.read().strip() == "0":
                with open(path, "w") as w:
                    w.write("1")
                return True
    except OSError as e:
        log.warning("cannot online %s: %s", path, e)
    return False


def read_mem_block_size(path: str = "/sys/devices/system/memory/block_size_bytes") -> int:
    """The memory hotplug block size in bytes (sysfs prints it in hex); 0 when unknown."""
    try:
        with open(path) as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return 0


def clock_settime(sec: int, nsec: int) -> int:
    """clock_settime(CLOCK_REALTIME); returns 0 or the errno."""
    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.clock_settime(0, ctypes.byref(Timespec(sec, nsec))) != 0:
        return ctypes.get_errno()
    return 0


__all__ = ["Sandbox", "SandboxError", "Fault", "ContainerStatus", "GuestDetails", "as_sandbox_error",
           "runc_fault", "check_id"]
