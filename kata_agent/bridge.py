"""The yamux side of kata-agent: channel -> yamux SERVER session -> gRPC.

Every stream the host (kata-proxy, the yamux client) opens is one gRPC
connection: the bridge connects a unix socket to the agent's gRPC server (a
private socket in the agent's state directory) and splices the two byte
streams. grpc.aio cannot serve an arbitrary byte stream, so a private socket is
the simplest correct glue; one local connect(2) per stream costs microseconds
and streams are long-lived (one per shim and one for the runtime).

Keepalive is off, as in Kata 1.x (the proxy pings at 1 Hz as a heartbeat and
ignores failures; the session answers its pings).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from kata_agent.channel import Channel, Transport

log = logging.getLogger("kata_agent.bridge")

# After the session ends, live splices get this long to notice before they are cancelled.
DRAIN_TIMEOUT = 2.0


def session_config():
    from yamux import Config

    return Config(enable_keepalive=False)


async def open_session(transport: Transport, config=None):
    """A yamux SERVER session on one host connection; the transport is handed over.

    A socket is owned by the session from then on; a device fd is duplicated by
    yamux, so our copy is closed here.
    """
    from yamux import Session

    config = session_config() if config is None else config
    if transport.sock is not None:
        return await Session.from_socket(transport.sock, client=False, config=config)
    try:
        return await Session.from_fd(transport.fd, client=False, config=config)
    finally:
        transport.close()


class Bridge:
    """Serve yamux streams by splicing each to the unix socket `target`.

    `ready` (optional) is awaited before the first connect, so the session can
    start answering the host while the gRPC server is still coming up.
    """

    def __init__(self, target: str, *, ready: asyncio.Event | None = None, config=None):
        self.target = target
        self.ready = ready
        self.config = config
        self.session = None
        self.streams_served = 0
        self._tasks: set[asyncio.Task] = set()

    async def run(self, channel: Channel) -> str:
        """Serve host connections until the channel is gone; returns why.

        A reusable channel (the VM's virtio port) is waited on again after each
        session, so a restarted proxy can reconnect; a socket channel ends the
        bridge with its one session.
        """
        while True:
            transport = await channel.connect()
            log.info("channel: host connected (%s)", transport.description)
            try:
                session = await open_session(transport, self.config)
            except BaseException:
                transport.close()
                raise
            reason = await self.serve_session(session)
            if not channel.reusable:
                return f"{reason} ({transport.description})"
            log.warning("channel: %s (%s); waiting for the host to reconnect", reason, transport.description)

    async def serve_session(self, session) -> str:
        """Accept streams until the session ends; returns a one-line reason."""
        from yamux import SessionClosedError

        self.session = session
        try:
            while True:
                try:
                    stream = await session.accept_stream()
                except SessionClosedError:
                    break
                task = asyncio.ensure_future(self._serve_stream(stream))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self.session = None
            await session.close()
            await self._drain()
        error = session.error
        return "the host hung up" if error is None else f"session ended: {error}"

    async def _serve_stream(self, stream) -> None:
        from yamux import splice

        self.streams_served += 1
        if self.ready is not None and not self.ready.is_set():
            await self.ready.wait()
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, self.target)
        except OSError as exc:
            sock.close()
            log.error("stream: cannot reach the gRPC server at %s: %s", self.target, exc)
            stream.reset()
            return
        try:
            await splice(stream, sock)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one stream failing must not take the bridge down
            log.debug("stream %s: splice ended with %r", getattr(stream, "id", "?"), exc)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=DRAIN_TIMEOUT)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def close(self) -> None:
        """Stop serving: close the current session (Go Away, then the transport)."""
        if self.session is not None:
            await self.session.close()
