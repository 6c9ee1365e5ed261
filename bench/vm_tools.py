"""What `make demo` (bench/demo.py) and bench/vm_bench.py share: kata-runtime with
`hypervisor = "qemu"`, driven through its CLI as a user drives it, in a temporary directory,
leaving nothing behind.

    with Workspace("kata-demo-", cache_dir) as ws:      # temp dir: --root, configuration.toml, bundle
        paths = ws.image_build()                        # `kata-runtime image build` (progress on stderr)
        verdict = ws.check()["kvm"]                     # `kata-runtime check --json`: the KVM probe
        write_busybox_bundle(ws.bundle, ["sh", "-c", "uname -r"])
        run = ws.run("demo-1a2b3c")                     # `kata-runtime run`, stdout read by a thread
        ...
    # leaving the block: the container is deleted (--force) and checked gone; the temp dir removed

Nothing here imports tests/: the busybox rootfs, the leftover checks and the clean-up are this
module's own (small) versions. Every child runs in its own session, so a Ctrl-C at the terminal
reaches only the caller, which then stops its children itself, in order (`Workspace.close`):
SIGINT to a `run` whose create is not done (it undoes itself), `kata-runtime delete --force`,
SIGKILL to what is still ours, `delete --force` again; then `leftovers()` must be empty. Every
wait is bounded.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: Where each sandbox's runtime directory lives (kata_runtime.sandbox.VM_ROOT).
VM_ROOT = "/run/vc/vm"
#: The packaged image cache of `kata-runtime image build` (its --cache-dir default).
DEFAULT_CACHE_DIR = "/var/cache/kata-py/images"
#: A first image build takes a few minutes (mmdebstrap, pip); on a loaded 2-core machine more.
BUILD_TIMEOUT = 1800.0
#: `kata-runtime check` probes KVM (8 s) beside a TCG boot of the same kernel.
CHECK_TIMEOUT = 180.0
CLI_TIMEOUT = 120.0
#: How long `run` gets to exit after SIGINT / after `delete --force` before SIGKILL.
INTERRUPT_GRACE = 10.0
EXIT_GRACE = 30.0
#: `kata-runtime state` statuses of a container whose create has finished.
CREATED_STATES = ("created", "running", "paused", "stopped")
READ_CHUNK = 1 << 20
BUSYBOX_APPLETS = ("sh", "echo", "cat", "uname", "hostname", "head", "grep", "dd", "sleep", "true")
ROOTFS_DIRS = ("bin", "proc", "sys", "dev", "tmp", "run", "etc", "root")


class DemoError(Exception):
    """A step failed; the message says which and why (one line)."""


# ---------------------------------------------------------------- programs


def kata_runtime_command() -> list[str]:
    """kata-runtime's argv prefix: the entry point beside this Python (the venv's), else -m."""
    script = Path(sys.executable).with_name("kata-runtime")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "kata_runtime"]


def host_kernel() -> str:
    """The host's `uname -r`."""
    return os.uname().release


def static_busybox() -> str:
    """The static busybox the guest image builder also uses (the container has no libc)."""
    from kata_runtime.image import ImageError
    from kata_runtime.image.initrd import find_busybox

    try:
        return find_busybox()
    except ImageError as exc:
        raise DemoError(str(exc)) from None


# ------------------------------------------------------------------ bundle


def write_busybox_rootfs(rootfs: Path) -> None:
    """A container root filesystem of one static busybox (hard-linked when possible) and applets."""
    busybox = static_busybox()
    for d in ROOTFS_DIRS:
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    target = rootfs / "bin" / "busybox"
    try:
        os.link(busybox, target)
    except OSError:
        shutil.copy2(busybox, target)
    for applet in BUSYBOX_APPLETS:
        (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")


def write_busybox_bundle(bundle: Path, args: list[str], hostname: str = "kata-demo") -> None:
    """An OCI bundle: `kata-runtime spec` (runc's default config.json) with our process args,
    no terminal (stdio are pipes), and a busybox rootfs."""
    bundle.mkdir(parents=True, exist_ok=True)
    write_busybox_rootfs(bundle / "rootfs")
    run_cli([*kata_runtime_command(), "spec", "--bundle", str(bundle)], "kata-runtime spec")
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"].update(terminal=False, args=list(args))
    config["hostname"] = hostname
    config_path.write_text(json.dumps(config, indent=1))


def write_configuration(path: Path, cache_dir: str, accel: str = "auto", qemu: dict | None = None) -> None:
    """configuration.toml: `hypervisor = "qemu"`, the image builder's cache, the accelerator, and
    ``qemu``'s further [hypervisor.qemu] settings (strings or numbers)."""
    settings = {"image_cache_dir": cache_dir, "accel": accel, **(qemu or {})}
    lines = ["[runtime]", 'hypervisor = "qemu"', "", "[hypervisor.qemu]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
    path.write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------- children


def run_cli(argv: list[str], what: str, timeout: float = CLI_TIMEOUT) -> str:
    """Run a short CLI command to its end (own session, bounded); its stdout. DemoError on failure."""
    with Child(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        out, err = child.communicate(timeout)
    if child.returncode != 0:
        why = (err or out).decode("utf-8", "replace").strip().splitlines()
        raise DemoError(f"{what} failed (exit {child.returncode}): {why[-1] if why else 'no output'}")
    return out.decode("utf-8", "replace")


class Child:
    """A subprocess in its own session (a terminal's Ctrl-C does not reach it), stopped in a
    bounded way when the `with` block is left early: SIGINT to its process group, then SIGKILL."""

    def __init__(self, argv: list[str], **popen):
        self.argv = argv
        self.proc = subprocess.Popen(argv, start_new_session=True, **popen)

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def communicate(self, timeout: float) -> tuple[bytes, bytes]:
        """Popen.communicate with a bound; DemoError (after stopping it) when it is exceeded."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise DemoError(f"{os.path.basename(self.argv[0])} {' '.join(self.argv[1:3])} did not finish "
                            f"within {timeout:g} s") from None
        return out or b"", err or b""

    def wait(self, timeout: float) -> int | None:
        """Its exit status, or None if it still runs after ``timeout`` seconds."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to its process group (what a terminal's Ctrl-C would have done)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signum)

    def stop(self, grace: float = INTERRUPT_GRACE) -> None:
        """SIGINT to the group, ``grace`` seconds, then SIGKILL to the group; reaped."""
        self.signal_group(signal.SIGINT)
        if self.wait(grace) is None:
            self.signal_group(signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if self.proc.poll() is None:
            self.stop()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def copy_lines(stream, indent: str) -> None:
    """Copy a child's output lines to our stdout as they come, each after ``indent``."""
    for line in iter(stream.readline, b""):
        print(indent + line.decode("utf-8", "replace").rstrip(), flush=True)


class OutputReader:
    """A thread reading a pipe to EOF; each chunk is kept with the time.monotonic() it arrived."""

    def __init__(self, stream):
        self.chunks: queue.Queue[tuple[float, bytes]] = queue.Queue()
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream) -> None:
        fd = stream.fileno()
        while True:
            try:
                data = os.read(fd, READ_CHUNK)
            except OSError:
                data = b""
            self.chunks.put((time.monotonic(), data))
            if not data:
                return

    def next_chunk(self, deadline: float) -> tuple[float, bytes]:
        """The next (time, bytes); b"" at EOF. DemoError when none arrives before ``deadline``."""
        try:
            return self.chunks.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise DemoError("the container printed nothing more before the deadline") from None


# -------------------------------------------------------------- the work dir


class Workspace:
    """A temp dir holding one `--root`, a configuration.toml (`hypervisor = "qemu"`), a bundle and
    logs; kata-runtime commands bound to them; `close()` removes every container it ran and checks
    that nothing of them is left, then the dir. Use it as a context manager."""

    def __init__(self, prefix: str, cache_dir: str, accel: str = "auto", qemu: dict | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix=prefix))
        self.root = self.dir / "root"
        self.config = self.dir / "configuration.toml"
        self.bundle = self.dir / "bundle"
        self.log = self.dir / "kata-runtime.log"
        self.stderr_path = self.dir / "run.stderr"
        self.cache_dir = cache_dir
        self.runs: list[Run] = []
        write_configuration(self.config, cache_dir, accel, qemu)
        self._share_probe_verdict(into_workspace=True)

    def _share_probe_verdict(self, into_workspace: bool) -> None:
        """The KVM probe's verdict is cached under --root (kata_runtime.kvm, keyed by the host
        kernel, QEMU and guest kernel); this workspace's --root is new each time, so the verdict
        is carried between it and the default root (/run/kata-py: until reboot, as a user's own
        runs keep it), and a second demo does not probe again. Missing files are no error."""
        from kata_runtime.kvm import CACHE_FILE, DEFAULT_CACHE_DIR

        shared, ours = Path(DEFAULT_CACHE_DIR, CACHE_FILE), self.root / CACHE_FILE
        source, target = (shared, ours) if into_workspace else (ours, shared)
        try:
            data = source.read_bytes()
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError:
            pass

    def argv(self, *args: str) -> list[str]:
        """kata-runtime with this workspace's --root, configuration and (JSON, debug) log."""
        return [*kata_runtime_command(), "--root", str(self.root), "--kata-config", str(self.config),
                "--debug", "--log", str(self.log), "--log-format", "json", *args]

    def image_build(self, indent: str = "") -> dict[str, str]:
        """`kata-runtime image build --cache-dir` (a cache hit in well under a second; a first build
        takes minutes): its progress lines are copied to our stdout as they come, after ``indent``.
        Returns {kernel, initrd, image}."""
        argv = [*kata_runtime_command(), "image", "build", "--cache-dir", self.cache_dir]
        out_path = self.dir / "image-build.out"
        with open(out_path, "wb") as out, Child(argv, stdout=out, stderr=subprocess.PIPE) as child:
            copier = threading.Thread(target=copy_lines, args=(child.proc.stderr, indent), daemon=True)
            copier.start()
            if child.wait(BUILD_TIMEOUT) is None:
                child.stop()
                raise DemoError(f"kata-runtime image build did not finish within {BUILD_TIMEOUT:g} s")
            copier.join(5.0)
        out = out_path.read_bytes()
        if child.returncode != 0:
            raise DemoError(f"kata-runtime image build failed (exit {child.returncode}); see the lines above")
        paths = dict(line.split(None, 1) for line in out.decode().splitlines() if " " in line)
        return {k: v.strip() for k, v in paths.items()}

    def check(self) -> dict:
        """`kata-runtime check --json` for this configuration: the KVM verdict ("kvm"), "accel",
        "capable". The probe's verdict is cached in --root, so `run` then reuses it."""
        with Child(self.argv("check", "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
            out, err = child.communicate(CHECK_TIMEOUT)
        self._share_probe_verdict(into_workspace=False)
        try:
            report = json.loads(out)
        except ValueError:
            raise DemoError(f"kata-runtime check failed: {err.decode(errors='replace').strip()}") from None
        if not report.get("capable"):
            failed = [f"{i['name']}: {i['detail']}" for i in report.get("items", []) if i.get("status") == "FAIL"]
            raise DemoError("kata-runtime check: this host cannot run kata-py: " + "; ".join(failed))
        return report

    def run(self, container_id: str, *extra: str, stdin=subprocess.DEVNULL) -> "Run":
        """`kata-runtime run --bundle <bundle> [extra] ID`, attached; stdout read by a thread,
        stderr to `stderr_path`."""
        with open(self.stderr_path, "ab") as err:
            child = Child(self.argv("run", "--bundle", str(self.bundle), *extra, container_id),
                          stdin=stdin, stdout=subprocess.PIPE, stderr=err)
        self.runs.append(Run(child, container_id))
        return self.runs[-1]

    def log_records(self) -> list[dict]:
        """The runtime's JSON log records so far."""
        try:
            lines = self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------ clean-up
    def close(self) -> list[str]:
        """Stop every run, delete every container (--force), check each left nothing, remove the
        temp dir. Returns what was left behind (empty: clean). Ctrl-C is ignored meanwhile."""
        with ignoring_interrupts():
            left = []
            for run in self.runs:
                left += self._remove(run)
                run.child.__exit__(None)
            if not left:
                shutil.rmtree(self.dir, ignore_errors=True)
            return left

    def _remove(self, run: "Run") -> list[str]:
        """A `run` still creating gets SIGINT (its create undoes itself); then delete --force (an
        attached `run` then exits with its shim), SIGKILL to a `run` that still waits and
        delete --force again. Returns the container's leftovers."""
        child = run.child
        if child.proc.poll() is None and not self._created(run.id):
            child.proc.send_signal(signal.SIGINT)
            child.wait(INTERRUPT_GRACE)
        self._delete(run.id)
        if child.proc.poll() is None and child.wait(EXIT_GRACE) is None:
            child.signal_group(signal.SIGKILL)
            child.proc.wait()
            self._delete(run.id)
        return wait_clean(run.id, self.root)

    def _created(self, container_id: str) -> bool:
        """`kata-runtime state` says the container was created (its create has finished)."""
        with Child(self.argv("state", container_id), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as child:
            out, _ = child.communicate(CLI_TIMEOUT)
        with contextlib.suppress(ValueError):
            return child.returncode == 0 and json.loads(out).get("status") in CREATED_STATES
        return False

    def _delete(self, container_id: str) -> None:
        with Child(self.argv("delete", "--force", container_id), stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL) as child:
            child.communicate(CLI_TIMEOUT)

    def __enter__(self) -> "Workspace":
        return self

    def __exit__(self, *exc) -> None:
        left = self.close()
        if left:
            print("LEFT BEHIND (kept " + str(self.dir) + " for inspection):\n  " + "\n  ".join(left),
                  file=sys.stderr, flush=True)


class Run:
    """One attached `kata-runtime run`: its Child, container id and stdout reader."""

    def __init__(self, child: Child, container_id: str):
        self.child = child
        self.id = container_id
        self.started = time.monotonic()
        self.reader = OutputReader(child.proc.stdout)

    @property
    def vm_dir(self) -> str:
        return os.path.join(VM_ROOT, self.id)

    def wait(self, timeout: float) -> int:
        """The exit status of `run` (the container's); DemoError after ``timeout`` seconds."""
        status = self.child.wait(timeout)
        if status is None:
            raise DemoError(f"kata-runtime run {self.id} did not exit within {timeout:g} s")
        return status


# ---------------------------------------------------------------- leftovers


@contextlib.contextmanager
def ignoring_interrupts():
    """SIGINT ignored inside the block (clean-up must finish); the old handler restored after."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def terminate_on_sigterm() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so a killed demo cleans up as on Ctrl-C."""
    def interrupt(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, interrupt)


def processes_mentioning(text: str) -> list[str]:
    """`pid: cmdline` of every process whose command line contains ``text``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if text in cmd:
            found.append(f"{entry}: {cmd[:160]}")
    return found


def mounts_mentioning(text: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if text in line]


def leftovers(container_id: str, root: Path) -> list[str]:
    """What of one container still exists: QEMU, kata-proxy or kata-shim (any process naming its
    runtime dir), mounts, the runtime dir, its state under --root."""
    vm_dir = os.path.join(VM_ROOT, container_id)
    left = [f"process {p}" for p in processes_mentioning(vm_dir + "/")]
    left += [f"mount {m}" for m in mounts_mentioning(vm_dir + "/")]
    if os.path.lexists(vm_dir):
        left.append(f"runtime dir {vm_dir}")
    left += [f"state {root / sub / container_id}" for sub in ("containers", "sandboxes")
             if (root / sub / container_id).exists()]
    return left


def wait_clean(container_id: str, root: Path, timeout: float = 10.0) -> list[str]:
    """`leftovers()` once they are gone, or after ``timeout`` seconds (processes take a moment)."""
    deadline = time.monotonic() + timeout
    while (left := leftovers(container_id, root)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left
