"""A stand-in for the guest agent: a yamux SERVER on a unix socket shaped like QEMU's chardev.

    python tests/peers/yamux_health_server.py --listen SOCK [--mode agent|garbage] [--events FILE]
                                              [--pty PATHFILE]

It listens on SOCK (as QEMU's ``-chardev socket,server=on``) and the proxy connects.  Every
accepted connection becomes a yamux server session; every stream the proxy opens is served by
what its first byte says:

- ``P`` (the HTTP/2 preface of a gRPC client): the stream is bridged with ``yamux.splice`` to a
  private gRPC unix socket (``--grpc-socket``, default ``SOCK.grpc``) served by a real grpc.aio
  server in the same process: ``grpc.Health/Check`` and ``/Version`` (katapb messages), plus raw
  bytes methods ``/kata.test.Peer/Echo`` (unary) and ``/kata.test.Peer/Count`` (server
  streaming: the request is two big-endian u32 ``count, size``; ``count`` replies of ``size``
  bytes each, the first 4 bytes of reply *i* being *i*).
- ``E``: echo until EOF, then half-close.
- ``S``: sink until EOF, then reply ``u64 count || sha256`` and half-close.
- ``G`` + u64 N: send N bytes of the deterministic pattern (tests.support.proxy.pattern), half-close.

``--mode garbage``: no yamux at all; after the first connection is accepted it waits for the
proxy's first bytes (or 0.3 s), sends bytes that are not yamux, then records everything it
receives until EOF and writes ``goaway code=N`` events for the Go Away frames it finds.

``--pty PATHFILE``: instead of a socket, create a pty pair, write the slave's path to PATHFILE
and serve one session on the master (for ``kata-proxy --channel /dev/pts/N``).

Events go one per line to ``--events FILE`` (default: none): ``session open``,
``stream id=N kind=K end=fin|reset|error bytes=M``,
``session closed error=... remote_go_away=True|False``.  ``READY`` is
printed on stdout once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import socket
import struct
import sys
import tty

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # run as a script: python tests/peers/yamux_health_server.py
    sys.path.insert(0, REPO)

from tests.support.proxy import pattern  # noqa: E402  (the bulk data its clients send and check)

class Events:
    def __init__(self, path: str | None):
        self.fh = open(path, "a", buffering=1) if path else None

    def __call__(self, text: str) -> None:
        if self.fh:
            self.fh.write(text + "\n")


# --------------------------------------------------------------------------- gRPC side


async def start_grpc(path: str):
    import grpc
    from katapb import health_pb2, health_pb2_grpc

    class Health(health_pb2_grpc.HealthServicer):
        async def Check(self, request, context):
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        async def Version(self, request, context):
            return health_pb2.VersionCheckResponse(grpc_version="peer", agent_version="peer-0")

    async def echo(request: bytes, context) -> bytes:
        return request

    async def count(request: bytes, context):
        n, size = struct.unpack(">II", request[:8])
        body = b"\xab" * max(size - 4, 0)
        for i in range(n):
            yield struct.pack(">I", i) + body

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(Health(), server)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("kata.test.Peer", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo),
        "Count": grpc.unary_stream_rpc_method_handler(count),
    }),))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server.add_insecure_port("unix:" + path)
    await server.start()
    return server


# --------------------------------------------------------------------------- yamux side


class Peer:
    def __init__(self, args):
        self.args = args
        self.events = Events(args.events)
        self.grpc_socket = args.grpc_socket or args.listen + ".grpc"

    async def serve_stream(self, stream) -> None:
        from yamux import StreamResetError, splice

        kind = "?"
        moved = 0
        end = "fin"
        try:
            first = await stream.read(1)
            if not first:
                kind = "empty"
                stream.close()
                return
            kind = chr(first[0])
            if first == b"P":
                kind = "grpc"
                loop = asyncio.get_running_loop()
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                await loop.sock_connect(sock, self.grpc_socket)
                await loop.sock_sendall(sock, first)
                await splice(stream, sock)
                return
            if first == b"E":
                while True:
                    data = await stream.read(256 * 1024)
                    if not data:
                        break
                    moved += len(data)
                    stream.write(data)
                    await stream.drain()
                stream.write_eof()
            elif first == b"S":
                digest = hashlib.sha256()
                while True:
                    data = await stream.read(256 * 1024)
                    if not data:
                        break
                    moved += len(data)
                    digest.update(data)
                stream.write(struct.pack(">Q", moved) + digest.digest())
                await stream.drain()
                stream.write_eof()
            elif first == b"G":
                (total,) = struct.unpack(">Q", await stream.readexactly(8))
                for block in pattern(total):
                    stream.write(block)
                    await stream.drain()
                    moved += len(block)
                stream.write_eof()
            else:
                end = "unknown-command"
                stream.reset()
                return
            # wait for the other side's FIN so the stream is fully closed
            while await stream.read(65536):
                pass
            stream.close()
        except StreamResetError:
            end = "reset"
        except Exception as exc:  # the session went away, etc.
            end = "error:" + type(exc).__name__
        finally:
            self.events(f"stream id={getattr(stream, 'id', '?')} kind={kind} end={end} bytes={moved}")

    async def serve_session(self, session) -> None:
        self.events("session open")
        tasks = set()
        try:
            while True:
                try:
                    stream = await session.accept_stream()
                except Exception:
                    break
                task = asyncio.ensure_future(self.serve_stream(stream))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            await session.wait_closed()
            self.events(f"session closed error={session.error!r} "
                        f"remote_go_away={getattr(session, 'remote_go_away', '?')}")

    async def on_connection(self, conn: socket.socket) -> None:
        from yamux import Session

        session = await Session.from_socket(conn, client=False)
        await self.serve_session(session)

    async def garbage(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        received = bytearray()
        try:
            received += await asyncio.wait_for(loop.sock_recv(conn, 65536), 0.3)
        except asyncio.TimeoutError:
            pass
        await loop.sock_sendall(conn, b"\x07this is not yamux, it is garbage\n" * 4)
        self.events("garbage sent")
        try:
            while True:
                data = await asyncio.wait_for(loop.sock_recv(conn, 65536), 10)
                if not data:
                    break
                received += data
        except (asyncio.TimeoutError, OSError) as exc:
            self.events(f"garbage read ended: {type(exc).__name__}")
        conn.close()
        offset = 0
        while offset + 12 <= len(received):
            version, ftype, flags, sid, length = struct.unpack(">BBHII", received[offset:offset + 12])
            if ftype == 3:
                self.events(f"goaway code={length}")
            offset += 12 + (length if ftype == 0 else 0)
        self.events(f"garbage done received={len(received)}")

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        grpc_server = None
        if self.args.mode == "agent":
            grpc_server = await start_grpc(self.grpc_socket)
        if self.args.pty:
            from yamux import Session

            master, slave = os.openpty()
            tty.setraw(slave)
            with open(self.args.pty + ".tmp", "w") as fh:
                fh.write(os.ttyname(slave))
            os.rename(self.args.pty + ".tmp", self.args.pty)
            print("READY", flush=True)
            session = await Session.from_fd(master, client=False)
            serving = asyncio.ensure_future(self.serve_session(session))
            await asyncio.wait({serving, asyncio.ensure_future(stop.wait())},
                               return_when=asyncio.FIRST_COMPLETED)
            os.close(slave)
        else:
            lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                os.unlink(self.args.listen)
            except FileNotFoundError:
                pass
            lsock.bind(self.args.listen)
            lsock.listen(16)
            lsock.setblocking(False)
            print("READY", flush=True)
            handler = self.garbage if self.args.mode == "garbage" else self.on_connection
            accepting = asyncio.ensure_future(self._accept(lsock, handler))
            await stop.wait()
            accepting.cancel()
            lsock.close()
        if grpc_server is not None:
            await grpc_server.stop(0.2)

    async def _accept(self, lsock, handler) -> None:
        loop = asyncio.get_running_loop()
        tasks = set()
        while True:
            conn, _ = await loop.sock_accept(lsock)
            conn.setblocking(False)
            task = asyncio.ensure_future(handler(conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, help="unix socket to listen on (like QEMU's chardev)")
    parser.add_argument("--mode", choices=["agent", "garbage"], default="agent")
    parser.add_argument("--grpc-socket", help="private gRPC socket (default: LISTEN.grpc)")
    parser.add_argument("--events", help="append event lines to this file")
    parser.add_argument("--pty", metavar="PATHFILE", help="serve on a pty; write the slave path here")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args(argv)
    if args.uvloop:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    else:
        runner = asyncio.Runner()
    with runner:
        runner.run(Peer(args).main())
    return 0


if __name__ == "__main__":
    sys.exit(main())
