"""The VM cache (Kata 1.x's VMCache): sandboxes started ahead of time and handed to creates.

``kata-runtime factory init`` runs :class:`CacheServer` in the foreground: it keeps
``[factory] vm_cache_number`` sandboxes started — the guest (QEMU, or the process sandbox's
agent) and its kata-proxy up, the agent answering, no CreateSandbox yet — and serves
``cache.CacheService`` (proto/katapb/cache.proto, Kata 1.x's service and message names) on
the unix socket ``vm_cache_endpoint``. ``kata-runtime create`` of a new sandbox asks it first
(:func:`take`): when the cached sandboxes were started with the configuration the create
would use (``Config``), it takes one (``GetBaseVM``) and owns it from then on — CreateSandbox,
the rootfs shared into the running guest, CreateContainer — instead of starting its own. A
create falls back to starting its own sandbox when nothing serves the endpoint (one warning,
as Kata's "load vm factory failed, about to create new vm"), when no cached sandbox is ready
(the server answers UNAVAILABLE at once: a create never waits for the cache), when the
configurations differ, or when the container joins a pod network (the guest's network is
made when it starts; Kata's VMCache hot-plugs it, ours does not).

What a cached sandbox is on the host: its runtime directory ``/run/vc/vm/vmcache-<16 hex>``
(the id a create then records as the guest's, ``hypervisor.guest_id``), its processes
(children of the server, in sessions of their own), and a record ``<root>/vmcache/<id>.json``
(the sandbox record plus the server's own process record) that a later server or
``factory destroy`` uses to stop what a killed server left. The server starts sandboxes at
the lowest CPU priority (nice 19, inherited by everything it spawns, and given to the
autogroup of each session it starts: procs.keep_priority), so refilling the cache does not
slow the creates it exists to speed up; a sandbox handed out is set back to nice 0 (every
thread of its processes, and their sessions' autogroups) before the create gets it, and the create moves its
processes into its own cgroup (or the container's host cgroup), where a sandbox it started
would have been born.

Hand-over: a sandbox handed out is leased, not forgotten. Its record stays, with the lease's
end, until the taker has saved its own state and removes it (:func:`taken_over`); a lease
that ends first (the taker died, timed out or was interrupted) is claimed back by the server,
which stops the sandbox. Removal and claim are one unlink against one rename, so exactly one
side wins, and a taker that comes too late fails its create cleanly. One server per
endpoint: an flock on ``<endpoint>.lock``, taken before the first boot.

Stopping the server (SIGTERM, SIGINT, ``Quit`` from ``factory destroy``) stops the sandboxes
it holds ready and settles its open leases; the ones taken over belong to their containers
and stay. The server reaps the handed-out processes that are its children when they end.
"""

from __future__ import annotations

import os

from kata_log import cjson
from kata_runtime import procs
from kata_runtime.status import processes_dead_part

CONFIG = "/cache.CacheService/Config"
GET_BASE_VM = "/cache.CacheService/GetBaseVM"
STATUS = "/cache.CacheService/Status"
QUIT = "/cache.CacheService/Quit"
#: Ids of cached sandboxes: the prefix and 16 hex digits.
ID_PREFIX = "vmcache-"
#: Seconds a create waits for the cache server's answers before starting its own sandbox.
TAKE_TIMEOUT = 5.0
#: nice of the processes of a sandbox while it waits in the cache (the lowest priority).
WAITING_NICE = 19
RECORDS = "vmcache"
#: Seconds a handed-out sandbox's record outlives the hand-out before the server takes it back
#: and stops it: the taker removes the record once its own state holds the sandbox (a create
#: does so within milliseconds); one that died, timed out or was interrupted before never does.
LEASE = 30.0
#: Key of the record path in GetBaseVM's sandbox JSON.
RECORD_KEY = "vmcache_record"


class CacheError(Exception):
    """The VM cache cannot be served or reached; the message says why (one line)."""


def wanted_config(data: dict) -> dict:
    """What a cached sandbox must have been started with to serve the sandbox record ``data``
    (kata_runtime.sandbox.Sandbox.data, its guest resolved): the hypervisor driver, its
    settings and agent debug level, and kata-proxy's settings. GrpcVMConfig.Data's JSON."""
    hv = data["hypervisor"]
    return {"hypervisor": {"kind": hv["kind"], "settings": hv["settings"], "debug": bool(hv["debug"])},
            "proxy": {"settings": data["proxy"]["settings"]}}


def config_differences(held: dict, wanted: dict) -> list[str]:
    """Names of the settings in which two :func:`wanted_config` values differ, as the
    configuration spells them (``[hypervisor.qemu] default_memory``, ``hypervisor``)."""
    if held.get("hypervisor", {}).get("kind") != wanted["hypervisor"]["kind"]:
        return ["[runtime] hypervisor"]
    kind = wanted["hypervisor"]["kind"]
    names = []
    for section, got, want in ((f"hypervisor.{kind}", held["hypervisor"].get("settings", {}),
                                wanted["hypervisor"]["settings"]),
                               ("proxy.kata", held.get("proxy", {}).get("settings", {}), wanted["proxy"]["settings"])):
        names += [f"[{section}] {key}" for key in sorted(set(got) | set(want)) if got.get(key) != want.get(key)]
    if bool(held["hypervisor"].get("debug")) != wanted["hypervisor"]["debug"]:
        names.append("[agent.kata] enable_debug")
    return names


def guest_size(data: dict) -> dict:
    """``{"cpu": vCPUs, "memory": MiB}`` of a sandbox record's guest, as GrpcVM and GrpcVMStatus
    carry them (the process sandbox: 1 and 0, it has no size of its own)."""
    settings = data["hypervisor"]["settings"]
    return {"cpu": int(settings.get("default_vcpus") or 1), "memory": int(settings.get("default_memory") or 0)}


def records_dir(root: str) -> str:
    """Where a cache server under ``--root`` keeps the records of the sandboxes it holds."""
    return os.path.join(root, RECORDS)


def record_path(root: str, sandbox_id: str) -> str:
    """The record of one cached sandbox: ``{"server": process record, "sandbox": Sandbox.data}``,
    and ``"lease_until"`` (epoch seconds) once handed out, until the taker removes it."""
    return os.path.join(records_dir(root), f"{sandbox_id}.json")


# ------------------------------------------------------------------ client


def _empty() -> bytes:
    return b""  # google.protobuf.Empty encodes to no bytes


def take(endpoint: str, data: dict, log, timeout: float = TAKE_TIMEOUT) -> dict | None:
    """A started sandbox from the cache server on ``endpoint`` for the new sandbox record
    ``data`` (its guest resolved), or None when the create must start its own: nothing serves
    the endpoint, it fails, or the cached sandboxes were started with another configuration
    (a warning in ``log`` naming the settings that differ); no sandbox is ready (a debug line). The caller owns the returned
    record (a cached sandbox's Sandbox.data: ``id``, ``vm_dir``, ``hypervisor``, ``proxy``)
    and must stop it if its create fails. Never raises for the cache's sake."""
    from kata_grpc.client import Channel, TransportError
    from kata_grpc.pb import DecodeError, field
    from kata_grpc.protocol import UNAVAILABLE, RpcError

    channel = Channel(endpoint, connect_timeout=timeout, user_agent=b"kata-runtime")
    try:
        # By hand (cache.proto's numbers), not cache_pb2: no protobuf import in a create.
        config = channel.unary(CONFIG, _empty(), timeout=timeout)
        differs = config_differences(cjson.loads(bytes(field(config, 1, 2, b""))), wanted_config(data))  # Data
        if differs:
            log.warning(f"VM cache {endpoint}: its sandboxes were started with another configuration "
                        f"({', '.join(differs)} differ); starting a new sandbox")
            return None
        vm = channel.unary(GET_BASE_VM, _empty(), timeout=timeout)
        vm_id = bytes(field(vm, 1, 2, b"")).decode()  # GrpcVM.id
        base = cjson.loads(bytes(field(vm, 2, 2, b"")))  # GrpcVM.hypervisor
    except RpcError as e:
        if e.code == UNAVAILABLE:
            log.debug(f"VM cache {endpoint}: {e.message}; starting a new sandbox")
        else:
            log.warning(f"VM cache {endpoint}: {e.message or e.name}; starting a new sandbox")
        return None
    except (TransportError, ValueError, DecodeError) as e:
        log.warning(f"load vm factory failed ({endpoint}: {e}), about to create new vm")
        return None
    finally:
        channel.close()
    dead = processes_dead_part(base)
    if dead is not None:
        # Ended between the server's check and now: the server stops it when the lease ends.
        log.warning(f"VM cache {endpoint}: sandbox {vm_id} ended before it was used ({dead}); "
                    "starting a new sandbox")
        return None
    return base


def taken_over(base: dict) -> None:
    """Tell the cache server that the sandbox ``base`` (from :func:`take`) is now recorded in
    the taker's own state: its record under the server's --root is removed, so the server
    does not take it back when the lease (:data:`LEASE`) ends. Call it right after saving.
    Raises CacheError when the server already took it back (the lease ended: the removal and
    the server's claim, a rename, cannot both succeed)."""
    path = base.get(RECORD_KEY) or ""
    if os.path.basename(path) != f"{base['id']}.json" or not base["id"].startswith(ID_PREFIX) \
            or os.path.basename(os.path.dirname(path)) != RECORDS:
        raise CacheError(f"VM cache: sandbox {base['id']} came with no record of its own ({path!r})")
    try:
        os.unlink(path)
    except FileNotFoundError:
        raise CacheError(f"VM cache: the server took sandbox {base['id']} back (its lease ended) before "
                         "this create recorded it") from None


def claim_back(path: str) -> bool:
    """The server's side of :func:`taken_over`: take a leased record back (renamed to
    ``.expired``, which the stop removes) unless its taker removed it first. True if taken."""
    try:
        os.rename(path, path + ".expired")
    except FileNotFoundError:
        return False
    return True


def settle_leases(root: str, leased: list, log, now: float | None = None) -> list:
    """Of the leases ``[(sandbox data, lease end in epoch seconds)]``: forget those whose taker
    took the sandbox over, stop those that ended unclaimed, and return the others (still open)."""
    import time

    now = time.time() if now is None else now
    still_open = []
    for data, until in leased:
        path = record_path(root, data["id"])
        if now < until:
            if os.path.exists(path):
                still_open.append((data, until))
        elif claim_back(path):
            log.warning(f"VM cache: sandbox {data['id']} was handed out but never taken over; stopping it")
            stop_base_sandbox(data, root, log)
    return still_open


def status(endpoint: str, timeout: float = 2.0) -> dict:
    """The cache server's Status: ``{"pid": int, "ready": [{"pid", "cpu", "memory"}, ...]}``.
    Raises CacheError when nothing serves ``endpoint``."""
    from katapb import cache_pb2

    got = cache_pb2.GrpcStatus.FromString(_call(endpoint, STATUS, timeout))
    return {"pid": got.pid, "ready": [{"pid": v.pid, "cpu": v.cpu, "memory": v.memory} for v in got.vmStatus]}


def quit_server(endpoint: str, timeout: float = 2.0) -> None:
    """Ask the cache server on ``endpoint`` to stop (Quit). Raises CacheError when nothing serves it."""
    _call(endpoint, QUIT, timeout)


def _call(endpoint: str, method: str, timeout: float) -> bytes:
    """One call with an Empty request on a connection of its own; the encoded reply. Raises
    CacheError (nothing serves ``endpoint``, or the call failed)."""
    from kata_grpc.client import Channel, TransportError
    from kata_grpc.protocol import RpcError

    channel = Channel(endpoint, connect_timeout=timeout, user_agent=b"kata-runtime")
    try:
        return bytes(channel.unary(method, _empty(), timeout=timeout))
    except (TransportError, RpcError) as e:
        raise CacheError(f"no VM cache server on {endpoint} ({e})") from None
    finally:
        channel.close()


def locked(endpoint: str) -> bool:
    """True while a cache server holds ``<endpoint>.lock`` (it may not listen yet)."""
    import fcntl

    try:
        fd = os.open(endpoint + ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def serving(endpoint: str) -> bool:
    """True when something accepts connections on the unix socket ``endpoint``."""
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(1.0)
        sock.connect(endpoint)
        return True
    except OSError:
        return False
    finally:
        sock.close()


# ------------------------------------------------------- the cached sandboxes


def sandbox_pids(data: dict) -> list[int]:
    """Host pids of a started sandbox's processes and all their descendants: the guest (QEMU,
    or unshare and the agent below it) and kata-proxy."""
    found = []
    for rec in (data["hypervisor"].get("process"), data["proxy"].get("process")):
        if procs.alive(rec):
            found += procs.descendants(int(rec["pid"]))
    return found


def set_nice(pids, nice: int) -> bool:
    """Every thread of each process in ``pids``, and the autogroup of each one's session
    (procs.set_autogroup_nice: across sessions a task's own nice does not count), to ``nice``
    (a thread that ended meanwhile is skipped); False when not allowed (lowering nice needs
    CAP_SYS_NICE)."""
    for pid in pids:
        procs.set_autogroup_nice(pid, nice)
        for tid in procs.threads(pid):
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except ProcessLookupError:
                pass
            except PermissionError:
                return False
    return True


class _WarningsAsDebug:
    """A log whose warnings are debug records (the accelerator's fall-back, said once per server)."""

    def __init__(self, log):
        self.log = log

    def warning(self, msg: str, **fields) -> None:
        self.log.debug(msg, **fields)

    def __getattr__(self, name):
        return getattr(self.log, name)


def start_base_sandbox(config, root: str, server: dict, log, *, first: bool = True) -> dict:
    """Start one sandbox for the cache, in this thread: a new ``vmcache-`` id, its guest
    resolved (image, accelerator; its warnings only for the ``first``), runtime directory,
    guest and kata-proxy (no CreateSandbox, no pod network); recorded in ``records_dir(root)``
    with the ``server`` process record. Returns its Sandbox.data. Raises
    kata_runtime.errors.KataError (nothing left behind)."""
    import secrets

    from kata_runtime.sandbox import Sandbox, Undo
    from kata_runtime.state import remove_file, write_atomic

    sandbox = Sandbox.new(ID_PREFIX + secrets.token_hex(8), config)
    path = record_path(root, sandbox.id)
    os.makedirs(records_dir(root), mode=0o700, exist_ok=True)

    def save() -> None:
        write_atomic(path, cjson.dumps({"server": server, "sandbox": sandbox.data}))

    undo = Undo(log)
    undo.push(f"remove {path}", lambda: remove_file(path))
    try:
        save()
        sandbox.resolve_guest(root, log if first else _WarningsAsDebug(log))
        sandbox.prepare(undo)
        save()
        sandbox.boot(undo, log, save)
        save()
    except BaseException:
        undo.run()
        raise
    return sandbox.data


def stop_base_sandbox(data: dict, root: str, log) -> None:
    """Stop a sandbox the cache still holds (not handed out) and remove its record."""
    from kata_runtime.sandbox import Sandbox
    from kata_runtime.state import remove_file

    Sandbox(data).stop(log, force=True)
    remove_file(record_path(root, data["id"]))
    remove_file(record_path(root, data["id"]) + ".expired")


def clean_leftovers(root: str, log) -> tuple[list[str], list]:
    """What a server that is gone (killed before it could stop its sandboxes) left under
    ``records_dir(root)``: the sandboxes it held are stopped (their ids returned first), and
    the ones it had handed out whose lease is still open are returned second, as
    ``[(data, lease end)]`` for :func:`settle_leases` (their taker may be recording them).
    A live server's records are left alone."""
    directory = records_dir(root)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    cleaned, leased = [], []
    for name in names:
        if not name.endswith((".json", ".json.expired")):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                record = cjson.loads(f.read())
        except (OSError, ValueError):
            continue
        if procs.alive(record.get("server")):
            continue
        if "lease_until" in record and name.endswith(".json"):
            leased.append((record["sandbox"], record["lease_until"]))
            continue
        stop_base_sandbox(record["sandbox"], root, log)
        cleaned.append(record["sandbox"]["id"])
    return cleaned, leased


def wait_leases(root: str, leased: list, log, poll: float = 0.1) -> None:
    """Settle ``leased`` (:func:`settle_leases`) until none is open."""
    import time

    while leased:
        time.sleep(poll)
        leased = settle_leases(root, leased, log)


# ------------------------------------------------------------------ server


class CacheServer:
    """``factory init``: keep ``number`` sandboxes started and serve cache.CacheService on
    ``endpoint`` until SIGTERM, SIGINT or Quit (:meth:`run`).

    ``config``: the effective configuration (kata_runtime.config.Config); ``root``: the
    runtime's --root (records, the KVM probe cache); ``say``: one-line progress messages
    (``say(str)``); ``log``: kata_runtime.log.Log.
    """

    #: Seconds between the reaping of handed-out children, and the longest back-off after failures.
    REAP_INTERVAL = 1.0
    MAX_BACKOFF = 30.0

    def __init__(self, config, number: int, endpoint: str, root: str, log, say=lambda line: None,
                 lease: float = LEASE):
        import collections

        #: Seconds a handed-out sandbox may stay unclaimed (:data:`LEASE`).
        self.lease = lease
        self.config = config
        self.number = number
        self.endpoint = endpoint
        self.root = root
        self.log = log
        self.say = say
        self.ready: collections.deque[dict] = collections.deque()
        #: Sandboxes handed out whose taker has not removed the record yet: [(data, lease end)],
        #: the end in epoch seconds (recorded as the record's "lease_until").
        self.leased: list[tuple[dict, float]] = []
        self._tasks: set = set()
        #: pids of handed-out processes that are this server's children (reaped when they end).
        self.children: set[int] = set()
        self.server_record = procs.record(os.getpid())
        self._config_reply: bytes | None = None
        self._started_one = False

    # ---------------------------------------------------------------- run
    def run(self) -> None:
        """Serve until stopped; the held sandboxes are stopped on the way out. Raises CacheError
        (another server answers on the endpoint, the first sandbox cannot start, the socket
        cannot be made): nothing is left behind."""
        import asyncio

        lock = self._lock_endpoint()
        try:
            cleaned, leased = clean_leftovers(self.root, self.log)
            for sandbox_id in cleaned:
                self.say(f"VM cache: stopped sandbox {sandbox_id}, left by a server that was killed")
            self.leased += leased
            asyncio.run(self._main())
        finally:
            from kata_runtime.state import remove_file

            remove_file(self.endpoint + ".lock")
            os.close(lock)

    def _lock_endpoint(self) -> int:
        """An exclusive flock on ``<endpoint>.lock``, held while this server lives: a second
        server on the endpoint is refused even while the first still boots its first sandbox
        (before it listens). The file is removed when a server stops, so the lock taken must
        be on the file the path names now (else it is taken again). Returns the lock's fd.
        Raises CacheError."""
        import fcntl

        path = self.endpoint + ".lock"
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.endpoint)), exist_ok=True)
        except OSError as e:
            raise CacheError(f"VM cache: cannot use {self.endpoint}: {e.strerror or e}") from None
        for _ in range(10):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as e:
                raise CacheError(f"VM cache: cannot use {self.endpoint}: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise CacheError(f"a VM cache server already serves {self.endpoint}") from None
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # a stopping server removed it meanwhile: lock the file there now
        else:
            raise CacheError(f"VM cache: cannot lock {path}")
        if serving(self.endpoint):  # a server that does not take the lock file
            os.close(fd)
            raise CacheError(f"a VM cache server already serves {self.endpoint}")
        return fd

    async def _main(self) -> None:
        import asyncio
        import signal
        from concurrent.futures import ThreadPoolExecutor

        from kata_grpc.aio import serve_unix

        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._wanted = asyncio.Event()
        # One thread starts the sandboxes, at the lowest CPU priority (inherited by what it spawns).
        self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmcache-start",
                                           initializer=os.setpriority, initargs=(os.PRIO_PROCESS, 0, WAITING_NICE))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            try:
                self.ready.append(await self._start_one())
            except Exception as e:
                raise CacheError(f"VM cache: cannot start a sandbox: {e}") from None
            if not self._stop.is_set():
                await self._serve(serve_unix)
        finally:
            await self._stop_held()  # a second SIGTERM or ctrl-c meanwhile only sets _stop again
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self._starter.shutdown(wait=True)
        self.say("VM cache server stopped")

    async def _serve(self, serve_unix) -> None:
        """Listen, refill and reap until stopped; then stop listening."""
        import asyncio

        try:
            server = await serve_unix(self.endpoint, self._handlers())
        except OSError as e:
            raise CacheError(f"VM cache: cannot listen on {self.endpoint}: {e.strerror or e}") from None
        self.say(f"VM cache server serving {self.endpoint} ({self.number} sandboxes, "
                 f"hypervisor {self.config.hypervisor})")
        filling = asyncio.ensure_future(self._fill())
        reaping = asyncio.ensure_future(self._reap())
        await self._stop.wait()
        await server.close(grace=1.0)
        filling.cancel()
        reaping.cancel()
        await asyncio.gather(filling, reaping, return_exceptions=True)

    async def _start_one(self) -> dict:
        import asyncio
        import functools

        first, self._started_one = not self._started_one, True
        return await asyncio.get_running_loop().run_in_executor(
            self._starter, functools.partial(start_base_sandbox, self.config, self.root, self.server_record,
                                             self.log, first=first))

    async def _fill(self) -> None:
        """Start sandboxes while fewer than ``number`` are ready; back off after failures."""
        import asyncio

        failures = 0
        while True:
            if len(self.ready) >= self.number:
                self._wanted.clear()
                await self._wanted.wait()
                continue
            start = asyncio.ensure_future(self._start_one())
            try:
                data = await asyncio.shield(start)
            except asyncio.CancelledError:
                # Stopping: let the start finish (its thread cannot be interrupted), then stop it.
                try:
                    self.ready.append(await start)
                except Exception:  # noqa: BLE001 - it cleaned up after itself
                    pass
                raise
            except Exception as e:  # noqa: BLE001 - keep serving what is ready
                failures += 1
                delay = min(self.MAX_BACKOFF, 2.0 ** failures)
                self.log.error(f"VM cache: cannot start a sandbox: {e} (retrying in {delay:g} s)")
                await asyncio.sleep(delay)
                continue
            failures = 0
            self.ready.append(data)

    async def _reap(self) -> None:
        """Reap the handed-out processes that are this server's children, once they end."""
        import asyncio

        while True:
            await asyncio.sleep(self.REAP_INTERVAL)
            self.reap_children()
            if self.leased:
                self.leased = await asyncio.to_thread(settle_leases, self.root, self.leased, self.log)

    def _in_background(self, fn, *args) -> None:
        """``fn(*args)`` in a thread, its failure logged (the task is kept until it ends)."""
        import asyncio

        task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        self._tasks.add(task)

        def done(t) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.log.error(f"VM cache: {fn.__name__}: {t.exception()}")
        task.add_done_callback(done)

    def reap_children(self) -> None:
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)

    async def _stop_held(self) -> None:
        """Stop the ready sandboxes; wait for the open leases (a taker still recording its
        sandbox), stopping the sandboxes whose lease ends unclaimed."""
        import asyncio

        while self.ready:
            data = self.ready.popleft()
            await asyncio.to_thread(stop_base_sandbox, data, self.root, self.log)
        while self.leased:
            self.leased = await asyncio.to_thread(settle_leases, self.root, self.leased, self.log)
            if self.leased:
                await asyncio.sleep(0.1)

    # ----------------------------------------------------------- handlers
    def _handlers(self) -> dict:
        return {CONFIG: self._on_config, GET_BASE_VM: self._on_get_base_vm, STATUS: self._on_status,
                QUIT: self._on_quit}

    async def _on_config(self, request: bytes) -> bytes:
        from katapb import cache_pb2

        if self._config_reply is None:
            held = self.ready[0] if self.ready else None
            if held is None:
                from kata_grpc.protocol import UNAVAILABLE, RpcError

                raise RpcError(UNAVAILABLE, "no sandbox is ready")
            self._config_reply = cache_pb2.GrpcVMConfig(
                Data=cjson.dumps(wanted_config(held)).encode(),
                AgentConfig=cjson.dumps(self.config.section("agent.kata")).encode()).SerializeToString()
        return self._config_reply

    async def _on_get_base_vm(self, request: bytes) -> bytes:
        from kata_grpc.protocol import UNAVAILABLE, RpcError
        from katapb import cache_pb2

        data = self.hand_out()
        if data is None:
            raise RpcError(UNAVAILABLE, "no sandbox is ready")
        payload = {**data, RECORD_KEY: record_path(self.root, data["id"])}
        return cache_pb2.GrpcVM(
            id=data["id"], hypervisor=cjson.dumps(payload).encode(), proxyPid=data["proxy"]["process"]["pid"],
            proxyURL="unix://" + os.path.join(data["vm_dir"], "proxy.sock"), **guest_size(data),
        ).SerializeToString()

    def hand_out(self) -> dict | None:
        """The oldest ready sandbox whose processes still run, no longer held: leased (its record
        marked handed out, kept until the taker removes it, :func:`taken_over`; taken back after
        :data:`LEASE`), its processes back at nice 0 and its children remembered for reaping;
        the refill woken. None when none is ready (a dead one found on the way is stopped in a
        thread, not on the event loop)."""
        import asyncio
        import time

        from kata_runtime.state import write_atomic

        while self.ready:
            data = self.ready.popleft()
            self._wanted.set()
            dead = processes_dead_part(data)
            if dead is not None:
                self.log.warning(f"VM cache: sandbox {data['id']} ended while it waited ({dead}); "
                                 "stopping what is left")
                self._in_background(stop_base_sandbox, data, self.root, self.log)
                continue
            until = time.time() + self.lease
            try:
                write_atomic(record_path(self.root, data["id"]),
                             cjson.dumps({"server": self.server_record, "sandbox": data, "lease_until": until}))
            except OSError as e:
                self.ready.appendleft(data)
                raise CacheError(f"VM cache: cannot record the hand-out of sandbox {data['id']}: "
                                 f"{e.strerror or e}") from None
            self.leased.append((data, until))
            if not set_nice(sandbox_pids(data), 0):
                self.log.warning(f"VM cache: cannot set sandbox {data['id']} back to nice 0 (CAP_SYS_NICE); "
                                 f"it runs at nice {WAITING_NICE}")
            for rec in (data["hypervisor"]["process"], data["proxy"]["process"]):
                self.children.add(int(rec["pid"]))
            return data
        return None

    async def _on_status(self, request: bytes) -> bytes:
        from katapb import cache_pb2

        reply = cache_pb2.GrpcStatus(pid=os.getpid())
        for data in self.ready:
            reply.vmStatus.add(pid=data["hypervisor"]["process"]["pid"], **guest_size(data))
        return reply.SerializeToString()

    async def _on_quit(self, request: bytes) -> bytes:
        self._stop.set()
        return b""
