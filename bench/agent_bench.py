"""kata-agent benchmark: agent-side stdio throughput (no proxy, no shim).

    python -m bench.agent_bench [--quick] [--mib N]

The agent's gRPC service runs alone (``python -m kata_agent.standalone``, uvloop,
as kata-agent's CLI runs it) on a unix socket; containers are real runc
containers of a busybox rootfs; the client is grpcio (grpc.aio) in this process.

- stdout MiB/s: container ``dd if=/dev/zero bs=1M count=N``; ReadStdout in a loop (len 1 MiB,
  and 32 KiB as kata-shim's io.Copy asks) from StartContainer to EOF.
- stdin MiB/s: WriteStdin of N in 1 MiB calls to a container ``dd of=/dev/null bs=1M
  iflag=fullblock``, CloseStdin, its record count read back and checked.
- CPU: utime+stime of the agent process (and of this client) over each stdout
  run, per GiB and per ReadStdout call -- steadier than MiB/s on a busy machine.
- ceiling: ``dd if=/dev/zero bs=1M count=N | cat`` through plain pipes on the
  host (the same busybox, read by this process in 1 MiB reads); printed as a
  ratio. (busybox ``head -c`` is no producer for this: ~100 MiB/s here.)

Figures only; never asserts on timing. The last line is machine-readable:

    RESULT stdout_mib_s=.. stdout_32k_mib_s=.. stdin_mib_s=.. pipe_mib_s=.. ratio=..
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import time


MiB = 1 << 20


def pipe_ceiling(n: int, busybox: str) -> float:
    """MiB/s of `dd if=/dev/zero bs=1M count=.. | cat` read by this process from a pipe."""
    p = subprocess.Popen(f"{busybox} dd if=/dev/zero bs=1M count={n // MiB} 2>/dev/null | "
                         f"{busybox} cat", shell=True,
                         stdout=subprocess.PIPE, bufsize=0)
    fd = p.stdout.fileno()
    got = 0
    t0 = time.perf_counter()
    while True:
        b = os.read(fd, MiB)
        if not b:
            break
        got += len(b)
    dt = time.perf_counter() - t0
    p.wait()
    assert got == n, (got, n)
    return n / MiB / dt


def cpu_s(pid: int) -> float:
    """utime + stime of pid (not its children), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def self_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Run:
    def __init__(self, mib_s: float, calls: int, agent_cpu: float, client_cpu: float, n: int):
        self.mib_s = mib_s
        self.calls = calls
        self.agent_us_per_call = agent_cpu / calls * 1e6
        self.agent_ms_per_gib = agent_cpu / (n / (1 << 30)) * 1e3
        self.client_us_per_call = client_cpu / calls * 1e6


async def stdout_run(client, n: int, read_len: int) -> Run:
    cid = await client.create(["dd", "if=/dev/zero", "bs=1M", f"count={n // MiB}"])
    calls = 0

    def sink(_data):
        nonlocal calls
        calls += 1

    pid = client.server.proc.pid
    a0, c0 = cpu_s(pid), self_cpu_s()
    t0 = time.perf_counter()
    await client.start(cid)
    got = await client.read_all(cid, n=read_len, sink=sink)
    dt = time.perf_counter() - t0
    a1, c1 = cpu_s(pid), self_cpu_s()
    assert got == n, (got, n)
    assert await client.wait(cid) == 0
    await client.read_all(cid, stderr=True)  # dd's summary
    return Run(n / MiB / dt, calls + 1, a1 - a0, c1 - c0, n)


async def stdin_run(client, n: int) -> float:
    cid = await client.create(["dd", "of=/dev/null", "bs=1M", "iflag=fullblock"], start=True)
    chunk = b"\0" * MiB
    t0 = time.perf_counter()
    left = n
    while left:
        part = chunk if left >= MiB else chunk[:left]
        await client.write(cid, part)
        left -= len(part)
    await client.close_stdin(cid)
    out = await client.read_all(cid, stderr=True)  # "N+0 records in"
    dt = time.perf_counter() - t0
    assert out.startswith(f"{n // MiB}+0 records in".encode()), out
    assert await client.wait(cid) == 0
    return n / MiB / dt


async def run(args) -> dict:
    from tests.support.agent import AgentClient, AgentServer
    from tests.support.rootfs import find_busybox

    n = args.mib * MiB
    server = AgentServer(extra_args=tuple(args.agent_arg))
    res = {}
    try:
        server.create_sandbox()
        client = AgentClient(server)
        try:
            await stdout_run(client, min(n, 8 * MiB), MiB)  # warm-up
            reps = 1 if args.quick else 3
            best = max([await stdout_run(client, n, MiB) for _ in range(reps)],
                       key=lambda r: r.mib_s)
            res["stdout_mib_s"] = best.mib_s
            res["agent_cpu_ms_per_gib"] = best.agent_ms_per_gib
            res["agent_us_per_1m_call"] = best.agent_us_per_call
            res["client_us_per_1m_call"] = best.client_us_per_call
            small = n if args.quick else min(n, 64 * MiB)
            best = max([await stdout_run(client, small, 32 << 10) for _ in range(reps)],
                       key=lambda r: r.mib_s)
            res["stdout_32k_mib_s"] = best.mib_s
            res["agent_us_per_32k_call"] = best.agent_us_per_call
            res["client_us_per_32k_call"] = best.client_us_per_call
            res["stdin_mib_s"] = max([await stdin_run(client, n) for _ in range(reps)])
        finally:
            await client.close()
    finally:
        server.stop()
        server.cleanup()
    busybox = find_busybox()
    res["pipe_mib_s"] = max(pipe_ceiling(n, busybox) for _ in range(1 if args.quick else 3))
    res["ratio"] = res["stdout_mib_s"] / res["pipe_mib_s"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.agent_bench")
    ap.add_argument("--quick", action="store_true", help="32 MiB, one run each (CI smoke)")
    ap.add_argument("--mib", type=int, default=None, help="MiB per run (default 256)")
    ap.add_argument("--agent-arg", action="append", default=[],
                    help="extra argument for python -m kata_agent.standalone (repeatable)")
    args = ap.parse_args(argv)
    if args.mib is None:
        args.mib = 32 if args.quick else 256
    res = asyncio.run(run(args))
    print(f"kata-agent stdio, agent side only ({platform.node()}, {os.cpu_count()} cpus, "
          f"python {platform.python_version()}), {args.mib} MiB per run")
    print(f"{'path':58} {'MiB/s':>9}")
    print(f"{'container stdout -> ReadStdout len=1MiB (grpc.aio client)':58} {res['stdout_mib_s']:9.1f}")
    print(f"{'container stdout -> ReadStdout len=32KiB (kata-shim size)':58} {res['stdout_32k_mib_s']:9.1f}")
    print(f"{'WriteStdin 1MiB calls -> container dd of=/dev/null':58} {res['stdin_mib_s']:9.1f}")
    print(f"{'ceiling: dd | cat through a plain pipe':58} {res['pipe_mib_s']:9.1f}")
    print(f"stdout ratio agent/pipe: {res['ratio']:.3f}")
    print(f"agent CPU: {res['agent_cpu_ms_per_gib']:.0f} ms per GiB of stdout; per ReadStdout call "
          f"{res['agent_us_per_1m_call']:.0f} us (1 MiB) / {res['agent_us_per_32k_call']:.0f} us "
          f"(32 KiB); grpc.aio client {res['client_us_per_1m_call']:.0f} / "
          f"{res['client_us_per_32k_call']:.0f} us")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("RESULT " + " ".join(f"{k}={v:.3f}" if k == "ratio" else f"{k}={v:.1f}"
                               for k, v in res.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
