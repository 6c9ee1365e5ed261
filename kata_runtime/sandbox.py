"""A sandbox's host side: its guest (hypervisor driver), kata-proxy and shared directory.

Each sandbox has a state directory under --root (``sandboxes/<id>/sandbox.json``, see
kata_runtime.state) and a runtime directory whose path always fits a unix socket
address: ``/run/vc/vm/<id>/`` as in Kata 1.x (containerd passes long roots and 64-hex
ids; an id too long for it gets a hashed name)::

    /run/vc/vm/<id>/kata.sock      agent channel (the driver's; kata-proxy --mux-socket)
    /run/vc/vm/<id>/proxy.sock     kata-proxy --listen-socket: the runtime and shims connect here
    /run/vc/vm/<id>/shared/        9p "kataShared": <container id>/rootfs bind-mounted from the bundle,
                                   <container id>-<16 hex>-<name> from the spec's binds (kata_runtime.mounts)
    /run/vc/vm/<id>/console.log    guest console;  proxy.log, shim.log: component logs
    /run/vc/vm/<id>/console.sock   QEMU only: the console as a socket, kata-proxy's -agent-logs-socket

Before anything starts (``resolve_guest``): the driver's settings are made concrete (QEMU: the
guest image files and the accelerator, ``auto`` probed) and recorded. Start order
(``start``): kata-proxy and the hypervisor together (the proxy retries the channel socket
until the guest listens), CreateSandbox with the 9p Storage (as the original runtime sends
it) and the sandbox shm's "ephemeral" one (a guest tmpfs of ``shm_size`` bytes). Stop order (``stop``): DestroySandbox (the agent removes every container and syncs),
the hypervisor (QEMU: QMP quit, then SIGKILL), the pod network, kata-proxy, unmount what is
still mounted in the shared dir, remove the runtime directory.

A pod is one sandbox holding several containers: the one that made it (its id is the
sandbox's) and the ones that joined it (kata_runtime.pod). The first container's rootfs (and
the host files and directories its spec binds, kata_runtime.mounts) is bind-mounted into the
shared dir BEFORE the hypervisor starts; a joining container's rootfs (and binds) is bind-mounted into the running sandbox's shared dir (a VM sees it live through 9p) and,
for the process sandbox, whose agent has a private copy of the host's mounts taken when it
started, also carried into the agent's mount namespace (kata_runtime.nsmount).
"""

from __future__ import annotations

import os

from kata_runtime import procs
from kata_runtime.errors import KataError, StepError

VM_ROOT = "/run/vc/vm"
CHANNEL_SOCKET = "kata.sock"
PROXY_SOCKET = "proxy.sock"
#: Socket names a driver may make in the runtime directory (QEMU adds console.sock).
SOCKET_NAMES = (CHANNEL_SOCKET, PROXY_SOCKET, "console.sock")
UNIX_PATH_MAX = 107
SHARED_STORAGE_SOURCE = "kataShared"
DESTROY_TIMEOUT = 10.0
#: Longest wait of one readiness probe of the agent (the driver bounds the whole wait).
READY_PROBE_TIMEOUT = 300.0


def vm_dir_for(sandbox_id: str, vm_root: str = VM_ROOT) -> str:
    """The sandbox's runtime directory: ``<vm_root>/<id>``, or ``<vm_root>/h-<sha256[:32]>``
    when the id is too long for its sockets. KataError if even that does not fit."""
    longest = max(SOCKET_NAMES, key=len)
    path = os.path.join(vm_root, sandbox_id)
    if len(os.fsencode(os.path.join(path, longest))) > UNIX_PATH_MAX:
        import hashlib

        path = os.path.join(vm_root, "h-" + hashlib.sha256(sandbox_id.encode()).hexdigest()[:32])
    if len(os.fsencode(os.path.join(path, longest))) > UNIX_PATH_MAX:
        raise KataError(f"sandbox socket path {os.path.join(path, longest)} is longer than a unix socket "
                        f"address allows ({UNIX_PATH_MAX} bytes)")
    return path


def shared_storage() -> bytes:
    """CreateSandbox's Storage for the 9p share, exactly as the original runtime sends it (encoded)."""
    from kata_oci import GUEST_SHARED_DIR
    from kata_runtime.agent import storage

    return storage("9p", SHARED_STORAGE_SOURCE, "9p", ["trans=virtio,version=9p2000.L,cache=mmap", "nodev"],
                   GUEST_SHARED_DIR)


def sandbox_shm_storage(size: int):
    """CreateSandbox's Storage for the sandbox's shared memory: a guest tmpfs of ``size`` bytes at
    kata_oci.GUEST_SANDBOX_SHM, where the containers' /dev/shm binds point (Kata 1.x's
    "ephemeral" shm Storage, kata_agent.go startSandbox); encoded."""
    from kata_oci import GUEST_SANDBOX_SHM
    from kata_runtime import mounts
    from kata_runtime.agent import storage

    return storage("ephemeral", "shm", "tmpfs", [*mounts.SHM_OPTIONS, f"size={size}"], GUEST_SANDBOX_SHM)


def _import_agent_client() -> None:
    """What the first agent call needs (kata_grpc's client), imported while the guest starts."""
    from kata_grpc import client  # noqa: F401
    from kata_runtime import agent  # noqa: F401


def _run(coroutine):
    """asyncio.run(coroutine), asyncio imported only now (a driver's stop)."""
    import asyncio

    return asyncio.run(coroutine)


class Undo:
    """Clean-up actions of a command in progress, run newest first if it fails."""

    def __init__(self, log):
        self.log = log
        self.actions: list[tuple[str, object]] = []

    def push(self, what: str, action) -> None:
        self.actions.append((what, action))

    def run(self) -> None:
        """Run every action (newest first); a failing one is logged and the others still run."""
        while self.actions:
            what, action = self.actions.pop()
            try:
                action()
            except Exception as e:  # noqa: BLE001 - keep cleaning
                self.log.warning(f"clean-up after a failed command: {what}: {e}")


class Sandbox:
    """One sandbox, as recorded in its sandbox.json (``data``)."""

    def __init__(self, data: dict):
        self.data = data
        #: kata_runtime.network.PodNetwork while this process connects the pod network (create).
        self.pod_network = None

    @classmethod
    def new(cls, sandbox_id: str, config) -> "Sandbox":
        """A sandbox not started yet, from the effective configuration (kata_runtime.config.Config)."""
        return cls({
            "id": sandbox_id,
            "vm_dir": vm_dir_for(sandbox_id),
            "hypervisor": {"kind": config.hypervisor, "settings": config.hypervisor_section,
                           "debug": bool(config.section("agent.kata")["enable_debug"]), "process": None},
            "proxy": {"settings": config.section("proxy.kata"), "process": None},
            "shim": {"settings": config.section("shim.kata")},
            "containers": [],
            "status": "creating",
        })

    # ------------------------------------------------------------- layout
    @property
    def id(self) -> str:
        return self.data["id"]

    @property
    def vm_dir(self) -> str:
        return self.data["vm_dir"]

    @property
    def guest_id(self) -> str:
        """The id the guest was started with: the sandbox's, or the cached sandbox's it took
        (kata_runtime.vmcache: its runtime directory and processes keep that id)."""
        return self.data["hypervisor"].get("guest_id") or self.id

    @property
    def channel_socket(self) -> str:
        return os.path.join(self.vm_dir, CHANNEL_SOCKET)

    @property
    def proxy_socket(self) -> str:
        return os.path.join(self.vm_dir, PROXY_SOCKET)

    @property
    def shared_dir(self) -> str:
        return os.path.join(self.vm_dir, "shared")

    @property
    def proxy_log(self) -> str:
        return os.path.join(self.vm_dir, "proxy.log")

    @property
    def shim_log(self) -> str:
        return os.path.join(self.vm_dir, "shim.log")

    @property
    def shim_settings(self) -> dict:
        return self.data["shim"]["settings"]

    def rootfs_mount(self, container_id: str) -> str:
        """Where a container's rootfs is bind-mounted: ``<shared>/<id>/rootfs``."""
        return os.path.join(self.shared_dir, container_id, "rootfs")

    # ------------------------------------------------------------- liveness
    def dead_part(self) -> str | None:
        """None while the guest and kata-proxy run, else which one is gone (cheap: /proc reads)."""
        from kata_runtime.status import sandbox_dead_part

        return sandbox_dead_part(self.data)

    def driver(self):
        """The hypervisor driver object for this sandbox (it can stop a guest another process started)."""
        from kata_runtime.hypervisor import driver

        hv = self.data["hypervisor"]
        guest = driver(hv["kind"]).from_config(self.vm_dir, self.guest_id, hv["settings"], hv["debug"])
        if getattr(self, "pod_network", None) is not None:
            guest.attach_network(self.pod_network)
        return guest

    def agent(self):
        """A kata_runtime.agent.Agent on this sandbox's proxy socket (kata_grpc, no grpcio)."""
        from kata_runtime.agent import Agent

        return Agent(self.proxy_socket)

    @property
    def members(self) -> list[str]:
        """Ids of the containers in this sandbox (the sandbox container's first)."""
        return list(self.data.get("containers", []))

    def resolve_guest(self, probe_cache_dir: str | None, log) -> None:
        """Make the driver's settings concrete before anything starts, if its driver needs to
        (``resolve_settings``; QEMU: the guest image files and the accelerator, probing KVM
        for ``auto`` with the verdict cached in ``probe_cache_dir``, one warning on a fall-back
        to TCG). Raises HypervisorError (one line)."""
        from kata_runtime.hypervisor import driver

        hv = self.data["hypervisor"]
        resolve = getattr(driver(hv["kind"]), "resolve_settings", None)
        if resolve is not None:
            hv["settings"] = resolve(hv["settings"], probe_cache_dir=probe_cache_dir, warn=log.warning)

    # ------------------------------------------------------------- create
    def prepare(self, undo: Undo) -> None:
        """Make the runtime directory and its shared dir; refuses one that already exists."""
        from kata_runtime import mounts

        os.makedirs(os.path.dirname(self.vm_dir), mode=0o755, exist_ok=True)
        try:
            os.mkdir(self.vm_dir, 0o750)
        except FileExistsError:
            raise KataError(f"sandbox runtime directory {self.vm_dir} already exists (a sandbox with id "
                            f"{self.id} runs under another --root, or a crashed one left it)") from None
        undo.push(f"remove {self.vm_dir}", lambda: mounts.remove_tree(self.vm_dir))
        os.mkdir(self.shared_dir, 0o755)

    def share_rootfs(self, container_id: str, rootfs: str, undo: Undo) -> None:
        """Bind-mount a bundle's rootfs to ``<shared>/<id>/rootfs`` (before the guest starts)."""
        from kata_runtime import mounts

        target = self.rootfs_mount(container_id)
        os.makedirs(target, mode=0o755)
        undo.push(f"remove {os.path.dirname(target)}", lambda: mounts.remove_tree(os.path.dirname(target)))
        mounts.bind_mount(rootfs, target)
        undo.push(f"unmount {target}", lambda: mounts.unmount(target))

    def share_rootfs_running(self, container_id: str, rootfs: str, undo: Undo) -> None:
        """A joining container's rootfs, with the guest running: bind-mounted to
        ``<shared>/<id>/rootfs`` (a VM sees it live through 9p) and, for the process sandbox,
        also mounted at the guest path inside the agent's mount namespace (kata_runtime.nsmount).
        Raises KataError / MountError; ``undo`` gets the reverse steps."""
        from kata_oci import guest_rootfs

        from kata_runtime import nsmount

        self.share_rootfs(container_id, rootfs, undo)
        pid = self._private_mounts_pid()
        if pid is None:
            return
        target = guest_rootfs(container_id)
        nsmount.bind_into(pid, self.rootfs_mount(container_id), target)
        undo.push(f"unmount {target} in the agent's mount namespace", lambda: nsmount.unmount_in(pid, target))

    def unshare_rootfs(self, container_id: str) -> None:
        """Undo `share_rootfs[_running]` for a container leaving a running sandbox: unmount its
        rootfs (in the process sandbox's agent namespace too) and remove ``<shared>/<id>``."""
        from kata_oci import guest_rootfs

        from kata_runtime import mounts, nsmount

        pid = self._private_mounts_pid(required=False)
        if pid is not None:
            nsmount.unmount_in(pid, guest_rootfs(container_id))
        directory = os.path.join(self.shared_dir, container_id)
        mounts.unmount(directory)
        mounts.remove_tree(directory)

    # ------------------------------------------------- the spec's host mounts
    @property
    def shm_size(self) -> int:
        """Bytes of the sandbox's guest shm (0: a sandbox made before it had one)."""
        return int(self.data.get("shm_size") or 0)

    def storages(self) -> list:
        """CreateSandbox's Storages: the 9p share, and the sandbox shm when it has a size."""
        shm = [sandbox_shm_storage(self.shm_size)] if self.shm_size else []
        return [shared_storage(), *shm]

    def share_mounts(self, shares: list[dict], undo: Undo) -> None:
        """Bind-mount each kata_runtime.mounts.plan_shares entry's host source into the shared dir
        (kata_runtime.mounts.share), before the guest starts. ``undo`` gets the reverse steps."""
        from kata_runtime import mounts

        for entry in shares:
            path = mounts.share(entry, self.shared_dir)
            undo.push(f"unmount {path}", lambda path=path: mounts.unshare(path))

    def share_mounts_running(self, shares: list[dict], undo: Undo) -> None:
        """`share_mounts` for a container joining the running sandbox; for the process sandbox,
        whose agent's mount namespace host mounts made now do not reach, each is also carried
        to its guest path there (kata_runtime.nsmount). Raises KataError / MountError."""
        from kata_oci import guest_shared_path

        from kata_runtime import nsmount

        self.share_mounts(shares, undo)
        pid = self._private_mounts_pid() if shares else None
        if pid is None:
            return
        for entry in shares:
            target = guest_shared_path(entry["name"])
            nsmount.bind_into(pid, os.path.join(self.shared_dir, entry["name"]), target)
            undo.push(f"unmount {target} in the agent's mount namespace",
                      lambda target=target: nsmount.unmount_in(pid, target))

    def unshare_mounts(self, shares: list[dict]) -> None:
        """Undo `share_mounts[_running]` for a container leaving the running sandbox: each entry
        unmounted (in the process sandbox's agent namespace too) and its mount point removed.
        Every entry is tried; the first failure is raised after (MountError / OSError)."""
        from kata_oci import guest_shared_path

        from kata_runtime import mounts, nsmount

        pid = self._private_mounts_pid(required=False) if shares else None
        failed = None
        for entry in shares:
            try:
                if pid is not None:
                    nsmount.unmount_in(pid, guest_shared_path(entry["name"]))
                mounts.unshare(os.path.join(self.shared_dir, entry["name"]))
            except OSError as e:
                failed = failed or e
        if failed is not None:
            raise failed

    def _private_mounts_pid(self, required: bool = True) -> int | None:
        """Host pid of the agent when it has a mount namespace of its own that host mounts do not
        reach (the process sandbox), else None (a VM reads the shared dir through 9p).
        ``required``: a process sandbox whose agent is gone raises KataError."""
        if self.data["hypervisor"]["kind"] != "process":
            return None
        pid = self.driver().agent_pid()
        if pid is None and required:
            raise KataError(f"sandbox {self.id}: the process sandbox's agent is not running")
        return pid

    def start(self, undo: Undo, hostname: str, log, save=lambda: None) -> None:
        """Start the guest, kata-proxy and CreateSandbox. Raises StepError naming the step.

        ``save()`` is called after each process is recorded, so that a runtime killed
        half-way leaves records ``delete --force`` can clean up from."""
        self.boot(undo, log, save)
        self.create_in_agent(hostname)

    def adopt(self, base: dict, undo: Undo) -> None:
        """Take over a sandbox started ahead of time (kata_runtime.vmcache.take: a cached
        sandbox's record, guest and kata-proxy running, no CreateSandbox yet): its runtime
        directory, guest (recorded with its own id, ``guest_id``) and kata-proxy become this
        sandbox's. ``undo`` gets their stop. Then `create_in_agent`, and the rootfs is shared
        as into any running sandbox (``share_rootfs_running``)."""
        from kata_runtime import mounts
        from kata_runtime import proxy as kproxy

        self.data["vm_dir"] = base["vm_dir"]
        self.data["hypervisor"] = {**base["hypervisor"], "guest_id": base["hypervisor"].get("guest_id") or base["id"]}
        self.data["proxy"] = base["proxy"]
        # Undone newest first, in `stop`'s order: the guest, kata-proxy, the shared dir, the directory.
        undo.push(f"remove {self.vm_dir}", lambda: mounts.remove_tree(self.vm_dir))
        undo.push(f"unmount {self.shared_dir}", lambda: mounts.unmount(self.shared_dir))
        undo.push("stop kata-proxy", lambda: kproxy.stop(self.data["proxy"]["process"]))
        undo.push("stop the hypervisor", self._stop_guest)

    def boot(self, undo: Undo, log, save=lambda: None) -> None:
        """The pod network connected, the guest and kata-proxy started, the agent answering;
        no CreateSandbox (a sandbox the VM cache holds stops here). Raises StepError."""
        self._connect_pod_network(undo, save)
        try:
            guest = self.driver()
            if hasattr(guest, "spawn"):
                self._boot_spawned(guest, undo, log, save)
            else:
                self._boot_in_loop(guest, undo, log, save)
        finally:
            if self.pod_network is not None:
                self.pod_network.close_fds()  # the hypervisor holds its own copies

    def create_in_agent(self, hostname: str) -> None:
        """CreateSandbox in the started guest (the pod network configured in it first, when
        there is one); the sandbox is "running" after it. Raises StepError."""
        with self.agent() as agent:
            if self.pod_network is not None:
                try:
                    self.pod_network.configure_guest(agent)
                except Exception as e:
                    raise StepError("connecting the guest to the pod network", e) from None
            try:
                agent.create_sandbox(self.id, hostname, self.storages(),
                                     dns=self.pod_network.dns if self.pod_network is not None else ())
            except Exception as e:
                raise StepError("creating the sandbox in the agent (CreateSandbox)", e) from None
        self.data["status"] = "running"

    def _boot_in_loop(self, guest, undo: Undo, log, save) -> None:
        """`_boot` in an event loop (a driver whose guest boots: QEMU), the agent client
        imported in a thread meanwhile."""
        import asyncio  # here, not at import: commands that only talk to the agent never need it
        import threading

        threading.Thread(target=_import_agent_client, daemon=True).start()
        asyncio.run(self._boot(guest, undo, log, save))

    def _boot_spawned(self, guest, undo: Undo, log, save) -> None:
        """A driver that spawns its guest and then waits for it without an event loop (``spawn``,
        ``wait_spawned``: the process sandbox): the agent first (its start is the longest),
        kata-proxy beside it, the agent client imported while both start, then each one's
        readiness (woken by its ready pipe or notify socket). No asyncio. Raises StepError."""
        from kata_runtime import proxy as kproxy

        hv = self.data["hypervisor"]
        try:
            guest.spawn()
        except Exception as e:
            raise StepError(f"starting the sandbox's {hv['kind']} hypervisor", e) from None
        undo.push("stop the hypervisor", self._stop_guest)
        hv["process"] = procs.record(guest.pid)
        save()
        proxy = self._spawn_proxy(guest, undo, save)
        _import_agent_client()
        try:
            guest.wait_spawned()
        except Exception as e:
            proxy.stop()
            raise StepError(f"starting the sandbox's {hv['kind']} hypervisor", e) from None
        log.debug("hypervisor started", sandbox=self.id, pid=guest.pid)
        try:
            proxy.wait_ready(kproxy.READY_TIMEOUT)
        except Exception as e:
            raise StepError("starting kata-proxy", e) from None
        log.debug("kata-proxy started", sandbox=self.id, pid=proxy.record["pid"])

    def _spawn_proxy(self, guest, undo: Undo, save):
        """Spawn kata-proxy (not waited for) and record it; its kata_runtime.proxy.Starting.
        Raises StepError."""
        from kata_runtime import proxy as kproxy

        try:
            proxy = kproxy.Starting(self.data["proxy"]["settings"], self.id, self.channel_socket,
                                    self.proxy_socket, self.proxy_log,
                                    agent_logs_socket=getattr(guest, "console_socket_path", None))
        except Exception as e:
            raise StepError("starting kata-proxy", e) from None
        undo.push("stop kata-proxy", lambda: kproxy.stop(self.data["proxy"]["process"]))
        self.data["proxy"]["process"] = proxy.record
        save()
        return proxy

    def _connect_pod_network(self, undo: Undo, save) -> None:
        """The spec's network namespace (``data["network"]``, kata_runtime.network.plan): scan it and,
        for a VM, tap each veth (tcfilter); the process sandbox joins the namespace instead."""
        from kata_runtime import network as knet

        record = self.data.get("network")
        self.pod_network = knet.PodNetwork(record) if record else None
        if self.pod_network is None:
            return
        undo.push("disconnect the pod network", lambda: knet.detach(self.data.get("network")))
        try:
            self.pod_network.attach(taps=self.data["hypervisor"]["kind"] != "process")
        except Exception as e:
            raise StepError(f"connecting the pod network {self.pod_network.path}", e) from None
        finally:
            save()

    async def _boot(self, guest, undo: Undo, log, save) -> None:
        """kata-proxy and the hypervisor started together (the proxy retries the channel
        socket until the guest listens), then the driver's wait for the agent. One event
        loop: a driver may keep loop-bound state between start() and wait_ready()."""
        import asyncio
        import threading

        from kata_runtime import proxy as kproxy

        hv = self.data["hypervisor"]
        proxy = self._spawn_proxy(guest, undo, save)
        abort = threading.Event()
        proxy_ready = asyncio.ensure_future(asyncio.to_thread(proxy.wait_ready, kproxy.READY_TIMEOUT, abort))
        try:
            await guest.start()
        except Exception as e:
            abort.set()
            await asyncio.gather(proxy_ready, return_exceptions=True)
            raise StepError(f"starting the sandbox's {hv['kind']} hypervisor", e) from None
        undo.push("stop the hypervisor", lambda: _run(self.driver().stop()))
        hv["process"] = procs.record(guest.pid)
        save()
        log.debug("hypervisor started", sandbox=self.id, pid=guest.pid)
        try:
            await proxy_ready
        except Exception as e:
            raise StepError("starting kata-proxy", e) from None
        log.debug("kata-proxy started", sandbox=self.id, pid=proxy.record["pid"])
        try:
            waited = await guest.wait_ready(self._probe)
        except Exception as e:
            raise StepError("waiting for the agent to answer", e) from None
        log.debug("agent ready", sandbox=self.id, waited=waited)

    async def _probe(self) -> None:
        """The driver's readiness probe: one Health Check through kata-proxy, answered once the
        agent serves (kata_runtime.agent.check_ready: on the event loop, no thread; when the
        driver gives up and cancels it, the connection is closed at once). Raises AgentError."""
        from kata_runtime.agent import check_ready

        await check_ready(self.proxy_socket, READY_PROBE_TIMEOUT)

    # --------------------------------------------------------------- stop
    def stop(self, log, *, force: bool) -> None:
        """DestroySandbox (if the agent answers), stop the hypervisor and kata-proxy, unmount,
        remove the runtime directory. ``force``: go on past a failing step (logged); else raise."""
        from kata_runtime import mounts
        from kata_runtime import proxy as kproxy

        steps = [
            ("destroying the sandbox in the agent (DestroySandbox)", self._destroy_in_agent),
            ("stopping the hypervisor", self._stop_guest),
            ("disconnecting the pod network", self._disconnect_pod_network),
            ("stopping kata-proxy", lambda: kproxy.stop(self.data["proxy"]["process"])),
            (f"unmounting {self.shared_dir}", lambda: mounts.unmount(self.shared_dir)),
            (f"removing {self.vm_dir}", lambda: mounts.remove_tree(self.vm_dir)),
        ]
        for what, step in steps:
            try:
                step()
            except Exception as e:  # noqa: BLE001
                if not force:
                    raise StepError(what, e) from None
                log.warning(f"delete --force: {what}: {e}")
        self.data["status"] = "stopped"

    def _stop_guest(self) -> None:
        """The driver's stop: without an event loop where it has one (``stop_now``: the process
        sandbox), else its coroutine in asyncio.run."""
        guest = self.driver()
        stop_now = getattr(guest, "stop_now", None)
        if stop_now is not None:
            stop_now()
        else:
            _run(guest.stop())

    def _disconnect_pod_network(self) -> None:
        if self.data.get("network"):
            from kata_runtime import network as knet

            knet.detach(self.data["network"])

    def _destroy_in_agent(self) -> None:
        if self.data.get("status") != "running" or self.dead_part() is not None:
            return  # nothing to ask (never started, or gone)
        from kata_runtime.agent import Agent

        with Agent(self.proxy_socket, timeout=DESTROY_TIMEOUT) as agent:
            agent.destroy_sandbox()
