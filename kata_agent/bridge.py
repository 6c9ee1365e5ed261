"""The yamux side of kata-agent: channel -> yamux SERVER session -> gRPC.

Every stream the host (kata-proxy, the yamux client) opens is one HTTP/2
connection of unary gRPC calls, served on the stream itself by kata_grpc
(``serve_connection(stream, stream, handlers)``, handlers from kata_agent.service):
no private socket, no splice. Streams are long-lived (one per shim and one for the
runtime), and the calls on one stream are served concurrently.

Keepalive is off, as in Kata 1.x (the proxy pings at 1 Hz as a heartbeat and
ignores failures; the session answers its pings).
"""

from __future__ import annotations

import asyncio
import logging

from kata_agent.channel import Channel, Transport

log = logging.getLogger("kata_agent.bridge")

# After the session ends, live connections get this long to notice before they are cancelled.
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
    """Serve gRPC on each yamux stream of the host's sessions with ``handlers`` (path ->
    ``async (request bytes) -> response bytes``, kata_agent.service.handlers)."""

    def __init__(self, handlers: dict, *, config=None):
        self.handlers = handlers
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
        """One HTTP/2 connection on ``stream``, until the host closes it or it breaks."""
        from kata_grpc.aio import serve_connection

        self.streams_served += 1
        try:
            reason = await serve_connection(stream, stream, self.handlers)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one stream failing must not take the bridge down
            reason = repr(exc)
        log.debug("stream %s: %s", getattr(stream, "id", "?"), reason)

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
