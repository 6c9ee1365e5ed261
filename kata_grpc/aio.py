"""asyncio skin of the unary gRPC server core (:mod:`kata_grpc.server`): no grpcio.

API (what kata-agent uses)::

    handlers = {"/grpc.Health/Check": check, "/grpc.AgentService/ExecProcess": exec_process, ...}
    async def check(request: bytes) -> bytes        # serialized request in, serialized reply out
        raise RpcError(NOT_FOUND, "no such process")  # kata_grpc.protocol.RpcError: that status

    await serve_connection(reader, writer, handlers)  # one HTTP/2 connection, until it ends
    server = await serve_unix(path, handlers)       # every connection to a unix socket
    await server.close(grace=1.0)                     # GOAWAY, calls in flight get 1 s, then cancel

``serve_connection`` serves one HTTP/2 connection carried by any byte stream of this shape:
``reader``: ``await read(n) -> bytes`` (up to n bytes; b"" at EOF); ``writer``: ``write(data)``
(queues, never blocks), ``await drain()``, ``close()``.  An asyncio (StreamReader,
StreamWriter) pair fits, and so does a yamux Stream as both (``serve_connection(s, s, h)``):
each yamux stream the host opens is one HTTP/2 connection.  It returns the reason the
connection ended (str); cancelling it cancels the calls in flight and closes the writer.

Each request starts at once, in the loop iteration that received it: a handler that answers
without waiting (Health Check, a signal) is answered there, with no task, no timer and no
extra loop iteration; one that waits continues as its own task, so calls on one connection are
concurrent (a ReadStdout may wait while WriteStdin runs).  A handler's first step therefore
runs in the connection's task: it must not use ``asyncio.current_task()`` or
``asyncio.timeout()`` (``asyncio.wait_for`` is fine).  A handler's RpcError becomes its status
(code, message); a client's RST_STREAM (a cancelled call) or a lost connection cancels the
task; a grpc-timeout cancels it when it expires and answers DEADLINE_EXCEEDED; any other
exception is logged and answered UNKNOWN with its text.  A path missing from ``handlers`` is
answered UNIMPLEMENTED, a message over ``max_message`` bytes (64 MiB, as the agent's grpc.aio
server) RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import collections.abc
import logging
import os

from kata_grpc.protocol import DEADLINE_EXCEEDED, INTERNAL, UNKNOWN, RpcError
from kata_grpc.server import MAX_MESSAGE, ConnectionEnded, RequestReceived, ServerConnection, StreamReset

log = logging.getLogger("kata_grpc.server")

#: bytes asked of ``reader.read`` at a time
READ_SIZE = 256 << 10


class _Continued(collections.abc.Coroutine):
    """A coroutine whose first step already ran (it yielded ``waiting_on``: the future it waits
    for, or None for a bare yield), in the shape a Task runs: the Task's first ``send`` gets
    ``waiting_on``, every later ``send``/``throw`` goes to the coroutine itself.  This is how a
    call starts "eagerly" (Python 3.12's eager tasks do the same inside asyncio)."""

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro, waiting_on) -> None:
        self.coro = coro
        self.waiting_on = waiting_on

    def send(self, value):
        waiting_on = self.waiting_on
        if waiting_on is not _HANDED_OVER:
            self.waiting_on = _HANDED_OVER
            return waiting_on
        return self.coro.send(value)

    def throw(self, typ, val=None, tb=None):
        self.waiting_on = _HANDED_OVER
        if val is None and tb is None:
            return self.coro.throw(typ)
        return self.coro.throw(typ, val, tb)

    def close(self) -> None:
        self.coro.close()

    def __await__(self):
        raise TypeError("a _Continued coroutine is run by a Task, not awaited")


_HANDED_OVER = object()


class _Served:
    """One connection being served: the core, the writer, the calls that wait (as tasks), and
    their deadline timers.  How a call starts and continues: the module docstring and ``start``."""

    def __init__(self, writer, handlers: dict, max_message: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.conn = ServerConnection(handlers, max_message=max_message)
        self.writer = writer
        self.handlers = handlers
        self.tasks: dict[int, asyncio.Task] = {}
        self.deadlines: dict[int, asyncio.TimerHandle] = {}
        self.expired: set[int] = set()
        self.starting = False  # inside handle(): the caller flushes once after every start
        self.broken: str | None = None  # the writer failed

    def flush(self) -> None:
        """Hand everything the core has queued to the writer."""
        if self.broken is not None:
            return
        try:
            segments = self.conn.output()
            if len(segments) == 1:
                self.writer.write(segments[0])
            elif segments:
                self.writer.writelines(segments)  # one writev on uvloop
        except Exception as e:  # the transport is gone (a reset yamux stream, a closed socket)
            self.broken = f"write failed: {e!r}"

    def handle(self, events: list) -> ConnectionEnded | None:
        """Act on the core's events; the ConnectionEnded among them, if any.  The caller
        flushes afterwards (the answers of calls that ended at once go out in one write)."""
        ended = None
        self.starting = True
        try:
            for event in events:
                if isinstance(event, RequestReceived):
                    self.start(event)
                elif isinstance(event, StreamReset):
                    task = self.tasks.get(event.stream_id)
                    if task is not None:
                        task.cancel()
                elif isinstance(event, ConnectionEnded):
                    ended = event
        finally:
            self.starting = False
        return ended

    def start(self, request: RequestReceived) -> None:
        """Run the call's first step now; if it waits, continue it as a task, with its deadline
        (grpc-timeout) counted from then on a loop timer."""
        coro = self.call(request)
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return  # answered (or failed) without waiting
        sid = request.stream_id
        self.tasks[sid] = self.loop.create_task(_Continued(coro, waiting_on))
        if request.timeout is not None:
            self.deadlines[sid] = self.loop.call_later(request.timeout, self._expire, sid)

    def _expire(self, sid: int) -> None:
        """The call's grpc-timeout passed: cancel it; it answers DEADLINE_EXCEEDED."""
        self.deadlines.pop(sid, None)
        task = self.tasks.get(sid)
        if task is not None:
            self.expired.add(sid)
            task.cancel()

    async def call(self, request: RequestReceived) -> None:
        """Run one handler and queue its answer."""
        sid = request.stream_id
        handler = self.handlers[request.path]
        try:
            reply = await handler(request.message)
        except asyncio.CancelledError:
            if sid not in self.expired:
                raise  # the client reset the stream, or the connection is going: nothing to answer
            self.conn.respond_error(sid, DEADLINE_EXCEEDED, "deadline exceeded")
        except RpcError as e:
            self.conn.respond_error(sid, e.code, e.message)
        except Exception as e:
            log.exception("%s failed", request.path)
            self.conn.respond_error(sid, UNKNOWN, str(e) or type(e).__name__)
        else:
            if isinstance(reply, (bytes, bytearray, memoryview)):
                self.conn.respond(sid, reply)
            else:
                log.error("%s returned %s, not bytes", request.path, type(reply).__name__)
                self.conn.respond_error(sid, INTERNAL, f"handler returned {type(reply).__name__}, not bytes")
        finally:
            self.tasks.pop(sid, None)
            timer = self.deadlines.pop(sid, None)
            if timer is not None:
                timer.cancel()
            self.expired.discard(sid)
            if not self.starting:
                self.flush()

    async def stop(self) -> None:
        """Cancel the calls in flight and wait for them."""
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)


async def serve_connection(reader, writer, handlers: dict, *, max_message: int = MAX_MESSAGE,
                           read_size: int = READ_SIZE) -> str:
    """Serve unary gRPC calls on one HTTP/2 connection until it ends (see the module docstring
    for the shapes of ``reader``, ``writer`` and ``handlers``).  Returns why it ended: the
    client closed it, it broke HTTP/2 (GOAWAY sent), or the byte stream failed.  Closes
    ``writer`` in every case, cancelling the calls still running."""
    return await _serve(_Served(writer, handlers, max_message), reader, read_size)


async def _serve(served: _Served, reader, read_size: int = READ_SIZE) -> str:
    writer = served.writer
    served.flush()  # our SETTINGS
    reason = "the client closed the connection"
    try:
        while served.broken is None:
            try:
                data = await reader.read(read_size)
            except (OSError, EOFError, asyncio.IncompleteReadError) as e:
                reason = f"read failed: {e!r}"
                break
            except Exception as e:  # a yamux StreamResetError / SessionClosedError
                reason = f"read failed: {e!r}"
                break
            if not data:
                break
            ended = served.handle(served.conn.receive(data))
            served.flush()
            if ended is not None and not ended.graceful:
                reason = ended.reason
                break
            try:
                await writer.drain()
            except Exception as e:
                served.broken = f"write failed: {e!r}"
        if served.broken is not None:
            reason = served.broken
    finally:
        await served.stop()
        served.flush()  # a GOAWAY still queued
        try:
            writer.close()
        except Exception:
            pass
    log.debug("connection ended: %s", reason)
    return reason


class UnixServer:
    """Serving a unix socket (see :func:`serve_unix`); :meth:`close` stops it."""

    def __init__(self, path: str, handlers: dict, max_message: int) -> None:
        self.path = path
        self.handlers = handlers
        self.max_message = max_message
        self.server: asyncio.AbstractServer | None = None
        self.connections: dict[asyncio.Task, _Served] = {}

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        served = self.connections[task] = _Served(writer, self.handlers, self.max_message)
        try:
            await _serve(served, reader)
        except asyncio.CancelledError:
            pass  # close() stopped it (asyncio's stream callback would log a cancelled task)
        finally:
            self.connections.pop(task, None)

    async def close(self, grace: float = 0.0) -> None:
        """Stop accepting and remove the socket file; with ``grace`` (seconds), first send
        GOAWAY on every connection (no new call is accepted) and let the calls already running
        finish for up to that long; then cancel every connection and what still runs."""
        if self.server is not None:
            self.server.close()
        if grace > 0:
            running = []
            for served in self.connections.values():
                served.conn.close()
                served.flush()
                running += served.tasks.values()
            if running:
                await asyncio.wait(running, timeout=grace)
        tasks = list(self.connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
            self.server = None
        try:
            os.unlink(self.path)
        except OSError:
            pass


async def serve_unix(path: str, handlers: dict, *, max_message: int = MAX_MESSAGE) -> UnixServer:
    """Listen on the unix socket ``path`` (a stale file there is replaced, the socket is
    created mode 0600 and its directory made) and serve each connection with
    :func:`serve_connection`.  Raises OSError when it cannot listen (nothing is left behind)."""
    server = UnixServer(path, handlers, max_message)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    old = os.umask(0o077)
    try:
        server.server = await asyncio.start_unix_server(server._connected, path, limit=READ_SIZE)
    finally:
        os.umask(old)
    return server
