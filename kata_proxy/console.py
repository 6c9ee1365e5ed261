"""Guest console forwarding (``--agent-logs-socket PATH``).

Connects to the VM console socket, splits what arrives into lines and logs each line with
``source=agent`` (and ``sandbox=<id>`` from the formatter) at the proxy's own log level, so that
guest lines always pass the level filter.  Lines longer than ``MAX_LINE`` are cut into pieces.

It never blocks the data path: it is an independent task, it only reads, and logging goes
through the non-blocking log handler.  Connecting is retried until ``timeout``; after the
console closes it reconnects at most ``reconnects`` times, then gives up with one log line.
Failures here are never fatal to the proxy.
"""

from __future__ import annotations

import asyncio
import logging

from kata_proxy import log as klog
from kata_proxy.channel import ChannelError, connect_unix_retry

MAX_LINE = 8192
READ_SIZE = 65536

_CONTROL = {c: None for c in range(0x20) if c not in (0x09,)}
_CONTROL[0x7F] = None


def clean_line(raw: bytes) -> str:
    """A console line as text: undecodable bytes replaced, CR and control characters removed."""
    text = raw.decode("utf-8", errors="replace")
    return text.translate(_CONTROL).rstrip()


class LineSplitter:
    """Accumulates bytes and yields complete lines (without the newline), bounded in length."""

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        lines = []
        while True:
            idx = self.buf.find(b"\n")
            if idx < 0:
                while len(self.buf) >= self.max_line:
                    lines.append(bytes(self.buf[: self.max_line]))
                    del self.buf[: self.max_line]
                return lines
            line = bytes(self.buf[:idx])
            del self.buf[: idx + 1]
            while len(line) > self.max_line:
                lines.append(line[: self.max_line])
                line = line[self.max_line :]
            lines.append(line)

    def flush(self) -> list[bytes]:
        rest, self.buf = bytes(self.buf), bytearray()
        return [rest] if rest else []


class ConsoleForwarder:
    def __init__(self, path: str, *, level: int, timeout: float = 30.0, reconnects: int = 5):
        self.path = path
        self.level = level
        self.timeout = timeout
        self.reconnects = reconnects
        self.lines = 0
        self.log = logging.getLogger(klog.AGENT_LOGGER)
        self.plog = logging.getLogger("kata_proxy.console")

    def _emit(self, raw: bytes) -> None:
        text = clean_line(raw)
        if text:
            self.lines += 1
            self.log.log(self.level, text)

    async def _pump(self, sock) -> None:
        loop = asyncio.get_running_loop()
        splitter = LineSplitter()
        while True:
            data = await loop.sock_recv(sock, READ_SIZE)
            if not data:
                for line in splitter.flush():
                    self._emit(line)
                return
            for line in splitter.feed(data):
                self._emit(line)

    async def run(self) -> None:
        attempts = 0
        while True:
            try:
                wait = self.timeout if attempts == 0 else min(self.timeout, 5.0)
                sock = await connect_unix_retry(self.path, wait, what="agent logs socket")
            except ChannelError as exc:
                self.plog.warning("guest console not forwarded: %s", exc.message)
                return
            self.plog.debug("forwarding guest console from %s", self.path)
            try:
                await self._pump(sock)
                reason = "closed"
            except OSError as exc:
                reason = exc.strerror or str(exc)
            finally:
                sock.close()
            attempts += 1
            if attempts > self.reconnects:
                self.plog.info("guest console %s %s; not reconnecting (%d attempts)",
                               self.path, reason, attempts - 1)
                return
            self.plog.debug("guest console %s %s; reconnecting", self.path, reason)
            await asyncio.sleep(min(0.1 * attempts, 1.0))
