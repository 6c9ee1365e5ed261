"""Logging for kata-proxy: logfmt text or JSON lines, never blocking the event loop.

Every record becomes one line with these fields, in this order::

    time=2026-11-24T17:25:19.123456Z level=info msg="..." name=kata-proxy pid=42 source=proxy sandbox=ID ...

``source`` is ``proxy`` for the proxy's own lines, ``agent`` for guest console lines and
``yamux`` for the multiplexer's.  Levels, fields and the line format (quoting, timestamps,
JSON, where a traceback goes) are :mod:`kata_log`'s, shared with the shim and the agent.  Extra
fields are passed with ``extra=fields(k=v)`` (:func:`kata_log.formatter.fields`).

Lines are queued to a writer thread (the standard library's QueueHandler and QueueListener):
a full log pipe never stalls the data path.  When the bounded queue is full, records are
dropped and counted, and a ``dropped N log lines`` warning is written once the writer catches up.

The module is named ``log`` (not ``logging``) so that it can never shadow the standard library.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import sys
import threading
import time

from kata_log import formatter, parse_level
from kata_log.formatter import fields

__all__ = ["PROXY_LOGGER", "AGENT_LOGGER", "parse_level", "fields", "LineFormatter", "BackgroundHandler",
           "LogSetup", "setup"]

PROXY_LOGGER = "kata_proxy"
AGENT_LOGGER = "kata_proxy.agent"
#: logger name -> ``source=`` value (tried in order; other loggers: their first name part, ``yamux``)
SOURCES = {AGENT_LOGGER: "agent", PROXY_LOGGER: "proxy"}
#: How long closing the handler waits for the writer thread (seconds).
STOP_TIMEOUT = 2.0


class LineFormatter(formatter.LineFormatter):
    """kata_log's line formatter as kata-proxy sets it: ``name=kata-proxy``, ``source`` by logger
    (:data:`SOURCES`), ``sandbox=ID`` on every line when given.  Raises ValueError for ``fmt``."""

    def __init__(self, fmt: str = "text", *, sandbox: str | None = None, name: str = "kata-proxy"):
        super().__init__(fmt, name=name, source=SOURCES, context=[("sandbox", sandbox)] if sandbox else ())


# --------------------------------------------------------------------------- handler


class _LineWriter(logging.StreamHandler):
    """Writes the queued lines (already formatted); a line the stream refuses is lost, silently:
    logging must never take the proxy down, nor write about itself on a broken stderr."""

    def handleError(self, record: logging.LogRecord) -> None:
        pass


class _Writer(logging.handlers.QueueListener):
    """The writer thread: after each line, the dropped-lines notice if lines were dropped."""

    def __init__(self, lines: queue.Queue, handler: logging.Handler, notice):
        super().__init__(lines, handler)
        self.notice = notice

    def handle(self, record: logging.LogRecord) -> None:
        super().handle(record)
        dropped = self.notice()
        if dropped is not None:
            super().handle(dropped)

    def stop(self) -> None:
        """QueueListener.stop, bounded by :data:`STOP_TIMEOUT`: a writer stuck on its stream is
        left behind (a daemon thread) rather than holding up the proxy's exit."""
        if self._thread is None:
            return
        try:
            self.queue.put(self._sentinel, timeout=STOP_TIMEOUT)
        except queue.Full:
            return
        self._thread.join(STOP_TIMEOUT)
        self._thread = None


class BackgroundHandler(logging.handlers.QueueHandler):
    """The stdlib's QueueHandler/QueueListener pair on a bounded queue of ``capacity`` lines.

    Records are formatted on the logging thread and written to ``stream`` by a writer thread, so
    a full log pipe never stalls the data path: when the queue is full a line is dropped and
    counted (:attr:`dropped`), and a ``dropped N log lines`` warning follows the next line
    written.  ``close_stream``: close ``stream`` with the handler.
    """

    def __init__(self, stream, *, capacity: int = 4096, close_stream: bool = False):
        super().__init__(queue.Queue(maxsize=capacity))
        self.stream = stream
        self.close_stream = close_stream
        self.dropped = 0
        self._dropped_lock = threading.Lock()
        self._writer = _Writer(self.queue, _LineWriter(stream), self.dropped_notice)
        self._writer.start()

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            with self._dropped_lock:
                self.dropped += 1

    def dropped_notice(self) -> logging.LogRecord | None:
        """The prepared ``dropped N log lines`` warning for the lines dropped so far (the count
        starts again), or None when none was."""
        if not self.dropped:
            return None
        with self._dropped_lock:
            count, self.dropped = self.dropped, 0
        notice = logging.LogRecord(PROXY_LOGGER, logging.WARNING, __file__, 0,
                                   "dropped %d log lines (log output too slow)", (count,), None)
        return self.prepare(notice)

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (at most ``timeout`` seconds) until the queued lines have been written."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        self._writer.stop()
        if self.close_stream:
            try:
                self.stream.close()
            except OSError:
                pass
        super().close()


class LogSetup:
    """What :func:`setup` installed, so that it can be torn down (tests call setup repeatedly)."""

    def __init__(self, handler: BackgroundHandler, to_stderr: bool, level: int):
        self.handler = handler
        self.to_stderr = to_stderr
        self.level = level

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        self.handler.close()


def setup(*, level: int = logging.WARNING, fmt: str = "text", file: str | None = None,
          sandbox: str | None = None) -> LogSetup:
    """Route all logging (ours, yamux's) to one background handler.  Raises OSError for ``file``."""
    if file:
        stream = open(file, "a", buffering=1, encoding="utf-8", errors="replace")
        close_stream = True
    else:
        stream = sys.stderr
        close_stream = False
    handler = BackgroundHandler(stream, close_stream=close_stream)
    handler.setFormatter(LineFormatter(fmt, sandbox=sandbox))
    root = logging.getLogger()
    for old in list(root.handlers):
        if isinstance(old, BackgroundHandler):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger(PROXY_LOGGER).setLevel(logging.NOTSET)
    return LogSetup(handler, not file, level)
