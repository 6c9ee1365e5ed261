"""Serve the agent's gRPC service alone on a unix socket (kata_grpc's server, as on the
yamux streams of the real agent: same handlers, no grpcio).

For tests, benchmarks and debugging on a host: no channel, no yamux, no PID-1
duties (the real entry point is kata_agent/cli.py). Nothing machine-wide is
touched unless --manage-system is given. Prints "ready" once it serves.

    python -m kata_agent.standalone --socket /tmp/a.sock --state-dir /tmp/st \\
        --shared-mount /tmp/shared
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .config import AgentConfig


def parse(argv):
    ap = argparse.ArgumentParser(prog="python -m kata_agent.standalone")
    ap.add_argument("--socket", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--shared-mount", required=True,
                    help="directory holding <container id>/ bundles")
    ap.add_argument("--runc", default="runc")
    ap.add_argument("--buffer-limit", type=int, default=AgentConfig.stream_buffer_limit)
    ap.add_argument("--read-chunk", type=int, default=AgentConfig.read_chunk)
    ap.add_argument("--cgroup-parent", default=AgentConfig.cgroup_parent)
    ap.add_argument("--manage-system", action="store_true")
    ap.add_argument("--log-level", default="warning")
    ap.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                    help="event loop (kata-agent's CLI runs uvloop)")
    return ap.parse_args(argv)


async def amain(args) -> int:
    from .server import start_grpc_server, stop_grpc_server
    cfg = AgentConfig(runc=args.runc, state_dir=args.state_dir, shared_mount=args.shared_mount,
                      stream_buffer_limit=args.buffer_limit, read_chunk=args.read_chunk,
                      log_level=args.log_level,
                      cgroup_parent=args.cgroup_parent, manage_system=args.manage_system)
    server, state = await start_grpc_server(args.socket, cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(s, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await stop_grpc_server(server, state)
    return 0


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper(), logging.WARNING),
                        format="%(asctime)s kata-agent %(levelname)s %(name)s: %(message)s")
    if args.loop == "uvloop":
        import uvloop
        return uvloop.run(amain(args))
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
