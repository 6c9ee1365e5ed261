"""yamux benchmark: bulk echo throughput and small-message round trips.

    python -m bench.yamux_bench [--quick] [--repeat N]

Four configurations, measured in one run on this machine, each with the echo
server in a separate process from the client:

  (a) raw unix socket, Python asyncio Protocols + uvloop at both ends (no
      yamux; the transport layer yamux's fast path runs on): the ceiling for
      Python code on this loop
  (b) Python yamux client <-> Python yamux server (both uvloop)
  (c) Python yamux client <-> Go yamux server (Debian hashicorp/yamux)
  (d) Go yamux client <-> Go yamux server (tests/interop/goyamux, `bench`)

Figures: bulk echo throughput in MiB/s echoed (bytes that went out and came
back, divided by wall time) with 1 and 8 concurrent streams (8 connections for
(a)) and 64 KiB writes; and 64-byte round trips (write, then read the 64-byte
echo) on one stream, p50 and p99 in microseconds; plus the CPU time (user +
system, client and server processes together) spent per GiB echoed in the
1-stream bulk run, which a busy shared machine disturbs far less than
throughput. After an unrecorded
warm-up, every round measures all four configurations in turn (so background
load spreads over all of them); each figure is the median of --repeat rounds.
The last line is machine-readable:

    RESULT bulk1_vs_go=<(b)/(d)> bulk8_vs_go=<(b)/(d)> rtt_p50_vs_go=<(b)/(d)>

(throughput ratios: higher is better; the latency ratio: lower is better).
Never asserts timings; `--quick` is a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GO_PKG = "./tests/interop/goyamux"
MiB = 1 << 20
GiB = 1 << 30
CHUNK = 64 * 1024
READ_SIZE = 256 * 1024
MSG = 64
PAYLOAD = os.urandom(CHUNK)  # bytes: yamux keeps bytes as they are, copies other buffers


# ------------------------------------------------------------------ helpers


def build_go(outdir: Path) -> str | None:
    """Build the Go peer against Debian's hashicorp/yamux, offline, in GOPATH
    mode. Returns the binary's path, or None when `go` is not installed."""
    go = shutil.which("go")
    if go is None:
        return None
    out = outdir / "goyamux"
    env = dict(
        os.environ,
        GO111MODULE="off",
        GOPATH="/usr/share/gocode",
        GOFLAGS="",
        GOPROXY="off",
        GOCACHE=str(outdir / "gocache"),
    )
    subprocess.run(
        [go, "build", "-o", str(out), GO_PKG],
        cwd=REPO, env=env, check=True, capture_output=True, timeout=300,
    )
    return str(out)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # the baseline then says "asyncio" in the header
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def loop_name() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio (no uvloop)"
    return f"uvloop {uvloop.__version__}"


class Server:
    """A server subprocess that prints READY once it listens."""

    def __init__(self, argv: list[str], log: Path):
        self.argv = argv
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "Server":
        self._logf = open(self.log, "ab")
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=self._logf,
        )
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        except asyncio.TimeoutError:
            line = b""
        if line.strip() != b"READY":
            await self.__aexit__()
            raise RuntimeError(f"server {self.argv} did not start; see {self.log}")
        self._drain = asyncio.ensure_future(self._drain_stdout())
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def _drain_stdout(self) -> None:
        while await self.proc.stdout.readline():
            pass

    async def __aexit__(self, *exc) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._logf.close()


def cpu_seconds(pid: int | str = "self") -> float:
    """CPU time (user + system) of all live threads of a process, from
    /proc/PID/task/*/schedstat (nanoseconds)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total / 1e9


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


# ------------------------------------------------------------ raw (a) peers
# asyncio Protocols on both ends: the same transport layer that the yamux
# session's fast path (connect_unix / from_socket) reads and writes through,
# with no stream-reader buffering on top.


class RawEcho(asyncio.Protocol):
    """Server: write back whatever arrives; stop reading while writes back up."""

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data) -> None:
        self.transport.write(data)

    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()

    def eof_received(self) -> bool:
        return False  # close once the echo is flushed


class RawClient(asyncio.Protocol):
    """Client: counts received bytes; drain() honours transport flow control."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.received = 0
        self.want = 0
        self.waiter: asyncio.Future | None = None
        self.paused: asyncio.Future | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data) -> None:
        self.received += len(data)
        if self.waiter is not None and self.received >= self.want:
            self.waiter.set_result(None)
            self.waiter = None

    def pause_writing(self) -> None:
        self.paused = self.loop.create_future()

    def resume_writing(self) -> None:
        if self.paused is not None:
            self.paused.set_result(None)
            self.paused = None

    def connection_lost(self, exc) -> None:
        self.lost = exc or ConnectionError("connection closed")
        for fut in (self.waiter, self.paused):
            if fut is not None and not fut.done():
                fut.set_exception(self.lost)

    async def drain(self) -> None:
        if self.paused is not None:
            await self.paused

    async def wait_received(self, total: int) -> None:
        if self.received >= total:
            return
        if self.lost is not None:
            raise RuntimeError(f"raw: connection lost after {self.received} of {total} bytes")
        self.want = total
        self.waiter = self.loop.create_future()
        await self.waiter


async def raw_connect(path: str) -> RawClient:
    _, proto = await asyncio.get_running_loop().create_unix_connection(RawClient, path)
    return proto


async def raw_bulk(path: str, streams: int, per_stream: int) -> float:
    async def one() -> None:
        proto = await raw_connect(path)

        async def send() -> None:
            left = per_stream
            while left:
                n = min(CHUNK, left)
                proto.transport.write(PAYLOAD if n == CHUNK else PAYLOAD[:n])
                await proto.drain()
                left -= n
            proto.transport.write_eof()

        await asyncio.gather(send(), proto.wait_received(per_stream))
        proto.transport.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(streams)))
    return streams * per_stream / (time.perf_counter() - t0) / MiB


async def raw_rtt(path: str, trips: int) -> list[float]:
    proto = await raw_connect(path)
    msg = bytes(MSG)
    lat = []
    clock = time.perf_counter_ns
    total = 0
    for _ in range(trips):
        t0 = clock()
        proto.transport.write(msg)
        await proto.drain()
        total += MSG
        await proto.wait_received(total)
        lat.append((clock() - t0) / 1e3)
    proto.transport.close()
    return lat


# --------------------------------------------------------- yamux (b)/(c) peers


async def yamux_echo_stream(stream) -> None:
    try:
        while data := await stream.read(READ_SIZE):
            stream.write(data)
            await stream.drain()
        stream.close()
    except Exception:
        stream.reset()


async def yamux_serve_session(session) -> None:
    tasks = set()
    try:
        while True:
            stream = await session.accept_stream()
            task = asyncio.ensure_future(yamux_echo_stream(stream))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    except Exception:
        pass
    finally:
        await session.close()


async def yamux_bulk(path: str, streams: int, per_stream: int) -> float:
    from yamux import Session

    session = await Session.connect_unix(path, client=True)

    async def one() -> None:
        stream = await session.open_stream()

        async def send() -> None:
            left = per_stream
            while left:
                n = min(CHUNK, left)
                stream.write(PAYLOAD if n == CHUNK else PAYLOAD[:n])
                await stream.drain()
                left -= n
            stream.write_eof()

        async def receive() -> None:
            got = 0
            while got < per_stream:
                data = await stream.read(READ_SIZE)
                if not data:
                    raise RuntimeError(f"yamux: early EOF after {got} bytes")
                got += len(data)

        await asyncio.gather(send(), receive())
        stream.close()

    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(streams)))
        return streams * per_stream / (time.perf_counter() - t0) / MiB
    finally:
        await session.close()


async def yamux_rtt(path: str, trips: int) -> list[float]:
    from yamux import Session

    session = await Session.connect_unix(path, client=True)
    try:
        stream = await session.open_stream()
        msg = bytes(MSG)
        lat = []
        clock = time.perf_counter_ns
        for _ in range(trips):
            t0 = clock()
            stream.write(msg)
            await stream.drain()
            await stream.readexactly(MSG)
            lat.append((clock() - t0) / 1e3)
        stream.close()
        return lat
    finally:
        await session.close()


# ------------------------------------------------------------- server mode


async def serve(kind: str, path: str) -> None:
    if os.path.exists(path):
        os.unlink(path)
    if kind == "raw":
        server = await asyncio.get_running_loop().create_unix_server(RawEcho, path)
        print("READY", flush=True)
        async with server:
            await server.serve_forever()
    else:  # the session's fast transport path (an asyncio.Protocol), as the proxy uses it
        from yamux import Session

        loop = asyncio.get_running_loop()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        listener.setblocking(False)
        print("READY", flush=True)
        sessions = set()
        while True:
            conn, _ = await loop.sock_accept(listener)
            session = await Session.from_socket(conn, client=False)
            task = asyncio.ensure_future(yamux_serve_session(session))
            sessions.add(task)
            task.add_done_callback(sessions.discard)


# -------------------------------------------------------------- measurement


class Figures:
    def __init__(self, name: str):
        self.name = name
        self.bulk1: list[float] = []
        self.bulk8: list[float] = []
        self.p50: list[float] = []
        self.p99: list[float] = []
        self.cpu1: list[float] = []  # CPU seconds (client + server) per GiB echoed, 1 stream
        self.error: str | None = None

    def med(self, attr: str) -> float | None:
        values = getattr(self, attr)
        return statistics.median(values) if values else None

    def add_rtt(self, lat: list[float]) -> None:
        lat = sorted(lat)
        self.p50.append(percentile(lat, 0.50))
        self.p99.append(percentile(lat, 0.99))


async def measure_python(fig: Figures, path: str, kind: str, args, server_pid: int) -> None:
    bulk = raw_bulk if kind == "raw" else yamux_bulk
    rtt = raw_rtt if kind == "raw" else yamux_rtt
    cpu0 = cpu_seconds() + cpu_seconds(server_pid)
    fig.bulk1.append(await bulk(path, 1, args.bulk_bytes))
    fig.cpu1.append((cpu_seconds() + cpu_seconds(server_pid) - cpu0) / (args.bulk_bytes / GiB))
    fig.bulk8.append(await bulk(path, 8, args.bulk_bytes // 8))
    fig.add_rtt(await rtt(path, args.trips))


async def run_go_bench(go: str, path: str, *flags: str) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        go, "bench", "-connect", path, *flags,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    if proc.returncode != 0:
        raise RuntimeError(f"go bench {flags}: {out.decode()} {err.decode()[-2000:]}")
    values: dict[str, float] = {}
    for line in out.decode().splitlines():
        if line.startswith("BENCH "):
            for field in line.split()[2:]:
                key, _, value = field.partition("=")
                values[key] = float(value)
    return values


async def measure_go(fig: Figures, go: str, path: str, args, server_pid: int) -> None:
    b1 = args.bulk_bytes
    b8 = args.bulk_bytes // 8
    server0 = cpu_seconds(server_pid)
    bulk1 = await run_go_bench(go, path, "-streams", "1", "-bytes", str(b1), "-rtt", "0")
    fig.bulk1.append(bulk1["mibps"])
    fig.cpu1.append((bulk1["cpu_s"] + cpu_seconds(server_pid) - server0) / (b1 / GiB))
    fig.bulk8.append((await run_go_bench(go, path, "-streams", "8", "-bytes", str(b8), "-rtt", "0"))["mibps"])
    rtt = await run_go_bench(go, path, "-streams", "", "-rtt", str(args.trips))
    fig.p50.append(rtt["p50_us"])
    fig.p99.append(rtt["p99_us"])


def have_yamux() -> str | None:
    try:
        from yamux import Session  # noqa: F401
    except ImportError as exc:
        return f"yamux package not importable ({exc})"
    return None


async def bench(args) -> list[Figures]:
    """All servers stay up for the whole run; each round measures every
    configuration once, so background load on a shared machine spreads over
    all of them instead of hitting one."""
    tmp = Path(tempfile.mkdtemp(prefix="yxbench", dir="/tmp"))
    py = [sys.executable, "-m", "bench.yamux_bench", "--serve"]
    raw = Figures("(a) raw unix socket, py <-> py")
    pyy = Figures("(b) yamux py client <-> py server")
    pygo = Figures("(c) yamux py client <-> go server")
    gogo = Figures("(d) yamux go client <-> go server")
    try:
        async with contextlib.AsyncExitStack() as stack:
            go = await asyncio.to_thread(build_go, tmp)
            missing_yamux = have_yamux()
            runs = []  # (figures, run(figures, sizes) -> coroutine)
            raw_sock = str(tmp / "raw.sock")
            raw_srv = await stack.enter_async_context(Server(py + ["raw", raw_sock], tmp / "raw.log"))
            runs.append((raw, lambda fig, a: measure_python(fig, raw_sock, "raw", a, raw_srv.pid)))
            if missing_yamux:
                pyy.error = pygo.error = missing_yamux
            else:
                py_sock = str(tmp / "py.sock")
                py_srv = await stack.enter_async_context(Server(py + ["yamux", py_sock], tmp / "py.log"))
                runs.append((pyy, lambda fig, a: measure_python(fig, py_sock, "yamux", a, py_srv.pid)))
            if go is None:
                pygo.error = pygo.error or "go not installed"
                gogo.error = "go not installed"
            else:
                go_sock = str(tmp / "go.sock")
                go_srv = await stack.enter_async_context(Server([go, "server", "-listen", go_sock], tmp / "go.log"))
                if not missing_yamux:
                    runs.append((pygo, lambda fig, a: measure_python(fig, go_sock, "yamux", a, go_srv.pid)))
                runs.append((gogo, lambda fig, a: measure_go(fig, go, go_sock, a, go_srv.pid)))
            # one small unrecorded round first: imports, first connections, caches
            warm = argparse.Namespace(bulk_bytes=1 * MiB, trips=200)
            for fig, run in runs:
                try:
                    await run(Figures("warm-up"), warm)
                except Exception as exc:
                    fig.error = f"{type(exc).__name__}: {exc}"
            for _ in range(args.repeat):
                for fig, run in runs:
                    if fig.error:
                        continue
                    try:
                        await run(fig, args)
                    except Exception as exc:
                        fig.error = f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [raw, pyy, pygo, gogo]


def size(n: int) -> str:
    return f"{n / MiB:g} MiB" if n >= MiB else f"{n / 1024:g} KiB"


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def report(figs: list[Figures], args) -> None:
    raw, pyy, pygo, gogo = figs
    go_version = "none"
    if shutil.which("go"):
        go_version = subprocess.run(["go", "env", "GOVERSION"], capture_output=True, text=True).stdout.strip()
    print(
        f"yamux bench, {datetime.date.today().isoformat()}, this machine: "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()} + {loop_name()}, {go_version}, "
        f"Debian hashicorp/yamux"
    )
    print(
        f"bulk: {size(args.bulk_bytes)} echoed per run (1 stream, or 8 x {size(args.bulk_bytes // 8)}), "
        f"{CHUNK // 1024} KiB writes; rtt: {args.trips} x {MSG} B on one stream; median of {args.repeat} interleaved round(s)"
    )
    header = (
        f"{'configuration':<36} {'bulk1 MiB/s':>12} {'bulk8 MiB/s':>12} {'rtt p50 us':>11} {'rtt p99 us':>11}"
        f" {'bulk1 CPU s/GiB':>16}"
    )
    print(header)
    print("-" * len(header))
    for f in figs:
        if f.error and not f.bulk1:
            print(f"{f.name:<36} {'skipped: ' + f.error}")
            continue
        print(
            f"{f.name:<36} {fmt(f.med('bulk1')):>12} {fmt(f.med('bulk8')):>12} "
            f"{fmt(f.med('p50'), 1):>11} {fmt(f.med('p99'), 1):>11} {fmt(f.med('cpu1'), 2):>16}"
        )
    for f in (pyy, pygo):
        print(
            f"{'ratio ' + f.name[:3] + ' / (d)':<36} {fmt(ratio(f.med('bulk1'), gogo.med('bulk1')), 2):>12} "
            f"{fmt(ratio(f.med('bulk8'), gogo.med('bulk8')), 2):>12} "
            f"{fmt(ratio(f.med('p50'), gogo.med('p50')), 2):>11} {fmt(ratio(f.med('p99'), gogo.med('p99')), 2):>11}"
            f" {fmt(ratio(f.med('cpu1'), gogo.med('cpu1')), 2):>16}"
        )
    for f in figs:
        if f.error and f.bulk1:
            print(f"note: {f.name}: {f.error}")
    print(
        f"RESULT bulk1_vs_go={fmt(ratio(pyy.med('bulk1'), gogo.med('bulk1')), 2)} "
        f"bulk8_vs_go={fmt(ratio(pyy.med('bulk8'), gogo.med('bulk8')), 2)} "
        f"rtt_p50_vs_go={fmt(ratio(pyy.med('p50'), gogo.med('p50')), 2)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.yamux_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run (small sizes)")
    parser.add_argument("--repeat", type=int, default=None, help="rounds (median of them); default 5, quick 1")
    parser.add_argument("--bulk-mib", type=int, default=None, help="MiB echoed per bulk run; default 256, quick 4")
    parser.add_argument("--trips", type=int, default=None, help="64-byte round trips; default 10000, quick 500")
    parser.add_argument("--serve", nargs=2, metavar=("raw|yamux", "SOCK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from yamux import tune_malloc

    tune_malloc()  # as kata-proxy and kata-agent do at their entry points
    if args.serve:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(serve(*args.serve))
        return 0
    args.repeat = args.repeat or (1 if args.quick else 5)
    args.bulk_bytes = (args.bulk_mib or (4 if args.quick else 256)) * MiB
    args.trips = args.trips or (500 if args.quick else 10000)
    with asyncio.Runner(loop_factory=new_loop) as runner:
        figs = runner.run(bench(args))
    report(figs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
