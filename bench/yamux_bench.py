"""yamux benchmark: bulk echo throughput and small-message round trips.

    python -m bench.yamux_bench [--quick] [--repeat N]

Four configurations, measured in one run on this machine, each with the echo
server in a separate process from the client:

  (a) raw unix socket, Python asyncio streams + uvloop at both ends (no yamux):
      the ceiling for any Python code on this loop
  (b) Python yamux client <-> Python yamux server (both uvloop)
  (c) Python yamux client <-> Go yamux server (Debian hashicorp/yamux)
  (d) Go yamux client <-> Go yamux server (tests/interop/goyamux, `bench`)

Figures: bulk echo throughput in MiB/s echoed (bytes that went out and came
back, divided by wall time) with 1 and 8 concurrent streams (8 connections for
(a)) and 64 KiB writes; and 64-byte round trips (write, then read the 64-byte
echo) on one stream, p50 and p99 in microseconds. Each figure is the median
of --repeat runs. The last line is machine-readable:

    RESULT bulk1_vs_go=<(b)/(d)> bulk8_vs_go=<(b)/(d)> rtt_p50_vs_go=<(b)/(d)>

(throughput ratios: higher is better; the latency ratio: lower is better).
Never asserts timings; `--quick` is a smoke run of a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
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
CHUNK = 64 * 1024
READ_SIZE = 256 * 1024
MSG = 64
PAYLOAD = memoryview(os.urandom(CHUNK))


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

    async def _drain_stdout(self) -> None:
        while await self.proc.stdout.readline():
            pass

    async def __aexit__(self, *exc) -> None:
        if self.proc and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._logf.close()


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * p))]


# ------------------------------------------------------------ raw (a) peers


async def raw_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(READ_SIZE):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def raw_bulk(path: str, streams: int, per_stream: int) -> float:
    async def one() -> None:
        reader, writer = await asyncio.open_unix_connection(path, limit=READ_SIZE)

        async def send() -> None:
            left = per_stream
            while left:
                n = min(CHUNK, left)
                writer.write(PAYLOAD[:n])
                await writer.drain()
                left -= n
            writer.write_eof()

        async def receive() -> None:
            got = 0
            while got < per_stream:
                data = await reader.read(READ_SIZE)
                if not data:
                    raise RuntimeError(f"raw: early EOF after {got} bytes")
                got += len(data)

        await asyncio.gather(send(), receive())
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(streams)))
    return streams * per_stream / (time.perf_counter() - t0) / MiB


async def raw_rtt(path: str, trips: int) -> list[float]:
    reader, writer = await asyncio.open_unix_connection(path)
    msg = bytes(MSG)
    lat = []
    clock = time.perf_counter_ns
    for _ in range(trips):
        t0 = clock()
        writer.write(msg)
        await writer.drain()
        await reader.readexactly(MSG)
        lat.append((clock() - t0) / 1e3)
    writer.close()
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
                stream.write(PAYLOAD[:n])
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
        server = await asyncio.start_unix_server(raw_echo, path, limit=READ_SIZE)
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
        self.error: str | None = None

    def med(self, attr: str) -> float | None:
        values = getattr(self, attr)
        return statistics.median(values) if values else None

    def add_rtt(self, lat: list[float]) -> None:
        lat = sorted(lat)
        self.p50.append(percentile(lat, 0.50))
        self.p99.append(percentile(lat, 0.99))


async def measure_python(fig: Figures, path: str, kind: str, args) -> None:
    bulk = raw_bulk if kind == "raw" else yamux_bulk
    rtt = raw_rtt if kind == "raw" else yamux_rtt
    for _ in range(args.repeat):
        fig.bulk1.append(await bulk(path, 1, args.bulk_bytes))
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


async def measure_go(fig: Figures, go: str, path: str, args) -> None:
    for _ in range(args.repeat):
        b1 = args.bulk_bytes
        b8 = args.bulk_bytes // 8
        fig.bulk1.append((await run_go_bench(go, path, "-streams", "1", "-bytes", str(b1), "-rtt", "0"))["mibps"])
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
    tmp = Path(tempfile.mkdtemp(prefix="yxbench", dir="/tmp"))
    py = [sys.executable, "-m", "bench.yamux_bench", "--serve"]
    raw = Figures("(a) raw unix socket, py <-> py")
    pyy = Figures("(b) yamux py client <-> py server")
    pygo = Figures("(c) yamux py client <-> go server")
    gogo = Figures("(d) yamux go client <-> go server")
    try:
        go = await asyncio.to_thread(build_go, tmp)
        missing_yamux = have_yamux()

        async with Server(py + ["raw", str(tmp / "raw.sock")], tmp / "raw.log"):
            await measure_python(raw, str(tmp / "raw.sock"), "raw", args)

        if missing_yamux:
            pyy.error = pygo.error = missing_yamux
        else:
            try:
                async with Server(py + ["yamux", str(tmp / "py.sock")], tmp / "py.log"):
                    await measure_python(pyy, str(tmp / "py.sock"), "yamux", args)
            except Exception as exc:
                pyy.error = f"{type(exc).__name__}: {exc}"

        if go is None:
            pygo.error = pygo.error or "go not installed"
            gogo.error = "go not installed"
        else:
            async with Server([go, "server", "-listen", str(tmp / "go.sock")], tmp / "go.log"):
                await measure_go(gogo, go, str(tmp / "go.sock"), args)
                if not missing_yamux:
                    try:
                        await measure_python(pygo, str(tmp / "go.sock"), "yamux", args)
                    except Exception as exc:
                        pygo.error = f"{type(exc).__name__}: {exc}"
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
        f"{CHUNK // 1024} KiB writes; rtt: {args.trips} x {MSG} B on one stream; median of {args.repeat} run(s)"
    )
    header = f"{'configuration':<36} {'bulk1 MiB/s':>12} {'bulk8 MiB/s':>12} {'rtt p50 us':>11} {'rtt p99 us':>11}"
    print(header)
    print("-" * len(header))
    for f in figs:
        if f.error and not f.bulk1:
            print(f"{f.name:<36} {'skipped: ' + f.error}")
            continue
        print(
            f"{f.name:<36} {fmt(f.med('bulk1')):>12} {fmt(f.med('bulk8')):>12} "
            f"{fmt(f.med('p50'), 1):>11} {fmt(f.med('p99'), 1):>11}"
        )
    for f in (pyy, pygo):
        print(
            f"{'ratio ' + f.name[:3] + ' / (d)':<36} {fmt(ratio(f.med('bulk1'), gogo.med('bulk1')), 2):>12} "
            f"{fmt(ratio(f.med('bulk8'), gogo.med('bulk8')), 2):>12} "
            f"{fmt(ratio(f.med('p50'), gogo.med('p50')), 2):>11} {fmt(ratio(f.med('p99'), gogo.med('p99')), 2):>11}"
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
    parser.add_argument("--repeat", type=int, default=None, help="runs per figure (median); default 3, quick 1")
    parser.add_argument("--bulk-mib", type=int, default=None, help="MiB echoed per bulk run; default 256, quick 4")
    parser.add_argument("--trips", type=int, default=None, help="64-byte round trips; default 10000, quick 500")
    parser.add_argument("--serve", nargs=2, metavar=("raw|yamux", "SOCK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        with asyncio.Runner(loop_factory=new_loop) as runner:
            runner.run(serve(*args.serve))
        return 0
    args.repeat = args.repeat or (1 if args.quick else 3)
    args.bulk_bytes = (args.bulk_mib or (4 if args.quick else 256)) * MiB
    args.trips = args.trips or (500 if args.quick else 10000)
    with asyncio.Runner(loop_factory=new_loop) as runner:
        figs = runner.run(bench(args))
    report(figs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
