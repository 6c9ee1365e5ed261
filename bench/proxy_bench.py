"""kata-proxy benchmark: gRPC round trips and bulk throughput through the proxy, and its memory.

    python -m bench.proxy_bench [--quick] [--calls N] [--mib N]

Processes (all real, on this machine): the agent stand-in tests/peers/yamux_health_server.py
(a yamux server whose streams are spliced to a grpc.aio server on a private unix socket), a
kata-proxy connected to it, and this client.

- gRPC unary round trip (grpc.Health/Check, blocking client, one call at a time), p50 and p99:
  (direct)   the peer's gRPC unix socket, no proxy and no yamux;
  (proxy)    through kata-proxy: client -> proxy -> yamux -> peer -> splice -> the same server;
  (2 relays) for context: two plain unix-socket relay processes (uvloop, no yamux) in front of
             the same server -- the same number of process hops as the proxy path, so the floor
             that any proxy + bridging agent pays on this machine;
  (1 relay)  for context: the first of those relays alone -- the floor of any design with one
             process hop (a proxy in front of an agent serving gRPC on its yamux streams).
- Bulk MiB/s, one stream, upload (sink, checked with sha256) and download (generated pattern):
  (yamux)  this process as the yamux client straight to the peer: yamux alone;
  (proxy)  a plain unix socket to kata-proxy, which carries it over yamux to the same peer;
  (relay)  for context: the yamux client of (yamux) through one plain relay process (uvloop, no
           yamux in it) to the same peer -- what one extra process hop costs, whatever it does.
  One warm-up transfer per configuration and direction, then interleaved timed runs.
- CPU of every process in the path (from /proc/PID/task/*/schedstat: all threads, ns), per
  unary call and per MiB: throughput on this machine follows the summed CPU of the path more
  than any one process (see bench/RESULTS.md).
- Proxy memory (RSS, PSS, USS) idle (after the runs above) and with 100 client connections
  open, each with its yamux stream open (an echo round trip done on each).

Targets (issue 3): unary p50 via proxy <= 1.15x direct; bulk via proxy >= 0.9x yamux alone.
Never asserts timings.  The last line is machine-readable:

    RESULT unary_p50_ratio=.. unary_p99_ratio=.. relays_p50_ratio=.. bulk_up_ratio=.. bulk_down_ratio=.. rss_idle_kb=.. rss_100_kb=..
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time

from tests.support.processes import Proc, child_env, wait_line
from tests.support.proxy import pattern, start_peer, start_proxy

MiB = 1 << 20


RELAY = r"""
import asyncio, socket, sys, uvloop
src, dst = sys.argv[1], sys.argv[2]
class Half(asyncio.Protocol):
    def __init__(self):
        self.other = None; self.transport = None; self.early = []
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        if self.other.transport is None:
            self.early.append(data)
        else:
            self.other.transport.write(data)
    def eof_received(self):
        if self.other.transport is not None:
            self.other.transport.write_eof()
        return True
    def connection_lost(self, exc):
        if self.other.transport is not None:
            self.other.transport.close()
async def main():
    loop = asyncio.get_running_loop()
    async def serve(conn):
        a, b = Half(), Half()
        a.other, b.other = b, a
        await loop.connect_accepted_socket(lambda: a, conn)
        await loop.create_unix_connection(lambda: b, dst)
        for data in a.early:
            b.transport.write(data)
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(src); lsock.listen(64); lsock.setblocking(False)
    print("READY", flush=True)
    while True:
        conn, _ = await loop.sock_accept(lsock)
        conn.setblocking(False)
        asyncio.ensure_future(serve(conn))
uvloop.run(main())
"""


def start_relay(src: str, dst: str) -> Proc:
    import subprocess

    popen = subprocess.Popen([sys.executable, "-c", RELAY, src, dst], stdout=subprocess.PIPE,
                             env=child_env())
    wait_line(popen, "READY", 20)
    return Proc(popen, "relay")


def cpu_seconds(pid: int) -> float:
    """CPU time of all threads of ``pid`` so far (schedstat: ns resolution, unlike the 10 ms
    ticks of /proc/PID/stat)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return float("nan")
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # the thread ended meanwhile
    return total / 1e9


class CpuMeter:
    """CPU seconds used by some processes between start() and stop(), accumulated per name."""

    def __init__(self, pids: dict):
        self.pids = pids  # name -> pid
        self.used: dict = {name: 0.0 for name in pids}
        self._start: dict = {}

    def start(self) -> None:
        self._start = {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def stop(self) -> None:
        for name, pid in self.pids.items():
            self.used[name] += cpu_seconds(pid) - self._start[name]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[k]


# --------------------------------------------------------------------------- gRPC


def unary_rtts(target: str, calls: int, warmup: int, meter: CpuMeter | None = None) -> list[float]:
    import grpc
    from katapb import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.CheckRequest(service="bench")
        for _ in range(warmup):
            stub.Check(request, timeout=30)
        out = []
        if meter is not None:
            meter.start()
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            stub.Check(request, timeout=30)
            out.append((time.perf_counter_ns() - t0) / 1000.0)
        if meter is not None:
            meter.stop()
    return out


# --------------------------------------------------------------------------- bulk


async def _bulk_over(reader_read, write, drain, write_eof, total: int, direction: str) -> float:
    t0 = time.perf_counter()
    if direction == "up":
        digest = hashlib.sha256()
        write(b"S")
        for block in pattern(total):
            digest.update(block)
            write(block)
            await drain()
        await write_eof()
        reply = b""
        while len(reply) < 40:
            chunk = await reader_read(40 - len(reply))
            if not chunk:
                raise RuntimeError("sink closed early")
            reply += bytes(chunk)
        elapsed = time.perf_counter() - t0
        count, = struct.unpack(">Q", reply[:8])
        if count != total or reply[8:] != digest.digest():
            raise RuntimeError("upload was not byte-exact")
    else:
        write(b"G" + struct.pack(">Q", total))
        await drain()
        got = 0
        while True:
            chunk = await reader_read(1 << 20)
            if not chunk:
                break
            got += len(chunk)
        elapsed = time.perf_counter() - t0
        await write_eof()
        if got != total:
            raise RuntimeError(f"download got {got} of {total} bytes")
    return total / MiB / elapsed


async def bulk_via_proxy(path: str, total: int, direction: str) -> float:
    """A plain unix-socket client (sock_sendall / sock_recv_into: no StreamReader copies)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    await loop.sock_connect(sock, path)
    buf = bytearray(1 << 20)
    view = memoryview(buf)

    async def read(n: int) -> bytes:
        got = await loop.sock_recv_into(sock, view[: min(n, len(buf))])
        return view[:got]

    pending = []

    def write(data) -> None:
        pending.append(data)

    async def drain() -> None:
        while pending:
            await loop.sock_sendall(sock, pending.pop(0))

    async def eof() -> None:
        await drain()
        sock.shutdown(socket.SHUT_WR)

    try:
        return await _bulk_over(read, write, drain, eof, total, direction)
    finally:
        sock.close()


async def bulk_via_yamux(path: str, total: int, direction: str) -> float:
    from yamux import Session

    session = await Session.connect_unix(path, client=True)
    try:
        stream = await session.open_stream()

        async def eof():
            stream.write_eof()

        mibs = await _bulk_over(stream.read, stream.write, stream.drain, eof, total, direction)
        if direction == "up":
            while await stream.read(65536):
                pass
        return mibs
    finally:
        await session.close()


def new_loop():
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run_async(coro):
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(coro)


# --------------------------------------------------------------------------- memory


def open_clients(path: str, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(path)
        s.sendall(b"E.")
        if s.recv(1) != b".":
            raise RuntimeError("echo failed")
        socks.append(s)
    return socks


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="kata-proxy benchmark")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--calls", type=int, help="unary calls per configuration (2000)")
    parser.add_argument("--mib", type=int, help="MiB per bulk transfer (256)")
    parser.add_argument("--repeat", type=int, default=None, help="bulk runs per figure, median (5)")
    args = parser.parse_args(argv)
    calls = args.calls or (200 if args.quick else 2000)
    warmup = 50 if args.quick else 300
    total = (args.mib or (8 if args.quick else 256)) * MiB
    repeat = args.repeat or (1 if args.quick else 5)

    workdir = tempfile.mkdtemp(prefix="kpb", dir="/tmp")
    started = []
    me = os.getpid()
    try:
        peer = start_peer(workdir, uvloop=os.environ.get("PEER_UVLOOP", "1") == "1")
        started.append(peer)
        proxy = start_proxy(workdir, mux=peer.listen, log_level="warn")
        started.append(proxy)

        relay1 = start_relay(os.path.join(workdir, "relay1.sock"), peer.grpc_socket)
        started.append(relay1)
        relay2 = start_relay(os.path.join(workdir, "relay2.sock"), os.path.join(workdir, "relay1.sock"))
        started.append(relay2)

        # interleaved rounds, so that load from elsewhere on the machine hits all alike
        rtts: dict = {"direct": [], "proxy": [], "relays": [], "relay": []}
        targets = {"direct": peer.grpc_socket, "proxy": proxy.listen,
                   "relays": os.path.join(workdir, "relay2.sock"),
                   "relay": os.path.join(workdir, "relay1.sock")}
        unary_cpu = {name: CpuMeter({"peer": peer.pid, "proxy": proxy.pid, "relays1": relay1.pid,
                                     "relays2": relay2.pid, "client": me}) for name in targets}
        # 10 rounds: the load of other work on a shared machine drifts within seconds
        rounds = 10
        for _ in range(rounds):
            for name, target in targets.items():
                rtts[name] += unary_rtts("unix:" + target, calls // rounds, warmup // rounds,
                                         unary_cpu[name])
        relay2.stop()
        relay1.stop()
        d50, d99 = percentile(rtts["direct"], 0.5), percentile(rtts["direct"], 0.99)
        p50, p99 = percentile(rtts["proxy"], 0.5), percentile(rtts["proxy"], 0.99)
        r50, r99 = percentile(rtts["relays"], 0.5), percentile(rtts["relays"], 0.99)
        o50, o99 = percentile(rtts["relay"], 0.5), percentile(rtts["relay"], 0.99)

        relay = start_relay(os.path.join(workdir, "relay.sock"), peer.listen)
        started.append(relay)
        configs = (("yamux", bulk_via_yamux, peer.listen, None),
                   ("proxy", bulk_via_proxy, proxy.listen, proxy.pid),
                   ("relay", bulk_via_yamux, os.path.join(workdir, "relay.sock"), relay.pid))
        for direction in ("up", "down"):
            for name, fn, target, _ in configs:
                run_async(fn(target, min(total, 32 * MiB), direction))  # warm-up
        # interleaved runs, so that load from elsewhere on the machine hits all alike
        runs: dict = {}
        bulk_cpu: dict = {}
        for _ in range(repeat):
            for direction in ("up", "down"):
                for name, fn, target, hop in configs:
                    pids = {"peer": peer.pid, "client": me}
                    if hop is not None:
                        pids["hop"] = hop
                    meter = bulk_cpu.setdefault((name, direction), CpuMeter(pids))
                    meter.start()
                    runs.setdefault((name, direction), []).append(
                        run_async(fn(target, total, direction)))
                    meter.stop()
        relay.stop()
        bulk = {key: statistics.median(values) for key, values in runs.items()}
        # CPU per MiB of each process, over all runs of a configuration
        moved = repeat * total / MiB
        bulk_ms = {key: {p: 1000.0 * used / moved for p, used in meter.used.items()}
                   for key, meter in bulk_cpu.items()}

        mem_idle = proxy.memory_kb()
        clients = open_clients(proxy.listen, 100)
        time.sleep(0.2)
        mem_100 = proxy.memory_kb()
        streams = proxy.stats()["streams"]
        for s in clients:
            s.close()
    finally:
        for proc in reversed(started):
            proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        import uvloop  # noqa: F401
        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    print(f"kata-proxy bench  {platform.python_implementation()} {platform.python_version()} "
          f"{loop}  {os.cpu_count()} cpus  calls={calls} bulk={total // MiB} MiB x{repeat}")
    print()
    print(f"{'gRPC unary round trip (Health/Check)':44} {'p50 us':>9} {'p99 us':>9}")
    print(f"{'(direct) unix socket to the gRPC server':44} {d50:9.0f} {d99:9.0f}")
    print(f"{'(proxy)  through kata-proxy + yamux':44} {p50:9.0f} {p99:9.0f}")
    print(f"{'(2 relays) two plain relays, no yamux':44} {r50:9.0f} {r99:9.0f}")
    print(f"{'(1 relay) one plain relay, no yamux':44} {o50:9.0f} {o99:9.0f}")
    print(f"{'ratio proxy/direct (target <= 1.15)':44} {p50 / d50:9.2f} {p99 / d99:9.2f}")
    print(f"{'ratio 2 relays/direct (the hop floor)':44} {r50 / d50:9.2f} {r99 / d99:9.2f}")
    print(f"{'ratio 1 relay/direct (one-hop floor)':44} {o50 / d50:9.2f} {o99 / d99:9.2f}")
    print()
    print(f"{'CPU per call (us), all threads':44} {'server':>9} {'hops':>9} {'client':>9}")
    for name, label in (("direct", "(direct)"), ("proxy", "(proxy)  hops: kata-proxy"),
                        ("relays", "(2 relays) hops: both relays"), ("relay", "(1 relay) hop: the relay")):
        used = unary_cpu[name].used
        hops = {"direct": 0.0, "proxy": used["proxy"], "relays": used["relays1"] + used["relays2"],
                "relay": used["relays1"]}[name]
        print(f"{label:44} {1e6 * used['peer'] / calls:9.0f} {1e6 * hops / calls:9.0f} "
              f"{1e6 * used['client'] / calls:9.0f}")
    print()
    print(f"{'bulk, one stream (MiB/s)':44} {'up':>9} {'down':>9}")
    print(f"{'(yamux)  yamux client straight to the peer':44} "
          f"{bulk[('yamux', 'up')]:9.1f} {bulk[('yamux', 'down')]:9.1f}")
    print(f"{'(proxy)  unix socket through kata-proxy':44} "
          f"{bulk[('proxy', 'up')]:9.1f} {bulk[('proxy', 'down')]:9.1f}")
    print(f"{'(relay)  yamux client through one plain relay':44} "
          f"{bulk[('relay', 'up')]:9.1f} {bulk[('relay', 'down')]:9.1f}")
    up_ratio = bulk[("proxy", "up")] / bulk[("yamux", "up")]
    down_ratio = bulk[("proxy", "down")] / bulk[("yamux", "down")]
    print(f"{'ratio proxy/yamux (target >= 0.9)':44} {up_ratio:9.2f} {down_ratio:9.2f}")
    print(f"{'ratio relay/yamux (one plain extra hop)':44} "
          f"{bulk[('relay', 'up')] / bulk[('yamux', 'up')]:9.2f} "
          f"{bulk[('relay', 'down')] / bulk[('yamux', 'down')]:9.2f}")

    def path_ms(name, direction):
        return sum(bulk_ms[(name, direction)].values())

    print(f"{'ratio of summed path CPU, yamux/proxy':44} "
          f"{path_ms('yamux', 'up') / path_ms('proxy', 'up'):9.2f} "
          f"{path_ms('yamux', 'down') / path_ms('proxy', 'down'):9.2f}")
    print()
    print(f"{'CPU per MiB (ms), all threads':44} {'peer':>9} {'hop':>9} {'client':>9} {'sum':>9}")
    for direction in ("up", "down"):
        for name, label in (("yamux", "yamux alone"), ("proxy", "proxy (hop: kata-proxy)"),
                            ("relay", "relay (hop: plain relay)")):
            ms = bulk_ms[(name, direction)]
            print(f"{f'{direction:5} {label}':44} {ms['peer']:9.3f} {ms.get('hop', 0.0):9.3f} "
                  f"{ms['client']:9.3f} {path_ms(name, direction):9.3f}")
    print()
    print(f"{'proxy memory (KiB)':44} {'RSS':>9} {'PSS':>9} {'USS':>9}")
    print(f"{'idle (after the runs above)':44} {mem_idle['rss']:9d} {mem_idle['pss']:9d} {mem_idle['uss']:9d}")
    print(f"{'100 client connections open':44} {mem_100['rss']:9d} {mem_100['pss']:9d} "
          f"{mem_100['uss']:9d}   (live streams: {streams})")
    print()
    print(f"RESULT unary_p50_ratio={p50 / d50:.2f} unary_p99_ratio={p99 / d99:.2f} "
          f"relays_p50_ratio={r50 / d50:.2f} "
          f"bulk_up_ratio={up_ratio:.2f} bulk_down_ratio={down_ratio:.2f} "
          f"rss_idle_kb={mem_idle['rss']} rss_100_kb={mem_100['rss']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
