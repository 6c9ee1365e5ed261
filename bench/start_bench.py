"""Container start benchmark: kata-runtime (process sandbox) vs runc, same bundle, same run.

    python -m bench.start_bench [--quick] [--rounds N] [--state-calls N]

Everything real, as a caller (containerd-shim) drives a runtime: subprocesses of the CLI.

- create+start -> first output byte: ``create`` with the container's stdout on a pipe this
  process reads, then ``start``; the clock stops at the first byte of ``echo`` (median, p90).
- delete: once the container has exited, ``delete`` (for kata-runtime this also stops the
  sandbox: DestroySandbox, agent, proxy, unmount).
- state: ``state ID`` of a running container, wall time and CPU time per call (median).
- memory: USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) of what one sandbox
  keeps on the host: kata-agent, kata-proxy and one kata-shim (and the process sandbox's
  ``unshare``, shown apart).

kata-runtime and runc run interleaved, round by round, so load on the (shared) machine hits
both alike; ratios are kata / runc. Modules are byte-compiled first, as an installed package
is (this machine sets PYTHONDONTWRITEBYTECODE). Targets (issue 12): create+start <= 5x runc
(stretch 3x), state <= 3x runc. Never asserts. The last line is machine-readable:

    RESULT start_ms=.. runc_start_ms=.. start_ratio=.. delete_ms=.. ... uss_kib=..
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
    """One runtime's CLI with its own --root (and, for kata-runtime, a configuration)."""

    def __init__(self, name: str, prefix: list[str]):
        self.name = name
        self.prefix = prefix

    def run(self, *args, **kw) -> subprocess.CompletedProcess:
        """Run one command; its stderr goes to a file (never a pipe: after ``create`` the
        container process holds the create call's stdio until it ends)."""
        kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.DEVNULL)
        with tempfile.TemporaryFile() as err:
            p = subprocess.run([*self.prefix, *args], stderr=err, timeout=300, **kw)
            if p.returncode != 0:
                err.seek(0)
                raise RuntimeError(f"{self.name} {' '.join(args)}: exit {p.returncode}: {err.read()[-500:]!r}")
        return p

    def state(self, cid: str) -> dict:
        return json.loads(self.run("state", cid, stdout=subprocess.PIPE).stdout)


def start_to_first_byte(rt: Runtime, bundle: Path, cid: str) -> tuple[float, float]:
    """(create+start -> first byte, delete) in seconds, for one container running ``echo hi``."""
    r, w = os.pipe()
    try:
        t0 = time.perf_counter()
        rt.run("create", "--bundle", str(bundle), cid, stdout=w)
        os.close(w)
        w = -1
        rt.run("start", cid)
        select.select([r], [], [], 60)
        first = os.read(r, 1)
        t1 = time.perf_counter()
        if not first:
            raise RuntimeError(f"{rt.name}: no output from the container")
        deadline = time.monotonic() + 30
        while rt.state(cid)["status"] != "stopped":
            if time.monotonic() > deadline:
                raise RuntimeError(f"{rt.name}: {cid} did not stop")
            time.sleep(0.005)
        t2 = time.perf_counter()
        rt.run("delete", cid)
        t3 = time.perf_counter()
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    return t1 - t0, t3 - t2


def timed_calls(rt: Runtime, args: list[str], n: int) -> tuple[float, float]:
    """Median (wall, CPU) seconds of ``n`` calls of one command."""
    walls, cpus = [], []
    for _ in range(n):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        rt.run(*args)
        walls.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def uss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = {p[0].rstrip(":"): int(p[1]) for p in (line.split() for line in f) if p[-1:] == ["kB"]}
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)


def sandbox_memory(root: Path, cid: str, shim_pid: int) -> dict:
    """USS (KiB) of the host processes of one kata sandbox."""
    sandbox = json.loads((root / "sandboxes" / cid / "sandbox.json").read_text())
    unshare = sandbox["hypervisor"]["process"]["pid"]
    with open(f"/proc/{unshare}/task/{unshare}/children") as f:
        agent = int(f.read().split()[0])
    return {"agent": uss_kib(agent), "proxy": uss_kib(sandbox["proxy"]["process"]["pid"]),
            "shim": uss_kib(shim_pid), "unshare": uss_kib(unshare)}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f}"


def p90(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.9 + 0.5) - 1)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds, 5 state calls (CI smoke)")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--state-calls", type=int, default=30)
    args = ap.parse_args(argv)
    rounds, calls = (2, 5) if args.quick else (args.rounds, args.state_calls)
    reason = process_sandbox()
    if reason:
        print(f"start_bench: {reason}", file=sys.stderr)
        return 2

    for package in ("kata_runtime", "kata_oci", "kata_cgroups", "kata_log", "kata_proxy", "kata_shim", "kata_agent", "yamux"):
        compileall.compile_dir(str(REPO / package), quiet=1)
    tmp = Path(tempfile.mkdtemp(prefix="kstb", dir="/tmp"))
    config = tmp / "configuration.toml"
    config.write_text('[runtime]\nhypervisor = "process"\n')
    kata = Runtime("kata-runtime", [*command("kata-runtime"), "--root", str(tmp / "kata"), "--kata-config", str(config)])
    runc = Runtime("runc", ["runc", "--root", str(tmp / "runc")])
    bundle = make_bundle(tmp / "bundle")
    tag = uuid.uuid4().hex[:8]
    live = []
    try:
        starts = {"kata-runtime": [], "runc": []}
        deletes = {"kata-runtime": [], "runc": []}
        for i in range(rounds):
            for rt in (runc, kata) if i % 2 else (kata, runc):
                s, d = start_to_first_byte(rt, bundle, f"sb-{tag}-{rt.name[0]}{i}")
                starts[rt.name].append(s)
                deletes[rt.name].append(d)

        set_process(bundle, args=["sleep", "1000"])
        for rt in (kata, runc):
            cid = f"sb-{tag}-{rt.name[0]}-state"
            rt.run("create", "--bundle", str(bundle), cid)
            live.append((rt, cid))
            rt.run("start", cid)
        state = {}
        for _ in range(2):  # interleaved halves
            for rt, cid in live:
                wall, cpu = timed_calls(rt, ["state", cid], max(1, calls // 2))
                state.setdefault(rt.name, []).append((wall, cpu))
        state = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in state.items()}
        kcid = live[0][1]
        memory = sandbox_memory(tmp / "kata", kcid, kata.state(kcid)["pid"])
    finally:
        for rt, cid in live:
            subprocess.run([*rt.prefix, "delete", "--force", cid], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {k: statistics.median(v) for k, v in starts.items()}
    dmed = {k: statistics.median(v) for k, v in deletes.items()}
    start_ratio = med["kata-runtime"] / med["runc"]
    delete_ratio = dmed["kata-runtime"] / dmed["runc"]
    state_ratio = state["kata-runtime"][0] / state["runc"][0]
    total = memory["agent"] + memory["proxy"] + memory["shim"]
    print(f"container start, {rounds} rounds, interleaved (ms)      kata-runtime       runc    ratio")
    print(f"create+start -> first byte, median        {ms(med['kata-runtime'])}   {ms(med['runc'])}   {start_ratio:6.2f}")
    print(f"create+start -> first byte, p90           {ms(p90(starts['kata-runtime']))}   "
          f"{ms(p90(starts['runc']))}   {p90(starts['kata-runtime']) / p90(starts['runc']):6.2f}")
    print(f"delete (after exit), median               {ms(dmed['kata-runtime'])}   {ms(dmed['runc'])}   {delete_ratio:6.2f}")
    print(f"state, median wall                        {ms(state['kata-runtime'][0])}   {ms(state['runc'][0])}   "
          f"{state_ratio:6.2f}")
    print(f"state, median CPU                         {ms(state['kata-runtime'][1])}   {ms(state['runc'][1])}   "
          f"{state['kata-runtime'][1] / max(state['runc'][1], 1e-6):6.2f}")
    print()
    print("host memory of one sandbox, USS (KiB):  "
          + "  ".join(f"{k} {v}" for k, v in memory.items()) + f"   agent+proxy+shim {total}")
    print(f"RESULT start_ms={med['kata-runtime'] * 1000:.1f} runc_start_ms={med['runc'] * 1000:.1f} "
          f"start_ratio={start_ratio:.2f} delete_ms={dmed['kata-runtime'] * 1000:.1f} "
          f"runc_delete_ms={dmed['runc'] * 1000:.1f} delete_ratio={delete_ratio:.2f} "
          f"state_ms={state['kata-runtime'][0] * 1000:.1f} runc_state_ms={state['runc'][0] * 1000:.1f} "
          f"state_ratio={state_ratio:.2f} uss_kib={total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
