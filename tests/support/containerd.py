"""A containerd of the test's own, driven with the real ``ctr``: nothing mocked, nothing shared.

    cd = Containerd.start()                         # /tmp/krXXXXXXXX/{config.toml,root,state,c.sock}
    cd.import_image(image_tar)                      # ctr image import
    res = cd.run(image, "c1", ["echo", "hi"])       # ctr run --rm ... -> CompletedProcess (bytes)
    res, out, err = cd.run_logged(image, "c2", cmd, runtime=str(KATA_RUNTIME))  # every byte, see there
    rc, out, err = run_with_stdin(cd, image, "c3", ["wc", "-c"], b"data")     # stdin and its EOF
    cd.wait_clean(["c1", "c2"])                     # {} once those containers left no trace
    cd.run_detached(image, "c4", SLEEPER); cd.task_pids("c4")   # ctr run -d; ctr task ps
    rc, screen = exec_tty(cd, "c4", "t1")           # ctr task exec --tty on a pty (see TTY below)
    cd.stop()                                       # kills what it started, unmounts, removes the dir

Isolation: every path containerd, the shims and the runtime write to is under one short temp dir
(``root``, ``state``, the grpc/ttrpc sockets, ctr's fifos, the runc/kata ``--root``), except:
the shim's socket, which containerd 1.6 always puts in ``/run/containerd/s/<sha256(address/ns/
id)>`` (removed here when a killed shim left it behind); the containers' cgroups
(``/sys/fs/cgroup/<controller>/<namespace>/<id>``, removed by the runtime; the namespace level is
removed here); kata-runtime's sandbox dirs ``/run/vc/vm/<id>`` (removed by it; here only for ids
this harness ran, every id carrying a random suffix). Only processes this module started are
signalled, by pid: the daemon; the shims (``-address <our socket>`` on their command line) and
their descendants; processes naming our temp dir or one of our sandbox dirs, and theirs.

Waits are bounded: every ``ctr`` call has a timeout (the process is killed when it expires:
:class:`subprocess.TimeoutExpired` is raised), the daemon must answer ``ctr version`` within
``timeout`` seconds (:class:`ContainerdError` otherwise, with its log's tail).
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

CONTAINERD = "containerd"
KATA_RUNTIME = Path(sys.executable).with_name("kata-runtime")  # the venv's console script
CTR = "ctr"
SHIM_SOCKET_DIR = "/run/containerd/s"
KATA_VM_ROOT = "/run/vc/vm"  # kata-runtime's per-sandbox runtime dirs (sandbox id = container id)
CGROUP_ROOT = "/sys/fs/cgroup"
DISABLED_PLUGINS = (
    "io.containerd.grpc.v1.cri", "io.containerd.internal.v1.opt",
    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
)
MNT_DETACH = 2
# containerd's binary logging protocol: fd 3 = the container's stdout, fd 4 = its stderr, fd 5 =
# "ready" (closed here before anything else); the URI's query arrives as "key value" argument
# pairs in any order; SIGTERM (sent by the shim at delete) is ignored so both pipes are drained.
LOGGER_SCRIPT = """#!/bin/sh
trap '' TERM
exec 5>&-
while [ $# -gt 1 ]; do
  case "$1" in out) out=$2 ;; err) err=$2 ;; esac
  shift 2
done
cat <&3 >"$out.part" &
a=$!
cat <&4 >"$err.part" &
b=$!
exec 3<&- 4<&-
wait $a
wait $b
mv "$out.part" "$out"
mv "$err.part" "$err"
"""


#: A container init with three processes (sh and two sleeps) that runs until it is killed.
SLEEPER = ["sh", "-c", "sleep 1000 & sleep 1000 & wait"]

# ---------------------------------------------------------------- output of an exact size
PATTERN = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_kata\n"  # 67 bytes
#: Sizes around powers of two up to 16 MiB (the last buffer before exit is the one lost).
SIZES = (1, 4095, 4096, 4097, 65535, 65536, 65537, (1 << 20) - 1, 1 << 20, (1 << 20) + 1,
         (1 << 24) - 1, 1 << 24, (1 << 24) + 1)


def expected(size: int) -> bytes:
    """The first ``size`` bytes of ``yes <PATTERN without newline>``."""
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def write_size(size: int, stream: str = "out") -> str:
    """A shell command writing :func:`expected` (``size``) to stdout (``out``) or stderr (``err``)."""
    return f"yes {PATTERN[:-1].decode()} | head -c {size}" + (" >&2" if stream == "err" else "")


# ---------------------------------------------------------------- TTY
def wait_size(rows: int, cols: int) -> str:
    """A shell fragment polling until the terminal is ``rows`` x ``cols`` (ctr 1.6 resizes after
    start, so the first instruction may see 0 0 even with runc), bounded to 5 s."""
    return (f'i=0; while [ "$(stty size 2>/dev/null)" != "{rows} {cols}" ] && [ $i -lt 100 ]; '
            'do i=$((i+1)); sleep 0.05; done; ')


#: ``ctr run --tty`` on a 33 x 101 pty: reports the size and the tty, reads a line, waits for the
#: resize to 40 x 120, reports it and exits 7.
RUN_TTY_SCRIPT = (wait_size(33, 101) + 'echo "size:$(stty size)"; tty; echo ready; read line; '
                  'echo "got:$line"; ' + wait_size(40, 120) + 'echo "resized:$(stty size)"; exit 7')
#: ``ctr task exec --tty`` on a 30 x 90 pty: reports the size, reads a line, exits 3.
EXEC_TTY_SCRIPT = wait_size(30, 90) + 'echo "size:$(stty size)"; echo ready; read line; echo "got:$line"; exit 3'


class ContainerdError(RuntimeError):
    """containerd did not start, or a ctr call that had to succeed failed."""


def missing_requirements() -> str | None:
    """Why the reaper tier cannot run here (a one-line reason), or None."""
    from tests.support.requirements import missing

    return missing(root="the reaper tier needs root (containerd, mounts, cgroups)",
                   tools=(CONTAINERD, CTR, "containerd-shim-runc-v2", "runc"), tool_hint="apt-get install containerd runc")


@functools.cache
def kata_runtime_missing() -> str | None:
    """Why the venv's kata-runtime (KATA_RUNTIME) cannot be used yet (one line), or None."""
    if not KATA_RUNTIME.exists():
        return f"{KATA_RUNTIME} not installed (pip install -e .)"
    try:
        res = subprocess.run([str(KATA_RUNTIME), "--version"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "kata-runtime --version did not answer within 60 s"
    if res.returncode != 0:
        return f"kata-runtime CLI not built yet: {(res.stderr or res.stdout).strip()[:200]}"
    return None


def config_toml(base: Path) -> str:
    """containerd's config (version 2): everything under ``base``, CRI and the unused plugins off."""
    disabled = ", ".join(f'"{p}"' for p in DISABLED_PLUGINS)
    return (f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
            f'disabled_plugins = [{disabled}]\n\n'
            f'[grpc]\n  address = "{base}/c.sock"\n\n[ttrpc]\n  address = "{base}/c.sock.ttrpc"\n\n'
            f'[debug]\n  address = ""\n  level = "info"\n\n[metrics]\n  address = ""\n')


def new_id(prefix: str) -> str:
    """A container id unique in this session: ``<prefix>-<6 hex>``."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def shim_socket_path(address: str, namespace: str, cid: str) -> str:
    """Where containerd 1.6 puts a task's shim socket: /run/containerd/s/<sha256 of address/ns/id>."""
    digest = hashlib.sha256(os.path.join(address, namespace, cid).encode()).hexdigest()
    return os.path.join(SHIM_SOCKET_DIR, digest)


# ---------------------------------------------------------------- /proc helpers

def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2:].split()
    return None if fields[0] == b"Z" else int(fields[1])  # a zombie has nothing left to kill


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(roots: list[int]) -> list[int]:
    """Every live process below ``roots`` (pids; the roots themselves excluded)."""
    children: dict[int, list[int]] = {}
    for pid in all_pids():
        ppid = _ppid(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pids_mentioning(text: str, exclude: set[int] = frozenset()) -> list[int]:
    """Live (non-zombie) processes whose command line contains ``text``."""
    me = os.getpid()
    return [pid for pid in all_pids() if pid != me and pid not in exclude and _ppid(pid) is not None
            and any(text in arg for arg in _cmdline(pid))]


def kill_pids(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive (zombies count as gone); returns those still alive."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _ppid(p) is not None]
        if alive:
            time.sleep(0.05)
    return alive


def mounts_under(base: Path) -> list[str]:
    """Mount points at or below ``base`` in this mount namespace, deepest first."""
    prefix = str(base).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_all(points: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for point in points:
        libc.umount2(point.encode(), MNT_DETACH)


def cgroup_dirs(namespace: str) -> list[str]:
    """The cgroup directories containerd's ``/<namespace>/<id>`` paths made, deepest first."""
    found = []
    for controller in os.listdir(CGROUP_ROOT):
        top = os.path.join(CGROUP_ROOT, controller, namespace)
        if os.path.isdir(top):
            for dirpath, _dirs, _files in os.walk(top):
                found.append(dirpath)
    return sorted(found, key=len, reverse=True)


# ---------------------------------------------------------------- the daemon

@dataclass
class Containerd:
    base: Path  # the one temp dir
    namespace: str  # the containerd namespace every ctr call uses
    popen: subprocess.Popen | None = None
    log_path: Path = field(init=False)
    started_cids: set[str] = field(default_factory=set)
    kept: set[str] = field(default_factory=set)  # ids a per-test clean-up leaves (a module's shared task)
    _created_run_dirs: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.log_path = self.base / "containerd.log"

    # -- paths
    @property
    def address(self) -> str:
        return str(self.base / "c.sock")

    @property
    def runtime_root(self) -> str:
        """The ``--root`` the shim gives runc (or kata-runtime): ``ctr run --runc-root``."""
        return str(self.base / "rt")

    @property
    def fifo_dir(self) -> str:
        return str(self.base / "fifo")

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    # -- life cycle
    @classmethod
    def start(cls, *, namespace: str | None = None, timeout: float = 30.0) -> "Containerd":
        """A new temp dir and a containerd in it, answering ``ctr version`` (ContainerdError if not)."""
        base = Path(tempfile.mkdtemp(prefix="kr", dir="/tmp"))
        cd = cls(base, namespace or f"kr{uuid.uuid4().hex[:8]}")
        for run_dir in ("/run/containerd", SHIM_SOCKET_DIR):
            if not os.path.exists(run_dir):
                cd._created_run_dirs.insert(0, run_dir)
        (base / "config.toml").write_text(config_toml(base))
        for d in ("fifo", "rt"):
            (base / d).mkdir()
        cd.logger_path().write_text(LOGGER_SCRIPT)
        cd.logger_path().chmod(0o755)
        try:
            cd.launch(timeout=timeout)
        except BaseException:
            cd.stop()
            raise
        return cd

    def launch(self, *, timeout: float = 30.0) -> None:
        """Start the daemon (again, after :meth:`kill_daemon`) and wait until it answers."""
        log = open(self.log_path, "ab")
        try:
            self.popen = subprocess.Popen([CONTAINERD, "--config", str(self.base / "config.toml")],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.popen.poll() is not None:
                raise ContainerdError(f"containerd exited with {self.popen.returncode}:\n{self.log_tail()}")
            probe = subprocess.run([CTR, "-a", self.address, "version"], capture_output=True, timeout=10)
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ContainerdError(f"containerd did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def kill_daemon(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Signal the containerd process only (its shims live on) and reap it."""
        if self.popen and self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- ctr
    def ctr_argv(self, *args: str) -> list[str]:
        return [CTR, "-a", self.address, "-n", self.namespace, *args]

    def ctr(self, *args: str, input: bytes | None = None, timeout: float = 60.0,
            check: bool = True) -> subprocess.CompletedProcess:
        """``ctr -a SOCK -n NS ARGS``; bytes out; ContainerdError on a non-zero exit when ``check``."""
        res = subprocess.run(self.ctr_argv(*args), input=input if input is not None else b"",
                             capture_output=True, timeout=timeout)
        if check and res.returncode != 0:
            raise ContainerdError(f"ctr {' '.join(args)} -> {res.returncode}: {res.stderr.decode(errors='replace')}")
        return res

    def import_image(self, tar_path: str | os.PathLike, timeout: float = 60.0) -> None:
        self.ctr("image", "import", str(tar_path), timeout=timeout)

    def run_argv(self, image: str, cid: str, cmd: list[str], *, runtime: str | None = None,
                 tty: bool = False, rm: bool = True, detach: bool = False,
                 extra: tuple[str, ...] = ()) -> list[str]:
        """The ``ctr run`` command line; ``runtime`` is a runc-compatible binary (default runc)."""
        self.started_cids.add(cid)
        opts = ["--fifo-dir", self.fifo_dir, "--runc-root", self.runtime_root]
        if runtime:
            opts += ["--runc-binary", runtime]
        opts += (["--rm"] if rm else []) + (["--detach"] if detach else []) + (["--tty"] if tty else [])
        return self.ctr_argv("run", *opts, *extra, image, cid, *cmd)

    def run(self, image: str, cid: str, cmd: list[str], *, input: bytes = b"", timeout: float = 60.0,
            **kwargs) -> subprocess.CompletedProcess:
        """``ctr run`` to completion (see :meth:`run_argv`); its stdout/stderr as bytes."""
        return subprocess.run(self.run_argv(image, cid, cmd, **kwargs), input=input, capture_output=True,
                              timeout=timeout)

    def run_logged(self, image: str, cid: str, cmd: list[str], *, timeout: float = 60.0,
                   **kwargs) -> tuple[subprocess.CompletedProcess, bytes, bytes]:
        """``ctr run --log-uri binary://LOGGER``: the container's stdout and stderr go to a
        logging binary the shim starts (LOGGER_SCRIPT: it copies each pipe to its own file until
        EOF; the shim's delete waits for it to exit). Returns (ctr's result, stdout bytes,
        stderr bytes).

        Why not ctr's own stdout: ctr 1.6.20's task.Delete closes its stdout/stderr fifos before
        waiting for its copy goroutines (fixed upstream by containerd#8643), so ``ctr run`` loses
        the tail of the output whenever the exit event reaches it before it drained the fifo:
        seen here with plain runc, about 2 runs in 100 with 3 in parallel. Why not
        ``--log-uri file://``: the 1.6 shim gives stdout's copy the raw file instead of its
        shared-close wrapper, so stderr written after stdout's EOF is lost."""
        logs = self.base / "logs"
        logs.mkdir(exist_ok=True)
        out, err = logs / f"{cid}.out", logs / f"{cid}.err"
        uri = f"binary://{self.logger_path()}?out={out}&err={err}"
        extra = ("--log-uri", uri, *kwargs.pop("extra", ()))
        res = self.run(image, cid, cmd, timeout=timeout, extra=extra, **kwargs)
        data = []
        for path in (out, err):
            data.append(path.read_bytes() if path.exists() else b"")
            path.unlink(missing_ok=True)
        return res, data[0], data[1]

    def logger_path(self) -> Path:
        """The logging binary of :meth:`run_logged` (written by :meth:`start`)."""
        return self.base / "logger.sh"

    def run_detached(self, image: str, cid: str, cmd: list[str], *, timeout: float = 120.0, **kwargs) -> None:
        """``ctr run -d`` (no --rm), then wait until the task is RUNNING; ContainerdError if ctr fails."""
        res = subprocess.run(self.run_argv(image, cid, cmd, rm=False, detach=True, **kwargs), capture_output=True,
                             timeout=timeout)
        if res.returncode != 0:
            raise ContainerdError(f"ctr run -d {cid} -> {res.returncode}: {res.stderr.decode(errors='replace')}")
        self.wait_task_status(cid, ("RUNNING",), timeout=30)

    def delete(self, cid: str, timeout: float = 60.0) -> None:
        """``ctr task delete --force`` and ``ctr container delete``; either may be gone already."""
        self.ctr("task", "delete", "--force", cid, check=False, timeout=timeout)
        self.ctr("container", "delete", cid, check=False, timeout=timeout)

    def exec_argv(self, cid: str, exec_id: str, cmd: list[str], *, tty: bool = False,
                  detach: bool = False) -> list[str]:
        opts = ["--fifo-dir", self.fifo_dir, "--exec-id", exec_id]
        opts += (["--tty"] if tty else []) + (["--detach"] if detach else [])
        return self.ctr_argv("task", "exec", *opts, cid, *cmd)

    # -- state
    def tasks(self) -> dict[str, str]:
        """{container id: status} of this namespace's tasks (``ctr task ls``)."""
        out = self.ctr("task", "ls", timeout=20).stdout.decode().splitlines()[1:]
        return {f[0]: f[2] for f in (line.split() for line in out) if len(f) >= 3}

    def containers(self) -> list[str]:
        return self.ctr("container", "ls", "-q", timeout=20).stdout.decode().split()

    def wait_task_status(self, cid: str, statuses: tuple[str, ...], timeout: float = 30.0) -> str:
        """Poll ``ctr task ls`` until ``cid`` has one of ``statuses``; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            status = self.tasks().get(cid)
            if status in statuses:
                return status
            time.sleep(0.1)
        raise TimeoutError(f"task {cid} is {status}, not {statuses}, after {timeout}s")

    def task_pids(self, cid: str) -> list[int]:
        """The PID column of ``ctr task ps`` (for kata-runtime: the guest's pids)."""
        lines = self.ctr("task", "ps", cid, timeout=30).stdout.decode().splitlines()[1:]
        return [int(line.split()[0]) for line in lines if line.split()]

    def wait_task_pids(self, cid: str, count: int, timeout: float = 15.0) -> list[int]:
        """:meth:`task_pids` polled until there are ``count`` of them or ``timeout`` seconds passed."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.task_pids(cid)
            if len(pids) == count or time.monotonic() > deadline:
                return pids
            time.sleep(0.2)

    def shim_of(self, cid: str) -> int:
        """The containerd-shim process of ``cid``; ContainerdError unless there is exactly one."""
        shims = [p for p in self.shim_pids() if cid in _cmdline(p)]
        if len(shims) != 1:
            raise ContainerdError(f"{len(shims)} shims of {cid}: {shims}")
        return shims[0]

    def shim_pids(self) -> list[int]:
        """containerd-shim processes of this containerd (``-address <our socket>``)."""
        return [pid for pid in pids_mentioning(self.address, exclude={self.pid or -1})
                if "-address" in _cmdline(pid) and any("shim" in a for a in _cmdline(pid)[:1])]

    def vm_dirs(self) -> list[str]:
        """kata-runtime's sandbox dirs of the containers this harness ran (existing or not)."""
        return [os.path.join(KATA_VM_ROOT, cid) for cid in sorted(self.started_cids)]

    def our_processes(self) -> list[int]:
        """Shims, their descendants, and any process naming our temp dir or one of our kata
        sandbox dirs, with its descendants (the daemon excluded)."""
        exclude = {self.pid or -1}
        roots = set(self.shim_pids()) | set(pids_mentioning(str(self.base) + "/", exclude))
        for vm_dir in self.vm_dirs():
            roots |= set(pids_mentioning(vm_dir + "/", exclude))
        return sorted(roots | set(descendants(sorted(roots))))

    def leftovers(self, cids: list[str] | None = None) -> dict[str, list]:
        """What deleted containers left: processes, mounts under the temp dir (containerd's own
        snapshotter mounts excluded), runtime state dirs, shim sockets and cgroups of ``cids``
        (default: every id this harness ran). An empty dict means clean."""
        cids = sorted(self.started_cids if cids is None else cids)
        snapshots = str(self.base / "root") + "/"
        found = {
            "processes": [f"{p} {' '.join(_cmdline(p))[:200]}" for p in self.our_processes()],
            "mounts": [m for m in mounts_under(self.base) if not m.startswith(snapshots)]
            + [m for d in self.vm_dirs() for m in mounts_under(Path(d))],
            "kata_vm_dirs": [d for d in self.vm_dirs() if os.path.exists(d) and os.path.basename(d) in cids],
            "runtime_state": [str(p) for p in Path(self.runtime_root).rglob("*") if p.name in cids]
            if os.path.isdir(self.runtime_root) else [],
            "shim_sockets": [s for c in cids if os.path.exists(s := shim_socket_path(self.address, self.namespace, c))],
            "cgroups": [d for d in cgroup_dirs(self.namespace) if os.path.basename(d) in cids]
            + [d for c in cids for d in glob.glob(os.path.join(CGROUP_ROOT, "*", f"kata-sandbox-{c}"))],
        }
        return {k: v for k, v in found.items() if v}

    def wait_clean(self, cids: list[str] | None = None, timeout: float = 15.0,
                   ignore: tuple[str, ...] = ()) -> dict[str, list]:
        """Poll :meth:`leftovers` (without the kinds in ``ignore``) until it is empty or ``timeout``
        seconds passed; returns the last one."""
        deadline = time.monotonic() + timeout
        while True:
            found = {k: v for k, v in self.leftovers(cids).items() if k not in ignore}
            if not found or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    # -- clean-up
    def remove_all_containers(self, timeout: float = 30.0, *, keep: set[str] | frozenset = frozenset()) -> None:
        """Kill and delete every task, then delete every container of our namespace, except the
        ids in ``keep`` (per test: :attr:`kept`)."""
        if not self.popen or self.popen.poll() is not None:
            return
        for cid in set(self.tasks()) - keep:
            self.ctr("task", "kill", "-a", "-s", "SIGKILL", cid, check=False, timeout=timeout)
        for cid in set(self.tasks()) - keep:
            self.ctr("task", "delete", "-f", cid, check=False, timeout=timeout)
        for cid in set(self.containers()) - keep:
            self.ctr("container", "delete", cid, check=False, timeout=timeout)

    def stop(self) -> None:
        """Leave nothing behind: containers, daemon, shims and their children (SIGKILL, by pid),
        mounts under the temp dir, our cgroups, killed shims' sockets, the temp dir."""
        try:
            self.remove_all_containers()
        except (ContainerdError, subprocess.TimeoutExpired):
            pass
        self.kill_daemon(signal.SIGTERM)
        procs = self.our_processes()
        kill_pids(procs)
        wait_gone(procs, 10.0)
        unmount_all(mounts_under(self.base))
        for vm_dir in self.vm_dirs():
            unmount_all(mounts_under(Path(vm_dir)))
            shutil.rmtree(vm_dir, ignore_errors=True)
        for d in cgroup_dirs(self.namespace):
            try:
                os.rmdir(d)
            except OSError:
                pass
        for cid in self.started_cids:
            try:
                os.unlink(shim_socket_path(self.address, self.namespace, cid))
            except OSError:
                pass
        for d in self._created_run_dirs:
            try:
                os.rmdir(d)
            except OSError:
                pass
        shutil.rmtree(self.base, ignore_errors=True)


def run_with_stdin(cd: Containerd, image: str, cid: str, cmd: list[str], data: bytes, *,
                   timeout: float = 60.0, **kwargs):
    """``ctr run`` fed ``data`` on its stdin, which is closed only once the task is running.

    ctr 1.6 turns its stdin's EOF into CloseIO only after NewTask returned (its stdinCloser has
    no closer before): an EOF read earlier is lost and the container never sees it. So the data
    is written at once (by a thread: it may exceed a pipe) and the pipe closed after ``ctr task
    ls`` shows the task RUNNING or STOPPED. Returns (exit code, stdout bytes, stderr bytes)."""
    import threading

    from tests.support.attach import Attached

    run = Attached.spawn(cd.run_argv(image, cid, cmd, **kwargs))
    writer = threading.Thread(target=run.write, args=(data,), daemon=True)
    writer.start()
    try:
        cd.wait_task_status(cid, ("RUNNING", "STOPPED"), timeout=timeout)
        writer.join(timeout)
        run.close_stdin()
        rc = run.wait(timeout)
    finally:
        run.kill()
    return rc, bytes(run.out), bytes(run.err)


def pause_resume(cd: Containerd, cid: str, out: bytearray, *, settle: float = 0.3, watch: float = 1.0,
                 timeout: float = 10.0) -> tuple[str, bool, str, bool]:
    """``ctr task pause`` of a task whose process keeps appending to ``out``, then ``resume``:
    (status once paused, whether ``out`` grew during ``watch`` seconds after ``settle`` seconds
    of pause, status once resumed, whether ``out`` grew within ``timeout`` seconds after)."""
    cd.ctr("task", "pause", cid, timeout=30)
    paused = cd.tasks().get(cid, "")
    time.sleep(settle)
    frozen = len(out)
    time.sleep(watch)
    grew_paused = len(out) != frozen
    cd.ctr("task", "resume", cid, timeout=30)
    resumed = cd.tasks().get(cid, "")
    frozen = len(out)
    deadline = time.monotonic() + timeout
    while len(out) == frozen and time.monotonic() < deadline:
        time.sleep(0.05)
    return paused, grew_paused, resumed, len(out) != frozen


def _tty_session(argv: list[str], rows: int, cols: int, typed: bytes, *, resize: tuple[int, int] | None = None,
                 until: bytes, timeout: float) -> tuple[int, bytes]:
    """Run ``argv`` on a ``rows`` x ``cols`` pty; once it prints ``ready``: resize it (``resize``),
    type ``typed`` and a return, read until ``until``; (exit code, screen without carriage returns)."""
    from tests.support.attach import PtyAttached, set_winsize

    term = PtyAttached.spawn(argv, rows=rows, cols=cols)
    try:
        term.expect(b"ready", timeout)
        if resize:
            set_winsize(term.master, *resize)
        term.write(typed + b"\r")
        term.expect(until, 30)
        rc = term.wait(30)
    finally:
        term.close()
    return rc, bytes(term.screen).replace(b"\r", b"")


def run_tty(cd: Containerd, image: str, cid: str, *, timeout: float = 60.0, **kwargs) -> tuple[int, bytes]:
    """``ctr run --tty`` of RUN_TTY_SCRIPT on a 33 x 101 pty the test opened, ``hello`` typed, the
    pty resized to 40 x 120: (exit code, screen). ``timeout`` bounds the start (a VM boots)."""
    argv = cd.run_argv(image, cid, ["sh", "-c", RUN_TTY_SCRIPT], tty=True, **kwargs)
    return _tty_session(argv, 33, 101, b"hello", resize=(40, 120), until=b"resized:", timeout=timeout)


def exec_tty(cd: Containerd, cid: str, exec_id: str, *, timeout: float = 60.0) -> tuple[int, bytes]:
    """``ctr task exec --tty`` of EXEC_TTY_SCRIPT on a 30 x 90 pty, ``typed`` entered: (exit code, screen)."""
    argv = cd.exec_argv(cid, exec_id, ["sh", "-c", EXEC_TTY_SCRIPT], tty=True)
    return _tty_session(argv, 30, 90, b"typed", until=b"got:", timeout=timeout)
