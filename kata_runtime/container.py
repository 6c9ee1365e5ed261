"""Containers: the work behind create, start, kill, delete, exec, ps, pause, resume, update
and events (the cli/ modules are thin wrappers over these functions; ``state`` and ``list``
are in kata_runtime.status).

A container's state file (kata_runtime.state) records what runc's ``state`` prints plus
what later commands need: its sandbox, the spec's process, the shim's process record, the
exec'd processes' shims and the recorded status (``creating``, ``created``, ``running``,
``paused``); the status shown is worked out by kata_runtime.status.current_status.

Every command that changes a container holds its directory's lock for its duration
(the sandbox's too where it changes the sandbox). Every failing step is a StepError
naming the step; ``create`` undoes everything it did before it raises.
"""

from __future__ import annotations

import os
import time

from kata_runtime import procs
from kata_runtime.errors import InvalidArgument, KataError, NotFound, StepError, WrongState
from kata_runtime.log import current as current_log
from kata_runtime.status import current_status, rfc3339_nano

EXEC_STOP_TIMEOUT = 5.0
SHIM_EXIT_TIMEOUT = 5.0


# ------------------------------------------------------------ open helpers


class Opened:
    """A container (and its sandbox) opened under their locks by a command; a context manager."""

    def __init__(self, store, container_id: str, *, need_state: bool = True, lock_sandbox: bool = True):
        self.store = store
        self.id = container_id
        self.entry = store.lock_container(container_id, need_state=need_state)
        self.sandbox_entry = None
        try:
            self.data = self.entry.read() if self.entry.exists() else {"id": container_id, "status": "creating"}
            self.sandbox_id = self.data.get("sandbox_id", container_id)
            if lock_sandbox:
                try:
                    self.sandbox_entry = store.lock_sandbox(self.sandbox_id)
                except NotFound:
                    self.sandbox_entry = None
            sb = self.sandbox_entry.read() if self.sandbox_entry and self.sandbox_entry.exists() else \
                store.read_sandbox(self.sandbox_id)
            self.sandbox_data = sb
        except BaseException:
            self.release()
            raise

    @property
    def status(self) -> str:
        return current_status(self.data, self.sandbox_data)

    def sandbox(self):
        from kata_runtime.sandbox import Sandbox

        if self.sandbox_data is None:
            raise KataError(f"container {self.id}: its sandbox {self.sandbox_id} has no state")
        sb = Sandbox(self.sandbox_data)
        dead = sb.dead_part()
        if dead:
            raise KataError(f"container {self.id}: {dead}")
        return sb

    def save(self) -> None:
        self.entry.write(self.data)

    def release(self) -> None:
        if self.sandbox_entry is not None:
            self.sandbox_entry.release()
        self.entry.release()

    def __enter__(self) -> "Opened":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _require(opened: Opened, allowed: tuple[str, ...], message: str) -> str:
    status = opened.status
    if status not in allowed:
        raise WrongState(message.format(id=opened.id, status=status))
    return status


def _agent_step(what: str, fn):
    """Run an agent call; wrap its failure in a StepError naming ``what`` (which names the call)."""
    from kata_runtime.agent import AgentError

    try:
        return fn()
    except AgentError as e:
        raise StepError(what, e.details or e.code) from None


# ------------------------------------------------------------------ create


def create(store, config, container_id: str, bundle: str, *, pid_file: str | None = None,
           console_socket: str | None = None, detach: bool = True):
    """``kata-runtime create``: the container created (not started) in a new sandbox, or in the
    running sandbox its CRI annotations name (kata_runtime.pod: no second VM), its kata-shim
    spawned. Returns the shim's Popen (``run`` waits on it).

    Raises InvalidArgument / AlreadyExists / NotFound (the named sandbox) / StepError; on
    failure nothing is left behind (a joined sandbox keeps running, without the container).
    """
    from kata_oci import SpecError, check_spec, load_bundle_config
    from kata_oci.spec import rootfs_path
    from kata_runtime.mounts import plan_shares
    from kata_runtime.pod import pod_role
    from kata_runtime.state import check_id

    check_id(container_id)
    bundle = os.path.abspath(bundle)
    try:
        spec = load_bundle_config(bundle)
        check_spec(spec)  # its types checked before anything is made (no protobuf: built after the spawn)
        shares = plan_shares(spec, container_id, bundle)
    except SpecError as e:
        raise InvalidArgument(str(e)) from None
    _, sandbox_id = pod_role(container_id, spec.get("annotations"))
    check_id(sandbox_id, "sandbox")
    terminal = bool(spec["process"].get("terminal"))
    _check_console(terminal, console_socket, detach)
    entry = store.reserve_container(container_id)
    try:
        return _create_reserved(store, config, entry, spec, shares, bundle, rootfs_path(bundle, spec), sandbox_id,
                                pid_file=pid_file, console_socket=console_socket, detach=detach)
    finally:
        entry.release()


def _check_console(terminal: bool, console_socket: str | None, detach: bool) -> None:
    # runc's rules (utils_linux.go setupIO).
    if terminal and detach and not console_socket:
        raise InvalidArgument("cannot allocate tty if kata-runtime will detach without setting console socket")
    if console_socket and not terminal:
        raise InvalidArgument("cannot use console socket if kata-runtime will not allocate tty")
    if console_socket:
        from kata_runtime.console import check_socket_path

        check_socket_path(console_socket)


def _new_record(container_id: str, bundle: str, rootfs: str, spec: dict, sandbox_id: str, shares: list) -> dict:
    return {
        "id": container_id,
        "ociVersion": spec.get("ociVersion", ""),
        "bundle": bundle,
        "rootfs": rootfs,
        "created": rfc3339_nano(time.time_ns()),
        "annotations": spec.get("annotations") or {},
        "sandbox_id": sandbox_id,
        "status": "creating",
        "creator": procs.record(os.getpid()),
        "process": spec["process"],
        "shim": None,
        "execs": [],
        # kata_runtime.mounts.plan_shares: recorded before they are mounted, for delete.
        "shared_mounts": shares,
    }


def _create_reserved(store, config, entry, spec, shares, bundle, rootfs, sandbox_id, *, pid_file, console_socket,
                     detach):
    from kata_runtime.sandbox import Undo

    log = current_log()
    cid = entry.id
    undo = Undo(log)
    undo.push(f"remove state {entry.path}", entry.remove)
    data = _new_record(cid, bundle, rootfs, spec, sandbox_id, shares)
    locked: list = []  # the sandbox's state entry, held until the create has ended or been undone
    try:
        data["host_cgroup"] = _step("reading linux.cgroupsPath", lambda: _plan_host_cgroup(spec, sandbox_id == cid))
        entry.write(data)
        _enter_host_cgroup(data["host_cgroup"], spec, undo)
        if sandbox_id == cid:
            sandbox = _new_sandbox(store, config, cid, spec, bundle, shares, undo, log, locked,
                                   host_cgroup=data["host_cgroup"])
        else:
            sandbox = _join_sandbox(store, sandbox_id, cid, rootfs, shares, undo, locked)
        spec_bytes = _step("translating the spec for the guest", lambda: guest_spec(spec, cid, shares, sandbox))
        with sandbox.agent() as agent:
            _agent_step("creating the container in the agent (CreateContainer)",
                        lambda: agent.create_container(cid, spec_bytes))
        if sandbox_id != cid:
            undo.push("remove the container from the agent", lambda: _remove_quietly(sandbox, cid))
        shim = _step("starting kata-shim", lambda: _spawn_shim(sandbox, cid, cid, spec["process"], console_socket,
                                                               detach, undo))
        data["shim"] = shim_record(shim)
        if pid_file:
            _step(f"writing the pid file {pid_file}", lambda: write_pid_file(pid_file, shim.pid))
        data["status"] = "created"
        entry.write(data)
        _leave_host_cgroup()
    except BaseException as e:
        _leave_host_cgroup()  # the clean-up runs from where the runtime came
        undo.run()
        if isinstance(e, KataError):
            e.args = (f"create container {cid}: {e}",)
            raise
        if not isinstance(e, Exception):
            raise
        raise StepError(f"create container {cid}", e) from None
    finally:
        for held in locked:
            held.release()
    log.info("container created", container=cid, sandbox=sandbox_id, shim=shim.pid)
    return shim


def _plan_host_cgroup(spec: dict, own_sandbox: bool) -> dict | None:
    """kata_runtime.host_cgroup.plan: the record of the spec's cgroupsPath on the host, or None."""
    from kata_runtime import host_cgroup

    return host_cgroup.plan(spec, own_sandbox=own_sandbox)


def _enter_host_cgroup(record: dict | None, spec: dict, undo) -> None:
    """Make the host cgroup of ``record`` (recorded in the state already), give it the CPU limits
    that make sense for it and move this runtime into it, so that every process it starts for
    the container (proxy, hypervisor, shim) is born there (kata_runtime.host_cgroup). ``undo``
    gets its removal, which runs after the processes were stopped. Raises StepError."""
    from kata_runtime import host_cgroup

    if record is None:
        return
    undo.push(f"remove the host cgroup {record['path']}", lambda: host_cgroup.remove(record))
    _step(f"making the host cgroup {record['path']}", lambda: host_cgroup.create(record))
    _step(f"setting the CPU limits of the host cgroup {record['path']}",
          lambda: host_cgroup.apply_limits(record, (spec.get("linux") or {}).get("resources")))
    _step(f"joining the host cgroup {record['path']}", lambda: host_cgroup.join(record))


def _leave_host_cgroup() -> None:
    """This runtime back where it was before ``_enter_host_cgroup`` (the processes it started
    stay in the host cgroup); nothing to do if it did not join (kata_runtime.host_cgroup.leave)."""
    from kata_runtime import host_cgroup

    host_cgroup.leave()


def _new_sandbox(store, config, cid: str, spec: dict, bundle: str, shares: list, undo, log, locked: list, *,
                 host_cgroup: dict | None = None):
    """A sandbox of the container's own (its id is the container's), started: the guest resolved
    (image, accelerator), its directory, the rootfs and the spec's host mounts (``shares``,
    kata_runtime.mounts.plan_shares) shared, the guest, kata-proxy and CreateSandbox (with the
    sandbox shm). With the VM cache on ([factory] vm_cache_number), a cached sandbox is taken
    instead of starting one when it can be (:func:`_take_cached`). Returns the Sandbox; its
    state entry (locked) is appended to ``locked`` for the caller to release; ``undo`` gets
    every reverse step. ``host_cgroup``: the container's host cgroup record, which a cached
    sandbox's processes are moved into."""
    from kata_oci.spec import rootfs_path
    from kata_runtime.mounts import sandbox_shm_size
    from kata_runtime.sandbox import Sandbox

    rootfs = rootfs_path(bundle, spec)

    sb_entry = store.reserve_sandbox(cid)
    locked.append(sb_entry)
    undo.push(f"remove state {sb_entry.path}", sb_entry.remove)
    sandbox = Sandbox.new(cid, config)
    sandbox.data["containers"] = [cid]
    sandbox.data["network"] = _step("reading the spec's network namespace", lambda: network_plan(spec, config))
    sandbox.data["shm_size"] = sandbox_shm_size(spec, bundle)
    sb_entry.write(sandbox.data)
    _step(f"finding the sandbox's {sandbox.data['hypervisor']['kind']} guest",
          lambda: sandbox.resolve_guest(store.root, log))
    sb_entry.write(sandbox.data)
    if _take_cached(config, sandbox, spec, undo, log, host_cgroup, save=lambda: sb_entry.write(sandbox.data)):
        _step(f"sharing the rootfs {rootfs} with the sandbox", lambda: sandbox.share_rootfs_running(cid, rootfs, undo))
        _step("sharing the spec's host mounts with the sandbox", lambda: sandbox.share_mounts_running(shares, undo))
        return sandbox
    _step("preparing the sandbox directory", lambda: sandbox.prepare(undo))
    _step(f"sharing the rootfs {rootfs} with the sandbox", lambda: sandbox.share_rootfs(cid, rootfs, undo))
    _step("sharing the spec's host mounts with the sandbox", lambda: sandbox.share_mounts(shares, undo))
    try:
        sandbox.start(undo, spec.get("hostname") or "", log, save=lambda: sb_entry.write(sandbox.data))
    finally:
        sb_entry.write(sandbox.data)
    return sandbox


def _take_cached(config, sandbox, spec: dict, undo, log, host_cgroup: dict | None, save) -> bool:
    """With the VM cache on, take a started sandbox from it (kata_runtime.vmcache.take) and make
    it this one (Sandbox.adopt): its processes moved into the container's host cgroup, then
    CreateSandbox. False (nothing done) when the cache is off or has none for this sandbox: a
    pod network (made when a guest starts) or another configuration. Raises StepError."""
    endpoint = config.vm_cache_endpoint
    if endpoint is None:
        return False
    if sandbox.data.get("network"):
        log.debug("VM cache: the container joins a pod network; starting a new sandbox")
        return False
    from kata_runtime import vmcache

    base = vmcache.take(endpoint, sandbox.data, log)
    if base is None:
        return False
    sandbox.adopt(base, undo)
    save()
    _step("taking over the cached sandbox", lambda: vmcache.taken_over(base))
    log.debug("VM cache: sandbox taken", sandbox=sandbox.id, guest=sandbox.guest_id)
    from kata_runtime import host_cgroup as hcg

    # Where a sandbox of its own would have been born: the host cgroup, or the runtime's own (not
    # the cache server's, whose stop or limits must not reach the containers it handed out).
    _step("moving the cached sandbox's processes",  # the error names where (move_processes)
          lambda: hcg.move_processes(host_cgroup, vmcache.sandbox_pids(sandbox.data)))
    try:
        sandbox.create_in_agent(spec.get("hostname") or "")
    finally:
        save()
    return True


def _join_sandbox(store, sandbox_id: str, cid: str, rootfs: str, shares: list, undo, locked: list):
    """The running sandbox ``sandbox_id``, with ``cid`` added to its members, its rootfs and the
    spec's host mounts shared (kata_runtime.sandbox.Sandbox.share_rootfs_running,
    share_mounts_running): no second guest. Returns the
    Sandbox; its state entry, locked (other creates and deletes of the pod wait), is appended
    to ``locked``. Raises NotFound (no such sandbox) or KataError (it is not running)."""
    from kata_runtime.sandbox import Sandbox

    try:
        sb_entry = store.lock_sandbox(sandbox_id)
    except NotFound:
        raise NotFound(f"sandbox {sandbox_id} (named by the container's CRI annotations) does not exist") from None
    locked.append(sb_entry)
    try:
        sandbox = Sandbox(sb_entry.read())
    except NotFound:
        raise KataError(f"cannot join sandbox {sandbox_id}: its create has not finished (or crashed)") from None
    dead = sandbox.dead_part() or (None if sandbox.data.get("status") == "running" else "it is not running")
    if dead:
        raise KataError(f"cannot join sandbox {sandbox_id}: {dead}")
    sandbox.data["containers"] = sandbox.members + [cid]
    sb_entry.write(sandbox.data)
    undo.push(f"remove {cid} from the members of sandbox {sandbox_id}", lambda: _leave_members(sb_entry, sandbox, cid))
    _step(f"sharing the rootfs {rootfs} with the running sandbox {sandbox_id}",
          lambda: sandbox.share_rootfs_running(cid, rootfs, undo))
    _step(f"sharing the spec's host mounts with the running sandbox {sandbox_id}",
          lambda: sandbox.share_mounts_running(shares, undo))
    return sandbox


def guest_spec(spec: dict, cid: str, shares: list, sandbox):
    """CreateContainer's ``oci.Spec`` (encoded): the bundle's spec with its mounts as the guest has them
    (kata_runtime.mounts.guest_mounts: shared ones through the shared dir, /dev/shm on the
    sandbox shm when the sandbox has one). Raises kata_oci.SpecError."""
    from kata_oci import container_spec
    from kata_runtime import host_cgroup
    from kata_runtime.mounts import guest_mounts

    spec = host_cgroup.for_guest(spec, sandbox.data["hypervisor"]["kind"])
    mounts = guest_mounts(spec, shares, sandbox_shm=sandbox.shm_size > 0)
    return container_spec({**spec, "mounts": mounts} if "mounts" in spec else spec, cid)


def _leave_members(sb_entry, sandbox, cid: str) -> None:
    sandbox.data["containers"] = [m for m in sandbox.members if m != cid]
    sb_entry.write(sandbox.data)


def _remove_quietly(sandbox, cid: str) -> None:
    """RemoveContainer as a clean-up step (a container that is not there is fine)."""
    from kata_runtime.agent import AgentError

    try:
        with sandbox.agent() as agent:
            agent.remove_container(cid)
    except AgentError as e:
        if e.code != "NOT_FOUND":
            raise


def network_plan(spec: dict, config) -> dict | None:
    """kata_runtime.network.plan for the spec with [runtime] internetworking_model."""
    from kata_runtime.network import plan

    return plan(spec, config.values["runtime"].get("internetworking_model", "tcfilter"))


def _step(what: str, fn):
    """Run one step of a command; any failure becomes a StepError naming it."""
    try:
        return fn()
    except KataError as e:
        if isinstance(e, StepError):
            raise
        raise StepError(what, e) from None
    except Exception as e:  # noqa: BLE001 - named, one line
        raise StepError(what, e) from None


def shim_record(shim) -> dict:
    """The shim's process record (kata_runtime.shim.record)."""
    from kata_runtime.shim import record

    return record(shim)


def write_pid_file(path: str, pid: int) -> None:
    """Write ``pid`` (no newline) atomically, as runc: ``.<name>`` beside it, then rename."""
    path = os.path.abspath(path)
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path))
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, path)


def _spawn_shim(sandbox, container_id: str, exec_id: str, process: dict, console_socket: str | None,
                detach: bool, undo):
    """Spawn the shim for one process; with a terminal, make the pty and hand its master out."""
    from kata_runtime import shim as kshim

    terminal = bool(process.get("terminal"))
    args = kshim.argv(sandbox.shim_settings, sandbox.proxy_socket, container_id, exec_id,
                      terminal=terminal, log_path=sandbox.shim_log)
    if not (terminal and console_socket):
        child = kshim.spawn(args, detach=detach)
        undo.push("stop kata-shim", lambda: _stop_shim(child))
        return child
    from kata_runtime import console  # only with a terminal: it imports socket

    master, slave, name = console.open_pty(console.console_size(process))
    try:
        child = kshim.spawn(args, tty_slave=slave, detach=detach)
        undo.push("stop kata-shim", lambda: _stop_shim(child))
        os.close(slave)
        slave = -1
        console.send_master(console_socket, master, name)
    finally:
        if slave >= 0:
            os.close(slave)
        os.close(master)
    return child


def _stop_shim(child) -> None:
    rec = {"pid": child.pid, "start": procs.start_time(child.pid)}
    procs.terminate(rec, 1.0, 9)


# -------------------------------------------------------------- lifecycle


def start(store, container_id: str) -> None:
    """``kata-runtime start``: StartContainer (runc's messages for the wrong states)."""
    with Opened(store, container_id, lock_sandbox=False) as c:
        status = c.status
        if status != "created":
            raise WrongState({"stopped": "cannot start a container that has stopped",
                              "running": "cannot start an already running container",
                              "paused": "cannot start a paused container"}.get(
                status, f"cannot start a container that is {status}"))
        with c.sandbox().agent() as agent:
            _agent_step(f"start container {container_id} (StartContainer)", lambda: agent.start_container(container_id))
        c.data["status"] = "running"
        c.save()


def kill(store, container_id: str, signum: int, all_processes: bool = False) -> None:
    """``kata-runtime kill``: SignalProcess to the init (``--all``: every process)."""
    with Opened(store, container_id, lock_sandbox=False) as c:
        _require(c, ("created", "running", "paused"), "container not running")
        with c.sandbox().agent() as agent:
            _agent_step(f"signal {signum} to container {container_id} (SignalProcess)",
                        lambda: agent.signal_process(container_id, "" if all_processes else container_id, signum))


def pause(store, container_id: str) -> None:
    """``kata-runtime pause``: PauseContainer (freezes every process of the container)."""
    with Opened(store, container_id, lock_sandbox=False) as c:
        _require(c, ("running",), "container not running")
        with c.sandbox().agent() as agent:
            _agent_step(f"pause container {container_id} (PauseContainer)", lambda: agent.pause_container(container_id))
        c.data["status"] = "paused"
        c.save()


def resume(store, container_id: str) -> None:
    """``kata-runtime resume``: ResumeContainer."""
    with Opened(store, container_id, lock_sandbox=False) as c:
        _require(c, ("paused",), "container not paused")
        with c.sandbox().agent() as agent:
            _agent_step(f"resume container {container_id} (ResumeContainer)",
                        lambda: agent.resume_container(container_id))
        c.data["status"] = "running"
        c.save()


def update(store, container_id: str, resources: dict) -> None:
    """``kata-runtime update``: UpdateContainer with an OCI ``linux.resources`` object."""
    from kata_oci import SpecError, resources_spec

    try:
        resources_bytes = resources_spec(resources)
    except SpecError as e:
        raise InvalidArgument(str(e).replace("config.json: ", "")) from None
    with Opened(store, container_id, lock_sandbox=False) as c:
        _require(c, ("created", "running", "paused"), "container {id} is {status}: cannot update it")
        with c.sandbox().agent() as agent:
            _agent_step(f"update container {container_id} (UpdateContainer)",
                        lambda: agent.update_container(container_id, resources_bytes))
        _update_host_limits(c.data.get("host_cgroup"), resources)


def _update_host_limits(record: dict | None, resources: dict) -> None:
    """``update`` of a container whose host cgroup has its CPU limits: the new ones there too
    (kata_runtime.host_cgroup.apply_limits). Raises StepError."""
    from kata_runtime import host_cgroup

    if record is not None:
        _step(f"setting the CPU limits of the host cgroup {record['path']}",
              lambda: host_cgroup.apply_limits(record, resources))


def stats(store, container_id: str) -> dict:
    """runc's ``types.Stats`` JSON object of the container (kata_runtime.events.runc_stats)."""
    from kata_runtime.events import runc_stats

    with Opened(store, container_id, lock_sandbox=False) as c:
        _require(c, ("created", "running", "paused"), "container not running")
        with c.sandbox().agent() as agent:
            resp = _agent_step(f"stats of container {container_id} (StatsContainer)",
                               lambda: agent.stats_container(container_id))
    return runc_stats(resp)


def ps(store, container_id: str, fmt: str, ps_args=()) -> bytes:
    """``kata-runtime ps``: the agent's ListProcesses (``ps -ef`` table, or a JSON list of pids)."""
    with Opened(store, container_id, lock_sandbox=False) as c:
        _require(c, ("created", "running", "paused"), "container {id} is not running")
        with c.sandbox().agent() as agent:
            return _agent_step(f"ps of container {container_id} (ListProcesses)",
                               lambda: agent.list_processes(container_id, fmt, ps_args))


# ------------------------------------------------------------------ delete


def delete(store, container_id: str, force: bool = False) -> None:
    """``kata-runtime delete [--force]``: RemoveContainer and the container's state. The last
    container of a sandbox also stops the sandbox (DestroySandbox, hypervisor, proxy, mounts).
    Deleting a pod's sandbox container while others still live stops the whole sandbox, as
    Kata 1.x did (cli/delete.go: StopSandbox, then DeleteSandbox): the others' processes are
    killed with it and they are left ``stopped``, for their own delete.

    Without ``force`` the container must be stopped or created, as with runc (runc's
    message otherwise). With it, a running, paused, half-made or broken container is
    removed too, and an id that names no container is no error (runc 1.1's delete.go:
    ContainerNotExists with --force returns nil; containerd-shim runs ``delete --force``
    after a ``delete`` that may already have removed it). NotFound without ``force``."""
    log = current_log()
    try:
        opened = Opened(store, container_id, need_state=not force)
    except NotFound:
        if force:
            return
        raise
    with opened as c:
        status = c.status
        if status not in ("stopped", "created") and not force:  # runc deletes a created one too
            raise WrongState(f"cannot delete container {container_id} that is not stopped: {status}")
        if c.sandbox_data is not None and container_id not in c.sandbox_data.get("containers", []):
            c.sandbox_data = None  # a create that crashed before it joined; or a sandbox of that id since
        if force:
            _thaw_host_cgroup(c.data)
        _remove_from_agent(c, force, log)
        _stop_shims(c.data, force)
        if c.sandbox_data is not None:
            _leave_sandbox(store, c, force, log)
        _remove_host_cgroup(c.data)
        c.entry.remove()
    log.info("container deleted", container=container_id)


def _thaw_host_cgroup(data: dict) -> None:
    """``delete --force``: whatever a pause froze in the container's host cgroup thawed first, so
    that it dies with the sandbox (kata_runtime.host_cgroup.thaw)."""
    from kata_runtime import host_cgroup

    host_cgroup.thaw(data.get("host_cgroup"))


def _remove_host_cgroup(data: dict) -> None:
    """The container's host cgroup, if this runtime made it: what still runs there is killed and
    the directories removed (kata_runtime.host_cgroup.remove; one left is logged, not raised)."""
    from kata_runtime import host_cgroup

    host_cgroup.remove(data.get("host_cgroup"))


def _remove_from_agent(c: Opened, force: bool, log) -> None:
    from kata_runtime.agent import AgentError
    from kata_runtime.sandbox import Sandbox

    if c.sandbox_data is None:
        return
    sb = Sandbox(c.sandbox_data)
    if sb.dead_part() is not None or c.sandbox_data.get("status") != "running":
        return
    try:
        with sb.agent() as agent:
            agent.remove_container(c.id)
    except AgentError as e:
        if e.code == "NOT_FOUND" or force:
            log.warning(f"delete {c.id}: {e}")
            return
        raise StepError(f"remove container {c.id} (RemoveContainer)", e) from None


def _stop_shims(data: dict, force: bool) -> None:
    """Wait for the container's shims to exit (they do once the agent removed the processes);
    kill the ones that do not (a shim retrying a dead proxy)."""
    records = [data.get("shim")] + [e.get("shim") for e in data.get("execs", [])]
    for rec in records:
        if rec and not procs.wait_gone(rec, SHIM_EXIT_TIMEOUT if not force else 1.0):
            procs.terminate(rec, 1.0)


def _leave_sandbox(store, c: Opened, force: bool, log) -> None:
    """The container leaves its sandbox: the sandbox stops when it was the last member or the
    sandbox container; otherwise its rootfs is unshared and the sandbox keeps running."""
    from kata_runtime.sandbox import Sandbox

    sb = Sandbox(c.sandbox_data)
    others = [m for m in sb.members if m != c.id]
    if others and c.id != sb.id:
        _step(f"unsharing the rootfs of {c.id} from sandbox {sb.id}", lambda: _unshare_rootfs(sb, c.id, force, log))
        _step(f"unsharing the host mounts of {c.id} from sandbox {sb.id}", lambda: _unshare_mounts(sb, c.data, force, log))
        sb.data["containers"] = others
        c.sandbox_entry.write(sb.data)
        return
    if others:
        log.info("deleting the sandbox container stops its sandbox", sandbox=sb.id, containers=others)
    sb.stop(log, force=force)
    for member in others:
        _stop_member_shims(store, member)
    if c.sandbox_entry is not None:
        c.sandbox_entry.remove()


def _unshare_rootfs(sb, container_id: str, force: bool, log) -> None:
    try:
        sb.unshare_rootfs(container_id)
    except Exception as e:  # noqa: BLE001
        if not force:
            raise
        log.warning(f"delete --force {container_id}: unsharing its rootfs: {e}")


def _unshare_mounts(sb, data: dict, force: bool, log) -> None:
    """The leaving container's shared host mounts (its state's ``shared_mounts``) unmounted and removed."""
    try:
        sb.unshare_mounts(data.get("shared_mounts") or [])
    except Exception as e:  # noqa: BLE001
        if not force:
            raise
        log.warning(f"delete --force {data.get('id')}: unsharing its host mounts: {e}")


def _stop_member_shims(store, member: str) -> None:
    """After its sandbox stopped: the member's shims (which end with the agent) are gone. Its
    state is only read (its lock comes before the sandbox's): its own delete removes it."""
    try:
        data = store.read_container(member)
    except KataError:
        return
    _stop_shims(data, force=True)


# -------------------------------------------------------------------- exec


def exec_process(store, container_id: str, process: dict, *, detach: bool, pid_file: str | None = None,
                 console_socket: str | None = None):
    """``kata-runtime exec``: ExecProcess, then a shim for it. Returns the shim's Popen
    (detached or not: an attached caller waits on it). Raises StepError / WrongState."""
    from kata_oci import SpecError, process_spec
    from kata_runtime.sandbox import Undo

    try:
        process_bytes = process_spec(process)
    except SpecError as e:
        raise InvalidArgument(str(e).replace("config.json: ", "")) from None
    terminal = bool(process.get("terminal"))
    _check_console(terminal, console_socket, detach)
    exec_id = os.urandom(16).hex()
    undo = Undo(current_log())
    with Opened(store, container_id, lock_sandbox=False) as c:
        _require(c, ("created", "running"), "cannot exec in a {status} container")
        sandbox = c.sandbox()
        _enter_host_cgroup_for_exec(c.data.get("host_cgroup"))
        with sandbox.agent() as agent:
            _agent_step("starting the process in the agent (ExecProcess)",
                        lambda: agent.exec_process(container_id, exec_id, process_bytes))
            undo.push("kill the exec'd process", lambda: agent.signal_process(container_id, exec_id, 9))
            try:
                shim = _step("starting kata-shim", lambda: _spawn_shim(sandbox, container_id, exec_id, process,
                                                                       console_socket, detach, undo))
                if pid_file:
                    _step(f"writing the pid file {pid_file}", lambda: write_pid_file(pid_file, shim.pid))
            except BaseException:
                undo.run()
                raise
        _leave_host_cgroup()
        execs = [e for e in c.data.get("execs", []) if procs.alive(e.get("shim"))]
        execs.append({"exec_id": exec_id, "shim": shim_record(shim)})
        c.data["execs"] = execs
        c.save()
    return shim


def _enter_host_cgroup_for_exec(record: dict | None) -> None:
    """Move this runtime into the container's host cgroup before it spawns the exec's kata-shim
    (kata_runtime.host_cgroup.join). A failure is logged: the exec still runs, its shim where
    the runtime is."""
    from kata_runtime import host_cgroup

    if record is None:
        return
    try:
        host_cgroup.join(record)
    except KataError as e:
        current_log().warning(f"exec: {e}: the exec's kata-shim stays in the runtime's cgroup")


def exec_process_spec(data: dict, args: list[str], *, tty: bool, cwd: str | None, env: list[str],
                      user: str | None) -> dict:
    """runc exec's process from the command line: the container's process (env, cwd, user,
    capabilities...) with ``args`` and the flags applied (runc's exec.go getProcess)."""
    process = dict(data.get("process") or {})
    process.pop("consoleSize", None)
    process["args"] = list(args)
    process["terminal"] = tty
    if cwd:
        process["cwd"] = cwd
    if env:
        process["env"] = list(process.get("env") or []) + list(env)
    if user:
        process["user"] = parse_user(user)
    return process


def parse_user(text: str) -> dict:
    """``UID[:GID]`` -> OCI user object (numeric only, as runc's exec --user)."""
    uid, _, gid = text.partition(":")
    try:
        user = {"uid": int(uid)}
        if gid:
            user["gid"] = int(gid)
    except ValueError:
        raise InvalidArgument(f"invalid --user {text!r}: use UID[:GID] (numbers)") from None
    return user


def container_data(store, container_id: str) -> dict:
    """The recorded state of a container (for exec's defaults)."""
    return store.read_container(container_id)
