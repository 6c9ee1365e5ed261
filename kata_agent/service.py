"""kata-agent's gRPC service: grpc.AgentService and grpc.Health (grpc.aio).

Entry point for the channel half of the agent::

    server, state = await start_grpc_server(socket_path, config)
    ...                      # bridge each yamux stream to unix:<socket_path>
    await stop_grpc_server(server, state)   # removes containers, unmounts

``start_grpc_server(socket_path: str, config: AgentConfig)`` must be awaited
in the main thread's running event loop (the standard asyncio loop): it
installs the agent's child reaper there (SIGCHLD handler + PR_SET_CHILD_SUBREAPER
when not PID 1), then serves on the unix socket ``socket_path`` (created; an
existing file is replaced; mode 0600). It returns the started
``grpc.aio.Server`` and the ``AgentState`` (containers, reaper, runc).

From then on nothing else in the agent process may wait for child processes
(no ``subprocess``, no asyncio subprocesses): use ``state.reaper.run(argv)``.

Wire semantics worth knowing (they match the Kata 1.x Go agent and kata-shim):

* ReadStdout / ReadStderr block until data, returning up to ``len`` bytes.
  After the process exits they keep returning what it left in its pipe or
  terminal, even while a descendant holds the other end (what that
  descendant writes later is not delivered; the terminal is closed); then
  they fail with status OUT_OF_RANGE, details "EOF" -- exactly
  what kata-shim turns into io.EOF (the Go agent returned a bare io.EOF, seen
  as UNKNOWN "EOF"; clients should accept both). An OK response is never
  empty, so a Go io.Copy loop cannot spin on it. A terminal process has no
  separate stderr: ReadStderr returns EOF at once.
* WriteStdin writes all of ``data`` (waiting while the pipe is full) and
  returns its length; kata-shim's io.Copy treats a short count as an error.
* WaitProcess returns the exit code, 128+N for a death by signal N. An exec'd
  process is forgotten once waited for and its output drained; the init
  process stays until RemoveContainer.
* exec_id "" names the container's init process, except in SignalProcess,
  where (as in the Go agent) it means every process of the container.
* Implemented: CreateSandbox, DestroySandbox, CreateContainer, StartContainer,
  RemoveContainer, ExecProcess, SignalProcess, WaitProcess, WriteStdin,
  ReadStdout, ReadStderr, CloseStdin, TtyWinResize, ListProcesses,
  PauseContainer, ResumeContainer, UpdateContainer, StatsContainer,
  GetGuestDetails, SetGuestDateTime, OnlineCPUMem, ReseedRandomDev, the network
  calls UpdateInterface, UpdateRoutes, ListInterfaces, ListRoutes, AddARPNeighbors
  (kata_agent/network.py, on netlink), and Health.Check/Version. Every other AgentService method answers UNIMPLEMENTED
  naming itself.
* Status codes: unknown container/exec -> NOT_FOUND; a bad spec or argument ->
  INVALID_ARGUMENT; id already used / sandbox already created -> ALREADY_EXISTS;
  wrong state (no sandbox yet, start twice, exec into a stopped container,
  resize a non-terminal) -> FAILED_PRECONDITION; RemoveContainer past its
  timeout -> DEADLINE_EXCEEDED; anything unexpected -> INTERNAL, with the cause.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import glob
import json
import logging
import os
import re
import signal
import socket

import grpc
from google.protobuf import empty_pb2, json_format

import kata_cgroups as cgroups
from katapb import agent_pb2, agent_pb2_grpc, health_pb2, health_pb2_grpc

from .config import AgentConfig
from .container import (Container, Process, ProcessLauncher, record_cgroups, remove_state_dir,
                        write_json)
from .mount import MountError, StorageError, mount_storage, umount
from .reaper import Reaper
from .runc import Runc, RuncError
from .spec import SpecError, ensure_mountpoints, message_to_oci, prepare_spec, process_to_oci

log = logging.getLogger("kata_agent.service")

API_VERSION = "0.0.1"
EOF_DETAILS = "EOF"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,1023}$")
_EMPTY = empty_pb2.Empty()

Code = grpc.StatusCode


class AgentError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _runc_error_code(e: RuncError) -> grpc.StatusCode:
    m = e.message.lower()
    if "already exists" in m:
        return Code.ALREADY_EXISTS
    if "does not exist" in m or "not exist" in m and "container" in m:
        return Code.NOT_FOUND
    if any(s in m for s in ("executable file not found", "no such file or directory",
                            "permission denied", "not a directory", "invalid")):
        return Code.INVALID_ARGUMENT
    return Code.INTERNAL


_QUIET = {"ReadStdout", "ReadStderr", "WriteStdin"}  # too many to log one by one


def _brief(request) -> str:
    text = " ".join(str(request).split())
    return text if len(text) <= 300 else text[:300] + "..."


def rpc(fn):
    """Run a handler; map agent errors to gRPC statuses with usable messages."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self, request, context):
        if log.isEnabledFor(logging.DEBUG) and name not in _QUIET:
            log.debug("%s %s", name, _brief(request))
        try:
            return await fn(self, request, context)
        except AgentError as e:
            code, msg = e.code, e.message
        except (SpecError, StorageError) as e:
            code, msg = Code.INVALID_ARGUMENT, str(e)
        except RuncError as e:
            code, msg = _runc_error_code(e), str(e)
        except MountError as e:
            code, msg = Code.INTERNAL, str(e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - report, keep serving
            if isinstance(e, grpc.aio.AbortError):
                raise
            log.exception("%s failed", name)
            code, msg = Code.INTERNAL, f"{name}: {type(e).__name__}: {e}"
        if not (code == Code.OUT_OF_RANGE and msg == EOF_DETAILS):
            log.info("%s -> %s: %s", name, code.name, msg)
        await context.abort(code, msg)

    wrapper._kata_rpc = True
    return wrapper


class AgentState:
    """Everything the service knows: sandbox, containers, reaper and runc."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.reaper = Reaper()
        self.runc: Runc | None = None
        self.launcher: ProcessLauncher | None = None
        self.sandbox_created = False
        self.sandbox_id = ""
        self.hostname = ""
        #: CreateSandbox's DNS lines written out; containers' /etc/resolv.conf mounts use it.
        self.resolv_conf: str | None = None
        self.sandbox_mounts: list[str] = []
        self.containers: dict[str, Container] = {}
        self.lock = asyncio.Lock()

    def start(self) -> None:
        cfg = self.config
        os.makedirs(cfg.state_dir, mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(cfg.state_dir, "containers"), exist_ok=True)
        self.reaper.install()
        self.runc = Runc(self.reaper, cfg.runc, cfg.runc_root, env=cfg.runc_env)
        self.launcher = ProcessLauncher(cfg, self.reaper, self.runc)

    # -- lookups --------------------------------------------------------
    def require_sandbox(self) -> None:
        if not self.sandbox_created:
            raise AgentError(Code.FAILED_PRECONDITION,
                             "sandbox not created: call CreateSandbox first")

    def container(self, cid: str) -> Container:
        if not cid:
            raise AgentError(Code.INVALID_ARGUMENT, "container_id is empty")
        self.require_sandbox()
        c = self.containers.get(cid)
        if c is None or c.status == "creating":
            raise AgentError(Code.NOT_FOUND, f"container {cid!r} not found in this sandbox")
        return c

    def process(self, cid: str, exec_id: str) -> tuple[Container, Process]:
        c = self.container(cid)
        p = c.get_process(exec_id)
        if p is None:
            raise AgentError(Code.NOT_FOUND,
                             f"process exec_id={exec_id!r} not found in container {cid!r} "
                             "(exited processes are forgotten once waited for and drained)")
        return c, p

    def forget_if_finished(self, c: Container, p: Process) -> None:
        if not p.is_init and p.finished() and c.processes.get(p.exec_id) is p:
            del c.processes[p.exec_id]
            p.close()

    # -- teardown -------------------------------------------------------
    async def remove_container(self, c: Container) -> None:
        try:
            await self.runc.delete(c.id, force=True)
        except RuncError as e:
            if _runc_error_code(e) != Code.NOT_FOUND:
                raise
        c.status = "stopped"
        # Give the reaper a moment to collect the killed processes, so a
        # pending WaitProcess answers with the real status.
        pending = [p.exit_future for p in [c.init, *c.processes.values()]
                   if p is not None and p.exit_future is not None and not p.exit_future.done()]
        if pending:
            await asyncio.wait(pending, timeout=2)
        for p in [c.init, *c.processes.values()]:
            if p is not None:
                p.close()
        c.processes.clear()
        _umount_all(c.mounts, f"container {c.id}")
        c.mounts = []
        cgroups.remove_container_cgroups(c.cgroup_paths, self.config.cgroup_parent)
        remove_state_dir(c.state_dir)
        if self.containers.get(c.id) is c:
            del self.containers[c.id]

    async def shutdown(self) -> None:
        for c in list(self.containers.values()):
            try:
                await self.remove_container(c)
            except Exception as e:  # noqa: BLE001
                log.warning("removing container %s at shutdown: %s", c.id, e)
        self._unmount_sandbox()
        self.reaper.uninstall()

    def _unmount_sandbox(self) -> None:
        _umount_all(self.sandbox_mounts, "sandbox storage")
        self.sandbox_mounts = []


def _umount_all(mounts: list[str], what: str | None = None) -> None:
    """Unmount ``mounts`` in reverse order; a failure is logged as ``what: error`` (ignored
    when ``what`` is None) and does not stop the others."""
    for mp in reversed(mounts):
        try:
            umount(mp)
        except OSError as e:
            if what is not None:
                log.warning("%s: %s", what, e)


def _check_id(what: str, value: str) -> None:
    if not value:
        raise AgentError(Code.INVALID_ARGUMENT, f"{what} is empty")
    if not _ID_RE.match(value):
        raise AgentError(Code.INVALID_ARGUMENT,
                         f"{what} {value!r} is invalid: use letters, digits and _ . + - "
                         "(starting with a letter or digit)")


class AgentService(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, state: AgentState) -> None:
        self.state = state

    @property
    def cfg(self) -> AgentConfig:
        return self.state.config

    # -- sandbox --------------------------------------------------------
    @rpc
    async def CreateSandbox(self, request, context):
        st = self.state
        async with st.lock:
            if st.sandbox_created:
                raise AgentError(Code.ALREADY_EXISTS,
                                 "sandbox already created (DestroySandbox first to recreate it)")
            if request.hostname and self.cfg.manage_system:
                socket.sethostname(request.hostname)
            mounts = []
            try:
                for s in request.storages:
                    if self.cfg.manage_system:
                        mounts.append(mount_storage(s, self.cfg.shared_dir_source))
                    else:
                        log.info("storage %s -> %s not mounted (manage_system off)",
                                 s.source, s.mount_point)
            except BaseException:
                _umount_all(mounts)
                raise
            if request.dns:
                st.resolv_conf = _write_resolv_conf(self.cfg, list(request.dns))
            if request.kernel_modules or request.guest_hook_path or request.sandbox_pidns:
                log.info("CreateSandbox: kernel_modules / guest hooks / sandbox_pidns ignored")
            os.makedirs(self.cfg.shared_mount, exist_ok=True)
            st.sandbox_mounts = mounts
            st.sandbox_id = request.sandbox_id or request.hostname
            st.hostname = request.hostname
            st.sandbox_created = True
        return _EMPTY

    @rpc
    async def DestroySandbox(self, request, context):
        st = self.state
        async with st.lock:
            if not st.sandbox_created:
                return _EMPTY
            errors = []
            for c in list(st.containers.values()):
                try:
                    await st.remove_container(c)
                except Exception as e:  # noqa: BLE001
                    errors.append(f"{c.id}: {e}")
            if errors:
                raise AgentError(Code.INTERNAL, "could not remove containers: " + "; ".join(errors))
            st._unmount_sandbox()
            st.sandbox_created = False
            st.sandbox_id = ""
            st.resolv_conf = None
            os.sync()
        return _EMPTY

    # -- containers -----------------------------------------------------
    @rpc
    async def CreateContainer(self, request, context):
        st = self.state
        cid = request.container_id
        _check_id("container_id", cid)
        st.require_sandbox()
        if not request.HasField("OCI"):
            raise AgentError(Code.INVALID_ARGUMENT,
                             "CreateContainerRequest.OCI (the container's OCI spec) is missing")
        if cid in st.containers:
            raise AgentError(Code.ALREADY_EXISTS, f"container {cid!r} already exists")
        bundle = os.path.join(self.cfg.shared_mount, cid)
        c = Container(cid, bundle, self.cfg.container_state_dir(cid))
        st.containers[cid] = c  # reserve the id while creating
        created = False
        try:
            spec = prepare_spec(request.OCI, cid, bundle, self.cfg.cgroup_parent)
            _use_sandbox_dns(spec, st.resolv_conf)
            for s in request.storages:
                if self.cfg.manage_system:
                    c.mounts.append(mount_storage(s, self.cfg.shared_dir_source))
            rootfs = spec["root"]["path"]
            if not os.path.isdir(rootfs):
                raise AgentError(Code.FAILED_PRECONDITION,
                                 f"container rootfs {rootfs} does not exist: the host must share "
                                 f"it under the sandbox's shared directory before CreateContainer")
            if request.devices:
                log.info("container %s: %d Device(s) ignored (no device hotplug here)", cid,
                         len(request.devices))
            ensure_mountpoints(spec)
            remove_state_dir(c.state_dir)
            os.makedirs(c.state_dir, mode=0o700)
            write_json(os.path.join(bundle, "config.json"), spec)
            c.spec = spec
            exec_id = request.exec_id or cid
            proc = Process(cid, exec_id, bool(spec["process"].get("terminal")), is_init=True)
            c.init = proc
            args = ["create", "--bundle", bundle, "--no-new-keyring"]
            if self.cfg.no_pivot_root:
                args.append("--no-pivot")
            await st.launcher.launch(c, proc, args, os.path.join(c.state_dir, "init.pid"))
            created = True
            record_cgroups(c)
            c.status = "created"
            proc.exit_future.add_done_callback(lambda _f, c=c: self._init_exited(c))
            log.info("container %s created (init pid %d)", cid, proc.pid)
        except BaseException:
            if created:
                try:
                    await st.runc.delete(cid, force=True)
                except Exception:  # noqa: BLE001
                    pass
            _umount_all(c.mounts)
            c.mounts = []
            if c.init is not None:
                c.init.close()
            if st.containers.get(cid) is c:
                del st.containers[cid]
            raise
        return _EMPTY

    @staticmethod
    def _init_exited(c: Container) -> None:
        if c.status in ("created", "running", "paused"):
            c.status = "stopped"

    @contextlib.asynccontextmanager
    async def _container_in(self, request, status: str, rpc_name: str):
        """The request's container, its lock held, if it is ``status`` (else FAILED_PRECONDITION)."""
        c = self.state.container(request.container_id)
        async with c.lock:
            if c.status != status:
                raise AgentError(Code.FAILED_PRECONDITION,
                                 f"container {c.id!r} is {c.status}, {rpc_name} needs {status}")
            yield c

    @rpc
    async def StartContainer(self, request, context):
        async with self._container_in(request, "created", "StartContainer") as c:
            await self.state.runc.start(c.id)
            if c.status == "created":
                c.status = "running"
        return _EMPTY

    @rpc
    async def RemoveContainer(self, request, context):
        c = self.state.container(request.container_id)
        async with c.lock:
            coro = self.state.remove_container(c)
            if request.timeout:
                try:
                    await asyncio.wait_for(coro, request.timeout)
                except asyncio.TimeoutError:
                    raise AgentError(Code.DEADLINE_EXCEEDED,
                                     f"removing container {c.id!r} took over {request.timeout}s")
            else:
                await coro
        return _EMPTY

    @rpc
    async def PauseContainer(self, request, context):
        async with self._container_in(request, "running", "PauseContainer") as c:
            await self.state.runc.pause(c.id)
            c.status = "paused"
        return _EMPTY

    @rpc
    async def ResumeContainer(self, request, context):
        async with self._container_in(request, "paused", "ResumeContainer") as c:
            await self.state.runc.resume(c.id)
            if c.status == "paused":  # the reaper may have seen it exit meanwhile
                c.status = "running"
        return _EMPTY

    @rpc
    async def UpdateContainer(self, request, context):
        c = self.state.container(request.container_id)
        if not request.HasField("resources"):
            raise AgentError(Code.INVALID_ARGUMENT, "UpdateContainerRequest.resources is missing")
        if c.status not in ("created", "running", "paused"):
            raise AgentError(Code.FAILED_PRECONDITION, f"container {c.id!r} is {c.status}")
        resources = message_to_oci(request.resources)
        await self.state.runc.update(c.id, resources)
        return _EMPTY

    @rpc
    async def StatsContainer(self, request, context):
        c = self.state.container(request.container_id)
        if not c.cgroup_paths:
            record_cgroups(c)
        stats = cgroups.read_stats(c.cgroup_paths)
        if not stats:
            raise AgentError(Code.UNAVAILABLE, f"no cgroup found for container {c.id!r}")
        resp = agent_pb2.StatsContainerResponse()
        json_format.ParseDict(stats, resp.cgroup_stats, ignore_unknown_fields=True)
        return resp

    @rpc
    async def ListProcesses(self, request, context):
        c = self.state.container(request.container_id)
        fmt = request.format or "table"
        if fmt not in ("table", "json"):
            raise AgentError(Code.INVALID_ARGUMENT,
                             f"format {request.format!r} is invalid: use 'table' or 'json'")
        pids = await self.state.runc.ps_pids(c.id)
        if fmt == "json":
            return agent_pb2.ListProcessesResponse(process_list=json.dumps(pids).encode())
        args = list(request.args) or ["-ef"]
        try:
            code, out, err = await self.state.reaper.run(["ps", *args], timeout=30)
        except FileNotFoundError:
            code, out = -1, b""
        if code != 0:
            lines = ["PID CMD"]
            for pid in pids:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
                except OSError:
                    continue
                lines.append(f"{pid} {cmd}")
            return agent_pb2.ListProcessesResponse(process_list=("\n".join(lines) + "\n").encode())
        lines = out.decode("utf-8", "replace").splitlines()
        if not lines:
            raise AgentError(Code.INTERNAL, "ps printed nothing")
        header = lines[0].split()
        if "PID" not in header:
            raise AgentError(Code.INVALID_ARGUMENT, f"ps {' '.join(args)} prints no PID column")
        idx = header.index("PID")
        keep = [lines[0]]
        pidset = set(pids)
        for line in lines[1:]:
            fields = line.split()
            if len(fields) > idx and fields[idx].isdigit() and int(fields[idx]) in pidset:
                keep.append(line)
        return agent_pb2.ListProcessesResponse(process_list=("\n".join(keep) + "\n").encode())

    # -- processes ------------------------------------------------------
    @rpc
    async def ExecProcess(self, request, context):
        st = self.state
        c = st.container(request.container_id)
        if not request.exec_id:
            raise AgentError(Code.INVALID_ARGUMENT, "exec_id is empty")
        if request.exec_id in c.processes or (c.init and c.init.exec_id == request.exec_id):
            raise AgentError(Code.ALREADY_EXISTS,
                             f"exec_id {request.exec_id!r} already used in container {c.id!r}")
        if not request.HasField("process"):
            raise AgentError(Code.INVALID_ARGUMENT, "ExecProcessRequest.process is missing")
        proc_spec = process_to_oci(request.process)
        if c.status not in ("created", "running"):
            raise AgentError(Code.FAILED_PRECONDITION,
                             f"cannot exec in container {c.id!r}: it is {c.status}")
        proc = Process(c.id, request.exec_id, bool(proc_spec.get("terminal")), is_init=False)
        c.processes[request.exec_id] = proc  # reserve
        n = id(proc)
        pjson = os.path.join(c.state_dir, f"exec-{n}.json")
        try:
            write_json(pjson, proc_spec)
            await st.launcher.launch(c, proc, ["exec", "--detach", "--process", pjson],
                                     os.path.join(c.state_dir, f"exec-{n}.pid"))
        except BaseException:
            if c.processes.get(request.exec_id) is proc:
                del c.processes[request.exec_id]
            raise
        finally:
            for f in (pjson, os.path.join(c.state_dir, f"exec-{n}.pid")):
                try:
                    os.unlink(f)
                except OSError:
                    pass
        log.info("exec %s in %s: pid %d", request.exec_id, c.id, proc.pid)
        return _EMPTY

    @rpc
    async def SignalProcess(self, request, context):
        st = self.state
        c = st.container(request.container_id)
        sig = request.signal
        if not 0 <= sig <= 64:
            raise AgentError(Code.INVALID_ARGUMENT, f"signal {sig} is not a valid signal number")
        if not request.exec_id:
            if c.status == "stopped":
                return _EMPTY
            await st.runc.kill(c.id, sig, all_processes=True)
            return _EMPTY
        c, p = st.process(request.container_id, request.exec_id)
        if p.pid is None or p.exited:
            log.info("signal %d to %s discarded: it has exited", sig, p.describe())
            return _EMPTY
        # The pid is ours until we reap it, so it cannot have been reused.
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGKILL and p.is_init and c.status == "paused":
            # A frozen process dies only once thawed (cgroup v1 freezer).
            async with c.lock:
                if c.status == "paused":
                    await st.runc.resume(c.id)
                    if c.status == "paused":
                        c.status = "running"
        return _EMPTY

    @rpc
    async def WaitProcess(self, request, context):
        c, p = self.state.process(request.container_id, request.exec_id)
        if p.exit_future is None:
            raise AgentError(Code.FAILED_PRECONDITION, f"{p.describe()} has not started")
        code = await asyncio.shield(p.exit_future)
        p.waited = True
        self.state.forget_if_finished(c, p)
        return agent_pb2.WaitProcessResponse(status=code)

    @rpc
    async def WriteStdin(self, request, context):
        c, p = self.state.process(request.container_id, request.exec_id)
        if p.stdin is None:
            raise AgentError(Code.FAILED_PRECONDITION, f"{p.describe()} has no stdin")
        try:
            n = await p.stdin.write(request.data)
        except ValueError:
            why = "the process has exited" if p.exited else "CloseStdin was called"
            raise AgentError(Code.FAILED_PRECONDITION, f"stdin of {p.describe()} is closed ({why})")
        except BrokenPipeError:
            raise AgentError(Code.FAILED_PRECONDITION,
                             f"stdin of {p.describe()} is broken: the process no longer reads it")
        return agent_pb2.WriteStreamResponse(len=n)

    async def _read(self, request, stderr: bool):
        if request.len == 0:
            raise AgentError(Code.INVALID_ARGUMENT, "len must be > 0")
        c, p = self.state.process(request.container_id, request.exec_id)
        buf = p.stderr if stderr else p.stdout
        data = await buf.read(request.len)
        if not data:
            self.state.forget_if_finished(c, p)
            raise AgentError(Code.OUT_OF_RANGE, EOF_DETAILS)
        return agent_pb2.ReadStreamResponse(data=data)

    @rpc
    async def ReadStdout(self, request, context):
        return await self._read(request, stderr=False)

    @rpc
    async def ReadStderr(self, request, context):
        return await self._read(request, stderr=True)

    @rpc
    async def CloseStdin(self, request, context):
        _, p = self.state.process(request.container_id, request.exec_id)
        if p.stdin is not None:
            await p.stdin.close()
        return _EMPTY

    @rpc
    async def TtyWinResize(self, request, context):
        _, p = self.state.process(request.container_id, request.exec_id)
        if p.master_fd is None:
            why = "its terminal closed when it exited" if p.terminal else "it has no terminal"
            raise AgentError(Code.FAILED_PRECONDITION, f"cannot resize {p.describe()}: {why}")
        from .stdio import set_winsize
        if request.row > 0xFFFF or request.column > 0xFFFF:
            raise AgentError(Code.INVALID_ARGUMENT, "row and column must fit in 16 bits")
        set_winsize(p.master_fd, request.row, request.column)
        return _EMPTY

    # -- guest ----------------------------------------------------------
    @rpc
    async def GetGuestDetails(self, request, context):
        resp = agent_pb2.GuestDetailsResponse()
        if request.mem_block_size:
            try:
                with open("/sys/devices/system/memory/block_size_bytes") as f:
                    resp.mem_block_size_bytes = int(f.read().strip(), 16)
            except (OSError, ValueError):
                pass
        if request.mem_hotplug_probe:
            resp.support_mem_hotplug_probe = os.path.exists("/sys/devices/system/memory/probe")
        d = resp.agent_details
        d.version = self.cfg.agent_version
        d.init_daemon = os.getpid() == 1
        d.storage_handlers.extend(["9p", "local", "ephemeral", "blk", "bind"])
        d.supports_seccomp = True
        return resp

    @rpc
    async def SetGuestDateTime(self, request, context):
        if not self.cfg.machine_managed:
            log.info("SetGuestDateTime ignored: this agent shares the host's clock")
            return _EMPTY
        if request.Usec < 0 or request.Usec >= 1_000_000 or request.Sec < 0:
            raise AgentError(Code.INVALID_ARGUMENT, "Sec must be >= 0 and 0 <= Usec < 1000000")

        class Timespec(ctypes.Structure):
            _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]
        libc = ctypes.CDLL(None, use_errno=True)
        ts = Timespec(request.Sec, request.Usec * 1000)
        if libc.clock_settime(0, ctypes.byref(ts)) != 0:
            err = ctypes.get_errno()
            raise AgentError(Code.INTERNAL, f"clock_settime: {os.strerror(err)}")
        return _EMPTY

    @rpc
    async def ReseedRandomDev(self, request, context):
        if request.data:
            # Mixes the bytes into the pool (no entropy credited): harmless anywhere.
            with open("/dev/random", "wb") as f:
                f.write(request.data)
        return _EMPTY

    @rpc
    async def OnlineCPUMem(self, request, context):
        if not self.cfg.machine_managed:
            log.info("OnlineCPUMem: nothing to do (not a VM)")
            return _EMPTY
        onlined = 0
        for path in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/online")):
            if request.nb_cpus and onlined >= request.nb_cpus:
                break
            if _online(path):
                onlined += 1
        if not request.cpu_only:
            for path in glob.glob("/sys/devices/system/memory/memory[0-9]*/online"):
                _online(path)
        log.info("OnlineCPUMem: %d cpu(s) onlined", onlined)
        return _EMPTY

    # -- network (kata_agent/network.py; protobuf <-> its dataclasses here) --
    @rpc
    async def UpdateInterface(self, request, context):
        from . import network
        if not request.HasField("interface"):
            raise AgentError(Code.INVALID_ARGUMENT, "UpdateInterfaceRequest.interface is missing")
        got = await _network_call(network.update_interface, _interface_from_pb(request.interface))
        return _interface_to_pb(got)

    @rpc
    async def UpdateRoutes(self, request, context):
        from . import network
        if not request.HasField("routes"):
            raise AgentError(Code.INVALID_ARGUMENT, "UpdateRoutesRequest.routes is missing")
        routes = [_route_from_pb(r) for r in request.routes.Routes]
        done = await _network_call(network.update_routes, routes)
        return agent_pb2.Routes(Routes=[_route_to_pb(r) for r in done])

    @rpc
    async def ListInterfaces(self, request, context):
        from . import network
        found = await _network_call(network.list_interfaces)
        return agent_pb2.Interfaces(Interfaces=[_interface_to_pb(i) for i in found])

    @rpc
    async def ListRoutes(self, request, context):
        from . import network
        found = await _network_call(network.list_routes)
        return agent_pb2.Routes(Routes=[_route_to_pb(r) for r in found])

    @rpc
    async def AddARPNeighbors(self, request, context):
        from . import network
        neighbors = [_neighbor_from_pb(n) for n in request.neighbors.ARPNeighbors]
        await _network_call(network.add_arp_neighbors, neighbors)
        return _EMPTY


async def _network_call(fn, *args):
    """Run a kata_agent.network function in a worker thread (pyroute2 is synchronous);
    its NetworkError becomes an AgentError with the same status."""
    from .network import NetworkError
    try:
        return await asyncio.to_thread(fn, *args)
    except NetworkError as e:
        raise AgentError(Code[e.code], e.message) from None


def _ip_from_pb(a):
    from .network import IPAddress
    return IPAddress(family=int(a.family), address=a.address, mask=a.mask)


def _ip_to_pb(a):
    from katapb import types_pb2
    return types_pb2.IPAddress(family=a.family, address=a.address, mask=a.mask)


def _interface_from_pb(i):
    from .network import Interface
    return Interface(device=i.device, name=i.name, addresses=[_ip_from_pb(a) for a in i.IPAddresses], mtu=i.mtu,
                     hw_addr=i.hwAddr, pci_addr=i.pciAddr, type=i.type, raw_flags=i.raw_flags)


def _interface_to_pb(i):
    from katapb import types_pb2
    return types_pb2.Interface(device=i.device, name=i.name, IPAddresses=[_ip_to_pb(a) for a in i.addresses],
                               mtu=i.mtu, hwAddr=i.hw_addr, pciAddr=i.pci_addr, type=i.type, raw_flags=i.raw_flags)


def _route_from_pb(r):
    from .network import Route
    return Route(dest=r.dest, gateway=r.gateway, device=r.device, source=r.source, scope=r.scope)


def _route_to_pb(r):
    from katapb import types_pb2
    return types_pb2.Route(dest=r.dest, gateway=r.gateway, device=r.device, source=r.source, scope=r.scope)


def _neighbor_from_pb(n):
    from .network import Neighbor
    return Neighbor(address=_ip_from_pb(n.toIPAddress), device=n.device, lladdr=n.lladdr, state=n.state,
                    flags=n.flags)


RESOLV_CONF = "/etc/resolv.conf"


def _write_resolv_conf(cfg: AgentConfig, lines: list[str]) -> str:
    """CreateSandbox.dns -> ``<state_dir>/sandbox/resolv.conf`` (Kata 1.x: the guest's
    /run/kata-containers/sandbox/resolv.conf); returns its path."""
    from .network import resolv_conf_text
    path = os.path.join(cfg.state_dir, "sandbox", "resolv.conf")
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    with open(path, "w") as f:
        f.write(resolv_conf_text(lines))
    os.chmod(path, 0o644)
    return path


def _use_sandbox_dns(spec: dict, resolv_conf: str | None) -> None:
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


def _online(path: str) -> bool:
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


def _add_unimplemented(cls) -> None:
    svc = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    for m in svc.methods:
        impl = getattr(cls, m.name, None)
        if impl is not None and getattr(impl, "_kata_rpc", False):
            continue

        def make(name):
            async def unimplemented(self, request, context):
                await context.abort(Code.UNIMPLEMENTED,
                                    f"AgentService.{name} is not implemented by kata-py's agent")
            unimplemented.__name__ = name
            return unimplemented
        setattr(cls, m.name, make(m.name))


_add_unimplemented(AgentService)


class HealthService(health_pb2_grpc.HealthServicer):
    def __init__(self, state: AgentState) -> None:
        self.state = state

    async def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Version(self, request, context):
        return health_pb2.VersionCheckResponse(grpc_version=API_VERSION,
                                               agent_version=self.state.config.agent_version)


MAX_MESSAGE = 64 << 20


async def start_grpc_server(socket_path: str, config: AgentConfig) -> tuple[grpc.aio.Server, AgentState]:
    """Install the reaper, then serve AgentService + Health on unix:socket_path."""
    state = AgentState(config)
    state.start()
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.so_reuseport", 0),
    ])
    agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentService(state), server)
    health_pb2_grpc.add_HealthServicer_to_server(HealthService(state), server)
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(socket_path)), exist_ok=True)
    old = os.umask(0o077)
    try:
        if server.add_insecure_port("unix:" + socket_path) == 0:
            raise OSError(f"cannot listen on unix:{socket_path}")
        await server.start()
    finally:
        os.umask(old)
    log.info("agent gRPC service on unix:%s (runc %s, state %s)", socket_path, config.runc,
             config.state_dir)
    return server, state


async def stop_grpc_server(server: grpc.aio.Server, state: AgentState, grace: float = 1.0) -> None:
    """Stop serving, then remove every container and unmount storages."""
    await server.stop(grace)
    await state.shutdown()


__all__ = ["AgentService", "AgentState", "HealthService", "start_grpc_server",
           "stop_grpc_server", "AgentError", "EOF_DETAILS"]
