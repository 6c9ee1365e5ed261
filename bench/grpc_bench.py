"""Unary gRPC servers compared: kata_grpc's (no grpcio) vs grpcio's grpc.aio, same grpcio client.

    python -m bench.grpc_bench [--quick] [--rounds N] [--calls N] [--starts N]

Both servers run as subprocesses on uvloop (as kata-agent does), serving the real katapb
methods with protobuf messages: grpc.Health/Check (a tiny request and reply) and
grpc.AgentService/ReadStdout answering 1 MiB.  One blocking grpcio channel per server, in this
process; the two servers take turns (interleaved rounds, same run), so load on the machine
falls on both alike.

- per call: wall time of each call (p50, p90, ms) and the server's CPU (utime + stime of its
  process, /proc/PID/stat) over each batch, divided by the calls (ms/call);
- start: a fresh ``python`` subprocess per start (interleaved), from Popen to the server
  listening (it prints READY once serving; median and min, ms), and that process's CPU by then.
  kata_grpc, katapb and bench/ are byte-compiled first, as an installed package is (grpcio's
  modules are, by pip).

Never asserts.  The last line is machine-readable:

    RESULT check_p50_ours=.. check_p50_grpcio=.. check_cpu_ours=.. ... start_ours=.. start_grpcio=..
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVERS = ("ours", "grpcio")
BLOB = bytes(range(256)) * 4096  # 1 MiB


# ------------------------------------------------------------------ the servers (subprocesses)


async def _serve_ours(path: str) -> None:
    import asyncio

    from katapb import agent_pb2, health_pb2
    from kata_grpc.aio import serve_unix

    async def check(request: bytes) -> bytes:
        health_pb2.CheckRequest.FromString(request)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING).SerializeToString()

    async def read_stdout(request: bytes) -> bytes:
        agent_pb2.ReadStreamRequest.FromString(request)
        return agent_pb2.ReadStreamResponse(data=BLOB).SerializeToString()

    await serve_unix(path, {"/grpc.Health/Check": check, "/grpc.AgentService/ReadStdout": read_stdout})
    print("READY", time.process_time(), flush=True)
    await asyncio.Event().wait()


async def _serve_grpcio(path: str) -> None:
    import asyncio

    import grpc

    from katapb import agent_pb2, agent_pb2_grpc, health_pb2, health_pb2_grpc

    class Health(health_pb2_grpc.HealthServicer):
        async def Check(self, request, context):
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    class Agent(agent_pb2_grpc.AgentServiceServicer):
        async def ReadStdout(self, request, context):
            return agent_pb2.ReadStreamResponse(data=BLOB)

    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                      ("grpc.max_send_message_length", 64 << 20), ("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    agent_pb2_grpc.add_AgentServiceServicer_to_server(Agent(), server)
    server.add_insecure_port("unix:" + path)
    await server.start()
    print("READY", time.process_time(), flush=True)
    await asyncio.Event().wait()


def serve(kind: str, path: str) -> None:
    """Run one server until killed (the subprocess side of the bench)."""
    import uvloop

    uvloop.run(_serve_ours(path) if kind == "ours" else _serve_grpcio(path))


# ------------------------------------------------------------------ the bench (this process)


class Server:
    """One server subprocess on a socket in ``tmp``."""

    def __init__(self, kind: str, tmp: str) -> None:
        self.kind = kind
        self.path = os.path.join(tmp, f"{kind}-{time.monotonic_ns()}.sock")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.grpc_bench", "--serve", kind, self.path],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        self.start_ms = (time.perf_counter() - t0) * 1000
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"{kind} server did not start: {line!r}")
        self.start_cpu_ms = float(line.split()[1]) * 1000

    def cpu(self) -> float:
        """Seconds of CPU (user + system) the server has used."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        try:
            os.unlink(self.path)
        except OSError:
            pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure_calls(rounds: int, calls: int, big_calls: int) -> dict:
    import grpc

    from katapb import agent_pb2, agent_pb2_grpc, health_pb2, health_pb2_grpc

    tmp = tempfile.mkdtemp(prefix="grpc-bench-")
    servers = {kind: Server(kind, tmp) for kind in SERVERS}
    stats = {kind: {"check": [], "check_cpu": 0.0, "big": [], "big_cpu": 0.0} for kind in SERVERS}
    channels = {}
    try:
        stubs = {}
        for kind, server in servers.items():
            channel = grpc.insecure_channel("unix:" + server.path,
                                            options=[("grpc.max_receive_message_length", 64 << 20)])
            channels[kind] = channel
            stubs[kind] = (health_pb2_grpc.HealthStub(channel), agent_pb2_grpc.AgentServiceStub(channel))
            stubs[kind][0].Check(health_pb2.CheckRequest())  # connected, warm
            stubs[kind][1].ReadStdout(agent_pb2.ReadStreamRequest(len=1 << 20))
        check_req = health_pb2.CheckRequest(service="bench")
        read_req = agent_pb2.ReadStreamRequest(container_id="c", exec_id="e", len=1 << 20)
        for _ in range(rounds):
            for kind in SERVERS:
                health, agent = stubs[kind]
                s = stats[kind]
                cpu0 = servers[kind].cpu()
                for _ in range(calls):
                    t0 = time.perf_counter()
                    health.Check(check_req)
                    s["check"].append((time.perf_counter() - t0) * 1000)
                s["check_cpu"] += servers[kind].cpu() - cpu0
                cpu0 = servers[kind].cpu()
                for _ in range(big_calls):
                    t0 = time.perf_counter()
                    reply = agent.ReadStdout(read_req)
                    s["big"].append((time.perf_counter() - t0) * 1000)
                    assert len(reply.data) == len(BLOB)
                s["big_cpu"] += servers[kind].cpu() - cpu0
    finally:
        for channel in channels.values():
            channel.close()
        for server in servers.values():
            server.stop()
        os.rmdir(tmp)
    return stats


def measure_starts(starts: int) -> dict:
    tmp = tempfile.mkdtemp(prefix="grpc-bench-")
    out = {kind: {"wall": [], "cpu": []} for kind in SERVERS}
    try:
        for _ in range(starts):
            for kind in SERVERS:
                server = Server(kind, tmp)
                out[kind]["wall"].append(server.start_ms)
                out[kind]["cpu"].append(server.start_cpu_ms)
                server.stop()
    finally:
        os.rmdir(tmp)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: few calls and starts")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200, help="Check calls per server per round")
    parser.add_argument("--big", type=int, default=10, help="1 MiB calls per server per round")
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return
    if args.quick:
        args.rounds, args.calls, args.big, args.starts = 2, 20, 2, 1
    # byte-compiled first, as installed packages are (this machine sets PYTHONDONTWRITEBYTECODE)
    import compileall

    for tree in ("kata_grpc", "proto/katapb", "bench"):
        compileall.compile_dir(os.path.join(REPO, tree), quiet=1)
    stats = measure_calls(args.rounds, args.calls, args.big)
    starts = measure_starts(args.starts)
    result = {}
    print(f"unary gRPC servers, grpcio client, {args.rounds} interleaved rounds of {args.calls} Check + "
          f"{args.big} ReadStdout(1 MiB) each; {args.starts} starts each; load {os.getloadavg()[0]:.2f}")
    print(f"{'':38} {'kata_grpc':>12} {'grpc.aio':>12}")
    rows = []
    for what, label in (("check", "Check"), ("big", "ReadStdout 1 MiB")):
        for q, qname in ((0.5, "p50"), (0.9, "p90")):
            vals = [percentile(stats[k][what], q) for k in SERVERS]
            rows.append((f"{label} {qname} (ms)", vals))
            for k, v in zip(SERVERS, vals):
                result[f"{what}_{qname}_{k}"] = f"{v:.3f}"
        vals = [stats[k][f"{what}_cpu"] * 1000 / len(stats[k][what]) for k in SERVERS]
        rows.append((f"{label} server CPU (ms/call)", vals))
        for k, v in zip(SERVERS, vals):
            result[f"{what}_cpu_{k}"] = f"{v:.3f}"
    for label, key, pick in (("start, median (ms)", "wall", statistics.median), ("start, min (ms)", "wall", min),
                             ("start CPU, median (ms)", "cpu", statistics.median)):
        vals = [pick(starts[k][key]) for k in SERVERS]
        rows.append((label, vals))
        for k, v in zip(SERVERS, vals):
            result[f"{key}_{label.split(',')[1].split()[0]}_{k}"] = f"{v:.1f}"
    for label, (a, b) in rows:
        print(f"{label:38} {a:12.3f} {b:12.3f}")
    print("RESULT " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
