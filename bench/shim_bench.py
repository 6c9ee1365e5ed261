"""kata-shim benchmark: stdio throughput end to end, start-to-first-byte, memory per shim.

    python -m bench.shim_bench [--quick] [--mib N] [--shims N]

Everything real, on this machine: a process sandbox (kata-agent in new namespaces,
containers run by runc), the real kata-proxy on its kata.sock, and real kata-shim
processes started as kata-runtime will start them (the venv's ``kata-shim`` script).

- stdout MiB/s: container ``head -c N /dev/zero`` -> agent -> yamux -> proxy -> shim -> a pipe
  read by this process (first byte to EOF); ceiling: ``head -c N /dev/zero | cat`` through a
  plain pipe on the host, same reader; printed as a ratio.
- stdin MiB/s: this process -> a pipe -> shim -> WriteStdin -> ... -> container ``wc -c``
  (first write to the shim's exit, the count checked); ceiling: host ``wc -c`` on a pipe.
- start-to-first-byte: Popen(kata-shim) for an exec'd ``echo`` whose output is waiting in the
  agent, to the first byte on the shim's stdout (median, p90); and the bare interpreter start
  of the same script (``kata-shim --version``).  kata_shim is byte-compiled first, as an
  installed package is (this machine sets PYTHONDONTWRITEBYTECODE).
- memory: RSS, PSS and USS (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) and
  threads of each shim with 1 and with N (default 20) shims alive, each having relayed 1 MiB;
  the peak USS of the shim during the stdout run.
- reference: a grpcio client doing what a grpcio-based shim would (import grpc and katapb,
  one unary call through the proxy; then ReadStdout of 8 MiB in 1 MiB calls): RSS, USS,
  threads, start time.  This is the measurement behind kata-shim's own HTTP/2 client.

Targets (issue 5): stdout >= 100 MiB/s end to end; <= 20 MiB USS per shim.  Never asserts.
The last line is machine-readable:

    RESULT stdout_mib_s=.. stdout_ratio=.. stdin_mib_s=.. first_byte_ms=.. uss1_kib=.. ussN_kib=.. ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from tests.support.processes import REPO, command
from tests.support.requirements import process_sandbox

MiB = 1 << 20


def rollup(pid: int) -> dict:
    """smaps_rollup of ``pid`` in KiB, plus USS and the thread count."""
    d = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[-1] == "kB":
                d[parts[0].rstrip(":")] = int(parts[1])
    d["USS"] = d.get("Private_Clean", 0) + d.get("Private_Dirty", 0)
    d["Threads"] = len(os.listdir(f"/proc/{pid}/task"))
    return d


class Peak(threading.Thread):
    """Samples a process's smaps_rollup until stopped; keeps the peak USS and RSS."""

    def __init__(self, pid: int, every: float = 0.02):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.uss = self.rss = 0
        self.stop_event = threading.Event()

    def run(self):
        while not self.stop_event.is_set():
            try:
                r = rollup(self.pid)
            except OSError:
                return
            self.uss = max(self.uss, r["USS"])
            self.rss = max(self.rss, r["Rss"])
            self.stop_event.wait(self.every)

    def stop(self):
        self.stop_event.set()
        self.join(2)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU seconds used by the proxy and the agent between start() and stop()."""

    def __init__(self, pids: dict):
        self.pids = pids
        self.used = {name: 0.0 for name in pids}
        self._t0 = {}

    def start(self):
        self._t0 = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self):
        for name, pid in self.pids.items():
            self.used[name] += cpu_seconds(pid) - self._t0[name]


def wait_rusage(proc, timeout: float = 60.0) -> tuple[int, float]:
    """Wait for a Popen child; (exit status, its CPU seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, ru.ru_utime + ru.ru_stime
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("shim did not exit")
        time.sleep(0.005)


def drain(fd: int, total_hint: int = 0) -> tuple[int, float | None, float]:
    """Read ``fd`` to EOF: (bytes, time of the first byte, time of EOF)."""
    n = 0
    first = None
    while True:
        chunk = os.read(fd, MiB)
        if not chunk:
            return n, first, time.perf_counter()
        if first is None:
            first = time.perf_counter()
        n += len(chunk)


# ------------------------------------------------------------------ measurements


def stdout_run(agent, total: int, cpu: Cpu) -> dict:
    cid = f"out-{uuid.uuid4().hex[:8]}"
    agent.create(cid, ["head", "-c", str(total), "/dev/zero"])
    shim = agent.shim(cid, bufsize=0)
    peak = Peak(shim.pid)
    peak.start()
    cpu.start()
    agent.start(cid)
    n, first, end = drain(shim.stdout.fileno())
    status, shim_cpu = wait_rusage(shim)
    cpu.stop()
    peak.stop()
    if n != total or status != 0:
        raise RuntimeError(f"stdout run: got {n} of {total} bytes, shim status {status}")
    return {"mib_s": total / MiB / (end - first), "peak_uss": peak.uss, "peak_rss": peak.rss,
            "shim_cpu": shim_cpu}


def pipe_ceiling(total: int) -> float:
    p = subprocess.Popen(["sh", "-c", f"head -c {total} /dev/zero | cat"], stdout=subprocess.PIPE, bufsize=0)
    n, first, end = drain(p.stdout.fileno())
    p.wait()
    p.stdout.close()
    assert n == total
    return total / MiB / (end - first)


def feed(proc, total: int) -> float:
    buf = b"\x5a" * MiB
    t0 = time.perf_counter()
    left = total
    fd = proc.stdin.fileno()
    while left:
        view = memoryview(buf)[:min(left, MiB)]
        while view:
            view = view[os.write(fd, view):]
        left -= min(left, MiB)
    proc.stdin.close()
    return t0


def stdin_run(agent, total: int, cpu: Cpu) -> tuple[float, float]:
    cid = f"in-{uuid.uuid4().hex[:8]}"
    agent.run(cid, ["sh", "-c", "sleep 3600"])
    agent.exec(cid, "wc", ["wc", "-c"])
    shim = agent.shim(cid, "wc", stdin=subprocess.PIPE, bufsize=0)
    cpu.start()
    t0 = feed(shim, total)
    out = shim.stdout.read()
    status, shim_cpu = wait_rusage(shim)
    end = time.perf_counter()
    cpu.stop()
    if status != 0 or int(out.split()[0]) != total:
        raise RuntimeError(f"stdin run: wc said {out!r}, shim status {status}")
    agent.signal(cid, cid, 9)
    return total / MiB / (end - t0), shim_cpu


def stdin_ceiling(total: int) -> float:
    p = subprocess.Popen(["wc", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    t0 = feed(p, total)
    out = p.stdout.read()
    p.wait()
    p.stdout.close()
    assert int(out.split()[0]) == total
    return total / MiB / (time.perf_counter() - t0)


def first_byte(agent, samples: int) -> tuple[list[float], list[float]]:
    cid = f"fb-{uuid.uuid4().hex[:8]}"
    agent.run(cid, ["sh", "-c", "sleep 3600"])
    lat = []
    for i in range(samples):
        eid = f"e{i}"
        agent.exec(cid, eid, ["echo", "hi"])
        time.sleep(0.05)  # the output is waiting in the agent
        t0 = time.perf_counter()
        shim = agent.shim(cid, eid, bufsize=0)
        b = os.read(shim.stdout.fileno(), 1)
        lat.append(time.perf_counter() - t0)
        assert b == b"h"
        shim.wait(30)
    agent.signal(cid, cid, 9)
    starts = []
    for _ in range(samples):
        t0 = time.perf_counter()
        subprocess.run([*command("kata-shim"), "--version"], stdout=subprocess.DEVNULL, check=True)
        starts.append(time.perf_counter() - t0)
    return lat, starts


def memory(agent, counts: list[int]) -> dict[int, list[dict]]:
    cid = f"mem-{uuid.uuid4().hex[:8]}"
    agent.run(cid, ["sh", "-c", "sleep 3600"])
    shims = []
    results = {}
    try:
        for want in counts:
            while len(shims) < want:
                eid = f"m{len(shims)}"
                agent.exec(cid, eid, ["sh", "-c", "head -c 1048576 /dev/zero; sleep 3600"])
                shim = agent.shim(cid, eid, bufsize=0)
                got = 0
                while got < MiB:
                    got += len(os.read(shim.stdout.fileno(), MiB))
                shims.append(shim)
            time.sleep(0.3)
            results[want] = [rollup(s.pid) for s in shims]
    finally:
        for s in shims:
            s.terminate()  # forwarded: the exec'd shell dies of SIGTERM, the shim exits 143
        for s in shims:
            try:
                s.wait(20)
            except subprocess.TimeoutExpired:
                s.kill()
                s.wait(5)
        agent.signal(cid, cid, 9)
    return results


GRPC_REFERENCE = r"""
import os, sys, time
t0 = time.perf_counter()
import grpc
from katapb import agent_pb2, agent_pb2_grpc, health_pb2, health_pb2_grpc
t1 = time.perf_counter()
ch = grpc.insecure_channel("unix:" + sys.argv[1])
health_pb2_grpc.HealthStub(ch).Check(health_pb2.CheckRequest())
t2 = time.perf_counter()
def roll():
    d = {}
    for line in open("/proc/self/smaps_rollup"):
        p = line.split()
        if len(p) >= 3 and p[-1] == "kB":
            d[p[0].rstrip(":")] = int(p[1])
    return d["Rss"], d["Private_Clean"] + d["Private_Dirty"], len(os.listdir("/proc/self/task"))
idle = roll()
stub = agent_pb2_grpc.AgentServiceStub(ch)
n = 0
while True:
    try:
        r = stub.ReadStdout(agent_pb2.ReadStreamRequest(container_id=sys.argv[2], exec_id=sys.argv[3], len=1 << 20))
    except grpc.RpcError:
        break
    n += len(r.data)
busy = roll()
print(f"{t1 - t0:.4f} {t2 - t0:.4f} {idle[0]} {idle[1]} {idle[2]} {busy[0]} {busy[1]} {busy[2]} {n}")
"""


def grpc_reference(agent) -> dict:
    cid = f"ref-{uuid.uuid4().hex[:8]}"
    agent.run(cid, ["sh", "-c", "sleep 3600"])
    agent.exec(cid, "big", ["head", "-c", str(8 * MiB), "/dev/zero"])
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", GRPC_REFERENCE, agent.socket, cid, "big"],
                         capture_output=True, text=True, env=env, timeout=120)
    wall = time.perf_counter() - t0
    agent.signal(cid, cid, 9)
    if out.returncode != 0:
        raise RuntimeError(f"grpc reference failed: {out.stderr}")
    f = out.stdout.split()
    return {"import_s": float(f[0]), "first_call_s": float(f[1]), "rss": int(f[2]), "uss": int(f[3]),
            "threads": int(f[4]), "busy_rss": int(f[5]), "busy_uss": int(f[6]), "busy_threads": int(f[7]),
            "relayed": int(f[8]), "wall_s": wall}


# ------------------------------------------------------------------ main


async def start_stack(tmp: str):
    from kata_runtime.hypervisor import ProcessSandbox
    from tests.support.proxy import start_proxy

    sb = ProcessSandbox(tmp, f"bench-{uuid.uuid4().hex[:8]}", log_level="info")
    await sb.start()
    try:
        proxy = await asyncio.to_thread(start_proxy, sb.sandbox_dir, mux=sb.channel_socket_path,
                                        sandbox_id=sb.sandbox_id, log_level="warn")
    except BaseException:
        await sb.stop()
        raise
    return sb, proxy


def mean(xs):
    return sum(xs) / len(xs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shim_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few samples (CI smoke)")
    ap.add_argument("--mib", type=int, help="MiB per stdout/stdin run (default 256, quick 16)")
    ap.add_argument("--runs", type=int, help="runs per throughput figure, best kept (default 3, quick 1)")
    ap.add_argument("--shims", type=int, help="shims alive for the memory figure (default 20, quick 4)")
    ap.add_argument("--samples", type=int, help="start-to-first-byte samples (default 20, quick 3)")
    args = ap.parse_args(argv)
    q = args.quick
    total = (args.mib or (16 if q else 256)) * MiB
    runs = args.runs or (1 if q else 3)
    nshims = args.shims or (4 if q else 20)
    samples = args.samples or (3 if q else 20)

    reason = process_sandbox()
    if reason:
        print(f"shim_bench: {reason}", file=sys.stderr)
        return 2

    from tests.support.agent import Agent

    # As an installed package would be (pip byte-compiles at install time); this machine sets
    # PYTHONDONTWRITEBYTECODE, which would otherwise make every shim compile its modules.
    import compileall
    compileall.compile_dir(str(REPO / "kata_shim"), quiet=1)

    tmp = tempfile.mkdtemp(prefix="kshb", dir="/tmp")
    loop = asyncio.new_event_loop()
    sb = proxy = agent = None
    try:
        sb, proxy = loop.run_until_complete(start_stack(tmp))
        agent = Agent(sb, proxy)
        agent.create_sandbox()

        out_cpu = Cpu({"proxy": proxy.pid, "agent": sb.agent_pid()})
        in_cpu = Cpu({"proxy": proxy.pid, "agent": sb.agent_pid()})
        outs = [stdout_run(agent, total, out_cpu) for _ in range(runs)]
        out_best = max(o["mib_s"] for o in outs)
        peak_uss = max(o["peak_uss"] for o in outs)
        peak_rss = max(o["peak_rss"] for o in outs)
        ceil_out = max(pipe_ceiling(total) for _ in range(runs))
        ins = [stdin_run(agent, total, in_cpu) for _ in range(runs)]
        in_best = max(i[0] for i in ins)
        ceil_in = max(stdin_ceiling(total) for _ in range(runs))
        lat, starts = first_byte(agent, samples)
        mem = memory(agent, [1, nshims])
        ref = grpc_reference(agent)
    finally:
        if agent is not None:
            agent.close()
        if proxy is not None:
            proxy.stop()
        if sb is not None:
            loop.run_until_complete(sb.stop())
        loop.close()
        if os.environ.get("SHIM_BENCH_KEEP"):
            print("kept", tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    lat_ms = sorted(x * 1000 for x in lat)
    start_ms = statistics.median(x * 1000 for x in starts)
    p90 = lat_ms[min(len(lat_ms) - 1, round(0.9 * (len(lat_ms) - 1)))]
    one = mem[1][0]
    many = mem[nshims]

    print(f"kata-shim benchmark ({'quick' if q else 'full'}): {platform.node()} {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, shim = {' '.join(command('kata-shim'))}")
    print(f"transfer {total // MiB} MiB per run, best of {runs}; kata_shim byte-compiled first")
    print()
    print(f"{'figure':44} {'value':>14} {'ceiling':>14} {'ratio':>7}")
    print(f"{'stdout end to end (MiB/s)':44} {out_best:14.1f} {ceil_out:14.1f} {out_best / ceil_out:7.3f}")
    print(f"{'stdin end to end (MiB/s)':44} {in_best:14.1f} {ceil_in:14.1f} {in_best / ceil_in:7.3f}")
    gib = total * runs / (1 << 30)
    out_shim = sum(o["shim_cpu"] for o in outs) / gib
    in_shim = sum(i[1] for i in ins) / gib
    print(f"{'CPU s per GiB, stdout: shim / proxy / agent':44} {out_shim:6.2f} / {out_cpu.used['proxy'] / gib:5.2f} / "
          f"{out_cpu.used['agent'] / gib:5.2f}")
    print(f"{'CPU s per GiB, stdin:  shim / proxy / agent':44} {in_shim:6.2f} / {in_cpu.used['proxy'] / gib:5.2f} / "
          f"{in_cpu.used['agent'] / gib:5.2f}")
    print(f"{'start to first byte, median (ms)':44} {statistics.median(lat_ms):14.1f}")
    print(f"{'start to first byte, p90 (ms)':44} {p90:14.1f}")
    print(f"{'interpreter start: kata-shim --version (ms)':44} {start_ms:14.1f}")
    print()
    print(f"{'memory per shim (KiB)':32} {'RSS':>8} {'PSS':>8} {'USS':>8} {'anon':>8} {'threads':>8}")
    print(f"{'1 shim alive':32} {one['Rss']:8d} {one['Pss']:8d} {one['USS']:8d} {one['Anonymous']:8d} "
          f"{one['Threads']:8d}")
    print(f"{f'{nshims} shims alive (mean)':32} {round(mean([m['Rss'] for m in many])):8d} "
          f"{round(mean([m['Pss'] for m in many])):8d} {round(mean([m['USS'] for m in many])):8d} "
          f"{round(mean([m['Anonymous'] for m in many])):8d} {many[0]['Threads']:8d}")
    print(f"{f'{nshims} shims alive (max)':32} {max(m['Rss'] for m in many):8d} {max(m['Pss'] for m in many):8d} "
          f"{max(m['USS'] for m in many):8d} {max(m['Anonymous'] for m in many):8d}")
    print(f"{'peak during the stdout run':32} {peak_rss:8d} {'':>8} {peak_uss:8d}")
    print()
    print("reference: a grpcio client (import grpc + katapb, one unary call through the proxy; then 8 MiB "
          "of ReadStdout in 1 MiB calls)")
    print(f"{'grpcio client, after one call':32} {ref['rss']:8d} {'':>8} {ref['uss']:8d} {'':>8} {ref['threads']:8d}")
    print(f"{'grpcio client, after 8 MiB':32} {ref['busy_rss']:8d} {'':>8} {ref['busy_uss']:8d} {'':>8} "
          f"{ref['busy_threads']:8d}")
    print(f"grpcio client: import {ref['import_s'] * 1000:.0f} ms, start to first reply "
          f"{ref['first_call_s'] * 1000:.0f} ms (after the interpreter's own start)")
    print()
    print(f"targets: stdout >= 100 MiB/s: {'met' if out_best >= 100 else 'NOT met'}; "
          f"USS <= 20 MiB per shim: {'met' if max(one['USS'], max(m['USS'] for m in many), peak_uss) <= 20 * 1024 else 'NOT met'}")
    print(f"RESULT stdout_mib_s={out_best:.1f} stdout_ratio={out_best / ceil_out:.3f} stdin_mib_s={in_best:.1f} "
          f"stdin_ratio={in_best / ceil_in:.3f} shim_cpu_s_per_gib={out_shim:.2f} "
          f"agent_cpu_s_per_gib={out_cpu.used['agent'] / gib:.2f} first_byte_ms={statistics.median(lat_ms):.1f} "
          f"uss1_kib={one['USS']} uss{nshims}_kib={round(mean([m['USS'] for m in many]))} "
          f"peak_uss_kib={peak_uss} grpcio_uss_kib={ref['uss']} grpcio_busy_uss_kib={ref['busy_uss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
