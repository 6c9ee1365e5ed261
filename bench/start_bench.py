"""Container start benchmark: kata-runtime (process sandbox) vs runc, same bundle, same run.

    python -m bench.start_bench [--quick] [--rounds N] [--state-calls N] [--baseline TREE] [--vm-cache]
                                [--hypervisor process|qemu] [--image-cache-dir DIR] [--floor-imports M,..]

Everything real, as a caller (containerd-shim) drives a runtime: subprocesses of the CLI.

- create+start -> first output byte: ``create`` with the container's stdout on a pipe this
  process reads, then ``start``; the clock stops at the first byte of ``echo`` (median, p90).
  Also the CPU time (rusage: user + system) of the ``create`` and the ``start`` command
  themselves (median; for kata-runtime the runtime process only, not what it spawned).
- delete: once the container has exited, ``delete`` (for kata-runtime this also stops the
  sandbox: DestroySandbox, agent, proxy, unmount).
- state: ``state ID`` of a running container, wall time and CPU time per call (median).
- the CPU (every thread's /proc/PID/task/*/schedstat) the sandbox's kata-agent, kata-proxy and
  kata-shim had used by the first byte (median; process sandbox): where a create's CPU goes
  beside the ``create`` command's own.
- the floor (process sandbox): the same clock over only the processes that must run one after
  another on any kata-runtime of this design, doing nothing but start (the create's and the
  start's interpreters, the agent's interpreter importing asyncio and its protobuf messages, or
  ``--floor-imports``) and ``runc create`` + ``runc start`` (see Floor); for ``state``, the
  interpreter's start alone. ``floor/runc`` is the least ratio this design can reach here
  uncached; ``kata-runtime/floor`` what all of its work adds.
- memory: USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) of what one sandbox
  keeps on the host: kata-agent, kata-proxy and one kata-shim (and the process sandbox's
  ``unshare``, shown apart).

kata-runtime and runc run interleaved, round by round, so load on the (shared) machine hits
both alike; ratios are kata / runc. ``--baseline TREE`` adds a third runtime, interleaved
too: kata-runtime from another source tree (another revision, e.g. ``git archive REV | tar
-x -C TREE``), run with ``PYTHONPATH=TREE:TREE/proto`` so that it and the proxy, shim and
agent it starts import that tree's modules (ahead of the editable install): before/after
figures from one run. ``--vm-cache`` adds kata-runtime with the VM cache (kata_runtime.vmcache:
a ``factory init`` server holding one started process sandbox; each create takes it, and waits,
untimed, until the server has started the next one). ``--hypervisor qemu`` runs the same with VM
sandboxes (the guest image from ``--image-cache-dir``; no memory figures). Modules are byte-compiled first, as an installed package is (this
machine sets PYTHONDONTWRITEBYTECODE). The load average is printed at the start and the end.
Targets (issue 12): create+start <= 5x runc (stretch 3x), state <= 3x runc. Never asserts.
The last line is machine-readable:

    RESULT start_ms=.. runc_start_ms=.. start_ratio=.. delete_ms=.. ... uss_kib=.. [base_start_ms=..]
           [floor_start_ms=.. floor_start_ratio=.. floor_imports=a,b.c floor_state_ms=.. floor_state_ratio=..]
           [vmcache_start_ms=.. vmcache_start_ratio=..]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import resource
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from tests.support.oci import set_process
from tests.support.processes import REPO, command
from tests.support.requirements import process_sandbox
from tests.support.rootfs import build_busybox_rootfs


def make_bundle(path: Path) -> Path:
    """A busybox bundle from ``runc spec`` (the peer's own default), process ``echo hi``."""
    build_busybox_rootfs(path / "rootfs")
    subprocess.run(["runc", "spec", "--bundle", str(path)], check=True)
    config = json.loads((path / "config.json").read_text())
    config["process"].update(terminal=False, args=["echo", "hi"])
    config["root"]["readonly"] = False
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


class Runtime:
    """One runtime's CLI with its own --root (and, for kata-runtime, a configuration); ``env``:
    its environment (None: ours)."""

    def __init__(self, name: str, prefix: list[str], env: dict | None = None, ready=None, root: Path | None = None):
        self.name = name
        self.prefix = prefix
        self.env = env
        #: kata-runtime's --root (its state files: where the sandbox's processes are found), else None.
        self.root = root
        #: Called before each measured create and after its delete, not timed (the VM cache: wait
        #: until it holds a sandbox again).
        self.ready = ready or (lambda: None)

    def run(self, *args, **kw) -> subprocess.CompletedProcess:
        """Run one command; its stderr goes to a file (never a pipe: after ``create`` the
        container process holds the create call's stdio until it ends)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        with tempfile.TemporaryFile() as err:
            p = run_waited([*self.prefix, *args], stderr=err, env=self.env, **kw)
            if p.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"{self.name} {' '.join(args)}: exit {p.returncode}: {err.read()[-500:]!r}")
        return p

    def state(self, cid: str) -> dict:
        return json.loads(self.run("state", cid, stdout=subprocess.PIPE).stdout)


#: Seconds after which a measured command is killed (it hung).
RUN_TIMEOUT = 300.0


def run_waited(argv: list[str], **kw) -> subprocess.CompletedProcess:
    """subprocess.run(argv, **kw) waited for by a blocking waitpid, with a watchdog thread that
    kills it after RUN_TIMEOUT seconds. Not subprocess.run(timeout=...): Popen.wait with a
    timeout polls, sleeping 0.5 ms doubling up to 50 ms, so each measured call's wall time was
    rounded up to the poll it ended in (a 35 ms ``state`` measured 63.5 ms, runc's ~5 ms 7.5)."""
    with subprocess.Popen(argv, **kw) as proc:
        watchdog = threading.Timer(RUN_TIMEOUT, proc.kill)
        watchdog.start()
        try:
            out, _ = proc.communicate()
        finally:
            watchdog.cancel()
    return subprocess.CompletedProcess(argv, proc.returncode, out)


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def start_to_first_byte(rt: Runtime, bundle: Path, cid: str, sandbox_cpus: list) -> tuple[float, float, float, float]:
    """(create+start -> first byte, delete, create's CPU, start's CPU) in seconds, for one
    container running ``echo hi``; for a kata-runtime with a process sandbox, what its agent,
    kata-proxy and kata-shim had used by the first byte is appended to ``sandbox_cpus``."""
    r, w = os.pipe()
    try:
        rt.ready()
        c0 = children_cpu()
        t0 = time.perf_counter()
        rt.run("create", "--bundle", str(bundle), cid, stdout=w)
        c1 = children_cpu()
        os.close(w)
        w = -1
        rt.run("start", cid)
        c2 = children_cpu()
        select.select([r], [], [], 60)
        first = os.read(r, 1)
        t1 = time.perf_counter()
        if not first:
            raise RuntimeError(f"{rt.name}: no output from the container")
        if rt.root is not None:
            sandbox_cpus.append(sandbox_cpu(rt.root, cid))
        deadline = time.monotonic() + 30
        while rt.state(cid)["status"] != "stopped":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{rt.name}: {cid} did not stop")
            time.sleep(0.005)
        t2 = time.perf_counter()
        rt.run("delete", cid)
        t3 = time.perf_counter()
        rt.ready()  # the VM cache's refill done here, not during the next runtime's measurement
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    return t1 - t0, t3 - t2, c1 - c0, c2 - c1


class Floor:
    """The least that a kata-runtime of this design can take here, uncached, from ``create`` to the
    first byte of ``echo`` in a process sandbox, measured in the same rounds as the runtimes: the
    processes that must run one after another when the create spawns the agent (no VM cache) and
    the agent serves through asyncio from its first request, each doing only what it cannot skip.

    1. the ``create`` command's interpreter (``python -S``, the launchers' start; nothing imported);
    2. the agent's interpreter importing what it needs before it can answer the first request:
       asyncio (the design's event loop) and katapb.agent_pb2 (the requests' protobuf messages),
       with the cycle collector off as the agent has it; the clock goes on when it says so on a
       pipe (it then waits, as an agent does, and exits after the first byte, off the clock);
    3. ``runc create`` of the bundle (the agent runs containers with runc; ``create`` returns
       once the container is created, so that its errors are its own, as runc's);
    4. the ``start`` command's interpreter (the caller runs ``start`` once ``create`` returned);
    5. ``runc start``, then the clock stops at the first byte.

    Left out, all of it real work that lies on the path too: kata-proxy and kata-shim (each starts
    beside the agent or beside ``start``), ``unshare``, the configuration, the state files, the
    gRPC round trips through kata-proxy, the sandbox's mounts, uvloop and the agent's own modules.

    The floor of ``state`` (:meth:`interpreter`) is the interpreter that a kata-runtime command
    starts, alone: reading and printing the state is left out."""

    name = "floor"
    AGENT_IMPORTS = "asyncio, katapb.agent_pb2"

    def __init__(self, root: Path, agent_imports: str = AGENT_IMPORTS):
        """``agent_imports``: the modules the agent's interpreter imports (``a, b.c``: as
        :func:`module_list` returns them)."""
        self.agent_imports = agent_imports
        self.root = root
        self.python = [sys.executable, "-S", "-c"]
        # what this interpreter finds (the venv's site-packages, the project's paths): as a launcher's
        self.path = [p for p in sys.path if p]
        self.runc = ["runc", "--root", str(root)]

    def agent_code(self, ready_fd: int) -> str:
        return (f"import gc; gc.disable(); import sys; sys.path.extend({self.path!r}); "
                f"import {self.agent_imports}; import os; os.write({ready_fd}, b'R'); "
                "os.read(0, 1)")

    def start_to_first_byte(self, bundle: Path, cid: str) -> float:
        """Seconds from the first interpreter's start to the first byte (the container deleted
        after). Raises RuntimeError naming the step that failed, with its exit status and stderr."""
        out_r, out_w = os.pipe()
        ready_r, ready_w = os.pipe()
        agent = None
        with tempfile.TemporaryFile() as err:
            try:
                t0 = time.perf_counter()
                self.interpreter(err)  # the create's
                agent = subprocess.Popen([*self.python, self.agent_code(ready_w)], stdin=subprocess.PIPE,
                                         stderr=err, pass_fds=(ready_w,))
                os.close(ready_w)
                ready_w = -1
                if not select.select([ready_r], [], [], RUN_TIMEOUT)[0] or os.read(ready_r, 1) != b"R":
                    self._fail("the agent's interpreter ended or hung before its imports were done", err)
                self._step("runc create", [*self.runc, "create", "--bundle", str(bundle), cid], err, stdout=out_w)
                os.close(out_w)
                out_w = -1
                self.interpreter(err)  # the start's
                self._step("runc start", [*self.runc, "start", cid], err)
                select.select([out_r], [], [], 60)
                first = os.read(out_r, 1)
                t1 = time.perf_counter()
                if not first:
                    raise RuntimeError("floor: no output from the container")
            finally:
                for fd in (out_r, out_w, ready_r, ready_w):
                    if fd >= 0:
                        os.close(fd)
                if agent is not None:
                    agent.stdin.close()
                    try:
                        agent.wait(RUN_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        agent.kill()
                        agent.wait()
                run_waited([*self.runc, "delete", "--force", cid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return t1 - t0

    def interpreter(self, err=None) -> None:
        """Run ``python -S -c pass`` (a command's interpreter start and exit); see :meth:`_step`."""
        self._step("python -S -c pass", [*self.python, "pass"], err)

    def _step(self, what: str, argv: list[str], err, stdout=None) -> None:
        """Run ``argv``, its stderr into ``err`` (a file, or None: ours); RuntimeError naming
        ``what``, its exit status and what ``err`` holds, unless it exits 0."""
        rc = run_waited(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=err).returncode
        if rc != 0:
            self._fail(f"{what} exited {rc}", err)

    @staticmethod
    def _fail(what: str, err) -> None:
        tail = b""
        if err is not None:
            err.seek(0)
            tail = err.read()[-500:]
        raise RuntimeError(f"floor: {what}: {tail!r}")


def module_list(text: str) -> str:
    """``text`` as ``a, b.c`` if it is a comma-separated list of dotted module names, else
    argparse.ArgumentTypeError."""
    names = [m.strip() for m in text.split(",")]
    if not all(part.isidentifier() for m in names for part in m.split(".")):
        raise argparse.ArgumentTypeError(f"not a comma-separated list of modules: {text!r}")
    return ", ".join(names)


def timed_call(rt: Runtime, args: list[str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call of a command."""
    return timed(lambda: rt.run(*args))


def timed(call) -> tuple[float, float]:
    """(wall, CPU) seconds of ``call()``; the CPU is that of the processes it waited for."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    call()
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime


def uss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = {p[0].rstrip(":"): int(p[1]) for p in (line.split() for line in f) if p[-1:] == ["kB"]}
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


def sandbox_pids(root: Path, cid: str) -> dict:
    """{"agent", "proxy", "unshare": pid} of the process sandbox of container ``cid`` (its own)."""
    sandbox = json.loads((root / "sandboxes" / cid / "sandbox.json").read_text())
    unshare = sandbox["hypervisor"]["process"]["pid"]
    with open(f"/proc/{unshare}/task/{unshare}/children") as f:
        agent = int(f.read().split()[0])
    return {"agent": agent, "proxy": sandbox["proxy"]["process"]["pid"], "unshare": unshare}


def sandbox_memory(root: Path, cid: str, shim_pid: int) -> dict:
    """USS (KiB) of the host processes of one kata sandbox."""
    pids = sandbox_pids(root, cid)
    return {"agent": uss_kib(pids["agent"]), "proxy": uss_kib(pids["proxy"]), "shim": uss_kib(shim_pid),
            "unshare": uss_kib(pids["unshare"])}


def cpu_seconds(pid: int) -> float:
    """CPU time so far of a live process, every thread (/proc/PID/task/*/schedstat: ns on a CPU)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/schedstat") as f:
            total += int(f.read().split()[0])
    return total / 1e9


def sandbox_cpu(root: Path, cid: str) -> dict:
    """{"agent", "proxy", "shim": CPU seconds so far} of container ``cid``'s process sandbox,
    without the ones that cannot be read (a VM's sandbox; a kata-shim already gone with its
    ``echo``). The VM cache's agent and proxy include what they used while the cache held them."""
    pids = {}
    try:
        pids.update(sandbox_pids(root, cid))
        pids["shim"] = json.loads((root / "containers" / cid / "state.json").read_text())["shim"]["pid"]
    except (OSError, KeyError, ValueError, IndexError, TypeError):
        pass
    cpu = {}
    for proc in ("agent", "proxy", "shim"):
        try:
            cpu[proc] = cpu_seconds(pids[proc])
        except (OSError, KeyError, ValueError, IndexError):
            pass
    return cpu


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def p90(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.9 + 0.5) - 1)]


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds, 5 state calls (CI smoke)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--state-calls", type=int, default=30)
    ap.add_argument("--baseline", metavar="TREE", type=Path,
                    help="also run kata-runtime from this source tree (another revision), interleaved")
    ap.add_argument("--hypervisor", choices=("process", "qemu"), default="process",
                    help="the sandboxes' hypervisor (qemu: TCG or KVM as accel auto finds; no memory figures)")
    ap.add_argument("--image-cache-dir", metavar="DIR",
                    help="qemu: the guest image cache ([hypervisor.qemu] image_cache_dir; `kata-runtime image "
                         "build --cache-dir DIR` first)")
    ap.add_argument("--floor-imports", metavar="MODULES", default=Floor.AGENT_IMPORTS, type=module_list,
                    help="process sandbox: what the floor's agent interpreter imports, comma-separated "
                         "(default: %(default)s)")
    ap.add_argument("--vm-cache", action="store_true",
                    help="also run kata-runtime with the VM cache ([factory] vm_cache_number = 1, a "
                         "`factory init` server), interleaved; each create waits, untimed, until the "
                         "cache holds a sandbox")
    return ap.parse_args(argv)


def config_text(args) -> str:
    """The runtime's configuration.toml for ``--hypervisor`` (and qemu's ``--image-cache-dir``)."""
    text = f'[runtime]\nhypervisor = "{args.hypervisor}"\n'
    if args.hypervisor == "qemu" and args.image_cache_dir:
        text += f'\n[hypervisor.qemu]\nimage_cache_dir = "{os.path.abspath(args.image_cache_dir)}"\n'
    return text


def compile_tree(tree: Path) -> None:
    """Byte-compile every package of a source tree (and its generated katapb), as an install would."""
    for init in sorted(tree.glob("*/__init__.py")) + [tree / "proto" / "katapb" / "__init__.py"]:
        if init.exists() and init.parent.name not in ("tests", "bench"):
            compileall.compile_dir(str(init.parent), quiet=1)


def runtimes(tmp: Path, config: Path, baseline: Path | None, cache: "VMCache | None" = None) -> list[Runtime]:
    """kata-runtime (this tree), kata-runtime from ``baseline`` if given, kata-runtime with the
    VM cache if given, and runc."""
    prefix = command("kata-runtime")
    rts = [Runtime("kata-runtime", [*prefix, "--root", str(tmp / "kata"), "--kata-config", str(config)],
                   root=tmp / "kata")]
    if baseline is not None:
        path = os.pathsep.join([str(baseline), str(baseline / "proto"), *filter(None, [os.environ.get("PYTHONPATH")])])
        rts.append(Runtime("baseline", [*prefix, "--root", str(tmp / "base"), "--kata-config", str(config)],
                           env=dict(os.environ, PYTHONPATH=path), root=tmp / "base"))
    if cache is not None:
        rts.append(Runtime("vmcache", [*prefix, "--root", str(tmp / "vmc"), "--kata-config", str(cache.config)],
                           ready=cache.wait_ready, root=tmp / "vmc"))
    rts.append(Runtime("runc", ["runc", "--root", str(tmp / "runc")]))
    return rts


class VMCache:
    """A `kata-runtime factory init` server of one process sandbox, for the ``vmcache`` runtime."""

    def __init__(self, tmp: Path, config_text: str):
        self.endpoint = str(tmp / "cache.sock")
        self.config = tmp / "vmcache.toml"
        self.config.write_text(config_text + f'\n[factory]\nvm_cache_number = 1\nvm_cache_endpoint = "{self.endpoint}"\n')
        self.root = tmp / "vmc"
        self.server = subprocess.Popen([*command("kata-runtime"), "--root", str(self.root), "--kata-config",
                                        str(self.config), "factory", "init"], stdout=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 300.0) -> None:
        from kata_runtime import vmcache

        deadline = time.monotonic() + timeout
        while True:
            try:
                if vmcache.status(self.endpoint)["ready"]:
                    return
            except vmcache.CacheError:
                pass
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the VM cache server did not get a sandbox ready")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.terminate()
        self.server.wait(60)


def measure_starts(rts: list[Runtime], bundle: Path, tag: str, rounds: int) -> tuple[dict, dict, dict, dict]:
    """{runtime: [create+start -> first byte]}, {runtime: [delete]}, {runtime: [(create CPU,
    start CPU)]}, {runtime: [sandbox_cpu]} (seconds), round by round, the order rotated each round."""
    starts = {rt.name: [] for rt in rts}
    deletes = {rt.name: [] for rt in rts}
    cpus = {rt.name: [] for rt in rts}
    sandbox_cpus = {rt.name: [] for rt in rts}
    for i in range(rounds):
        for rt in rts[i % len(rts):] + rts[:i % len(rts)]:
            if isinstance(rt, Floor):
                starts[rt.name].append(rt.start_to_first_byte(bundle, f"sb-{tag}-f{i}"))
                continue
            s, d, create_cpu, start_cpu = start_to_first_byte(rt, bundle, f"sb-{tag}-{rt.name[0]}{i}",
                                                              sandbox_cpus[rt.name])
            starts[rt.name].append(s)
            deletes[rt.name].append(d)
            cpus[rt.name].append((create_cpu, start_cpu))
    return starts, deletes, cpus, sandbox_cpus


def measure_state(live: list, calls: int) -> dict:
    """{runtime: (median wall, median CPU)} of ``state`` on a running container, one call of each
    runtime in turn: what else runs on the machine meanwhile (a sandbox just started finishing
    its start, the VM cache's refill) falls on every runtime alike, not on one block of calls."""
    state = {rt.name: [] for rt, _ in live}
    for _ in range(calls):
        for rt, cid in live:
            state[rt.name].append(timed(rt.interpreter) if isinstance(rt, Floor) else timed_call(rt, ["state", cid]))
    return {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in state.items()}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(rounds: int, starts: dict, deletes: dict, cpus: dict, state: dict, memory: dict,
           loads: tuple[str, str], sandbox_cpus: dict | None = None,
           floor_imports: str = Floor.AGENT_IMPORTS) -> None:
    """The table (a column per runtime, ratios to runc), the sandbox processes' CPU, memory, and
    the RESULT line."""
    names = list(starts)
    others = [n for n in names if n != "runc"]
    med = {k: statistics.median(v) for k, v in starts.items()}
    dmed = {k: statistics.median(v) for k, v in deletes.items() if v}
    rows = [("create+start -> first byte, median", med), ("create+start -> first byte, p90",
                                                         {k: p90(v) for k, v in starts.items()}),
            ("create CPU, median", {k: statistics.median(c for c, _ in v) for k, v in cpus.items() if v}),
            ("start CPU, median", {k: statistics.median(c for _, c in v) for k, v in cpus.items() if v}),
            ("delete (after exit), median", dmed), ("state, median wall", {k: v[0] for k, v in state.items()}),
            ("state, median CPU", {k: v[1] for k, v in state.items()})]
    print(f"container start, {rounds} rounds, interleaved (ms); load average {loads[0]} at the start, {loads[1]} "
          f"at the end")
    print(f"{'':42s}" + "".join(f"{n:>14s}" for n in names) + "".join(f"{n + '/runc':>20s}" for n in others))
    for label, values in rows:
        print(f"{label:42s}" + "".join(f"{ms(values[n]) if n in values else '-':>14s}" for n in names)
              + "".join(f"{values[n] / max(values['runc'], 1e-9):20.2f}" if n in values else f"{'-':>20s}"
                        for n in others))
    if "floor" in med:
        print(f"\nfloor (see Floor in bench/start_bench.py), create+start: the interpreters that must start one "
              f"after another (create; the agent importing {floor_imports}; start) and runc create + start, "
              f"nothing else; state: the "
              f"interpreter alone. kata-runtime/floor: create+start {med['kata-runtime'] / med['floor']:.2f}, "
              f"state {state['kata-runtime'][0] / state['floor'][0]:.2f}")
    lines = sandbox_cpu_lines(sandbox_cpus or {})
    if lines:
        print()
        print("CPU of the sandbox's processes by the first byte, median (ms; the VM cache's include their time in the cache):")
        print("\n".join(lines))
    total = sum(memory.get(k, 0) for k in ("agent", "proxy", "shim"))
    if memory:
        print()
        print("host memory of one sandbox, USS (KiB):  "
              + "  ".join(f"{k} {v}" for k, v in memory.items()) + f"   agent+proxy+shim {total}")
    k = "kata-runtime"
    base = (f" base_start_ms={med['baseline'] * 1000:.1f} base_delete_ms={dmed['baseline'] * 1000:.1f} "
            f"base_state_ms={state['baseline'][0] * 1000:.1f}") if "baseline" in med else ""
    if "floor" in med:
        base += (f" floor_start_ms={med['floor'] * 1000:.1f} floor_start_ratio={med['floor'] / med['runc']:.2f}"
                 f" floor_imports={floor_imports.replace(' ', '')} floor_state_ms={state['floor'][0] * 1000:.1f}"
                 f" floor_state_ratio={state['floor'][0] / state['runc'][0]:.2f}")
    if "vmcache" in med:
        base += f" vmcache_start_ms={med['vmcache'] * 1000:.1f} vmcache_start_ratio={med['vmcache'] / med['runc']:.2f}"
    print(f"RESULT start_ms={med[k] * 1000:.1f} runc_start_ms={med['runc'] * 1000:.1f} "
          f"start_ratio={med[k] / med['runc']:.2f} delete_ms={dmed[k] * 1000:.1f} "
          f"runc_delete_ms={dmed['runc'] * 1000:.1f} delete_ratio={dmed[k] / dmed['runc']:.2f} "
          f"state_ms={state[k][0] * 1000:.1f} runc_state_ms={state['runc'][0] * 1000:.1f} "
          f"state_ratio={state[k][0] / state['runc'][0]:.2f} uss_kib={total}{base}")


def sandbox_cpu_lines(sandbox_cpus: dict) -> list[str]:
    """One line per runtime with figures: the median of each process's CPU over the rounds."""
    lines = []
    for name, rounds in sandbox_cpus.items():
        parts = []
        for proc in ("agent", "proxy", "shim"):
            values = [r[proc] for r in rounds if proc in r]
            if values:
                parts.append(f"{proc} {statistics.median(values) * 1000:.1f}")
        if parts:
            lines.append(f"  {name:14s}" + "  ".join(parts))
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    rounds, calls = (2, 5) if args.quick else (args.rounds, args.state_calls)
    reason = process_sandbox()
    if reason:
        print(f"start_bench: {reason}", file=sys.stderr)
        return 2
    for tree in filter(None, (REPO, args.baseline)):
        compile_tree(tree.resolve())
    tmp = Path(tempfile.mkdtemp(prefix="kstb", dir="/tmp"))
    config = tmp / "configuration.toml"
    config.write_text(config_text(args))
    cache = VMCache(tmp, config_text(args)) if args.vm_cache else None
    rts = runtimes(tmp, config, args.baseline.resolve() if args.baseline else None, cache)
    if args.hypervisor == "process":
        rts.append(Floor(tmp / "floor", args.floor_imports))
    bundle = make_bundle(tmp / "bundle")
    tag = uuid.uuid4().hex[:8]
    live = []
    loads = [load()]
    try:
        starts, deletes, cpus, sandbox_cpus = measure_starts(rts, bundle, tag, rounds)
        set_process(bundle, args=["sleep", "1000"])
        for rt in rts:
            if isinstance(rt, Floor):
                live.append((rt, None))
                continue
            cid = f"sb-{tag}-{rt.name[0]}-state"
            rt.run("create", "--bundle", str(bundle), cid)
            live.append((rt, cid))
            rt.run("start", cid)
        state = measure_state(live, calls)
        kata, kcid = live[0]
        memory = sandbox_memory(tmp / "kata", kcid, kata.state(kcid)["pid"]) if args.hypervisor == "process" else {}
        loads.append(load())
    finally:
        for rt, cid in live:
            if cid is not None:
                subprocess.run([*rt.prefix, "delete", "--force", cid], capture_output=True, env=rt.env)
        if cache is not None:
            cache.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    report(rounds, starts, deletes, cpus, state, memory, tuple(loads), sandbox_cpus, args.floor_imports)
    return 0


if __name__ == "__main__":
    sys.exit(main())
