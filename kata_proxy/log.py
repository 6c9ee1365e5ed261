"""Logging for kata-proxy: logfmt text or JSON lines, never blocking the event loop.

Every record becomes one line with these fields, in this order::

    time=2026-11-24T17:25:19.123456Z level=info msg="..." name=kata-proxy pid=42 source=proxy sandbox=ID ...

``source`` is ``proxy`` for the proxy's own lines, ``agent`` for guest console lines and
``yamux`` for the multiplexer's.  The line format itself (quoting, timestamps, JSON) is
:mod:`kata_log`'s, shared with the shim and the agent.  Extra fields are passed with ``extra={"fields": {...}}``
(see :func:`fields`).

Lines are queued to a writer thread: a full log pipe never stalls the data path.  When the
bounded queue is full, records are dropped and counted, and a ``dropped N log lines`` notice
is written once the writer catches up.

The module is named ``log`` (not ``logging``) so that it can never shadow the standard library.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time

from kata_log import format_line, format_logfmt, rfc3339

#: Level names accepted on the command line (logrus spellings plus Python's).
LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "fatal": logging.CRITICAL,
    "panic": logging.CRITICAL,
    "critical": logging.CRITICAL,
}

#: The name written in the ``level=`` field (logrus style).
LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "fatal",
}

FORMATS = ("text", "logfmt", "json")

PROXY_LOGGER = "kata_proxy"
AGENT_LOGGER = "kata_proxy.agent"


def parse_level(name: str) -> int:
    """Level number for a command-line level name; ValueError when unknown."""
    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown log level {name!r} (one of: {', '.join(sorted(set(LEVELS)))})"
        ) from None


def level_name(levelno: int) -> str:
    if levelno in LEVEL_NAMES:
        return LEVEL_NAMES[levelno]
    best = logging.DEBUG
    for number in sorted(LEVEL_NAMES):
        if number <= levelno:
            best = number
    return LEVEL_NAMES[best]


def fields(**kw) -> dict:
    """``extra=`` argument carrying structured fields: ``log.info("x", extra=fields(a=1))``."""
    return {"fields": kw}


# --------------------------------------------------------------------------- formatter


def _source(record: logging.LogRecord) -> str:
    name = record.name
    if name == AGENT_LOGGER or name.startswith(AGENT_LOGGER + "."):
        return "agent"
    if name == PROXY_LOGGER or name.startswith(PROXY_LOGGER + "."):
        return "proxy"
    return name.split(".", 1)[0] or "proxy"


class LineFormatter(logging.Formatter):
    """Formats a record as one logfmt (``text``) or JSON line."""

    def __init__(self, fmt: str = "text", *, sandbox: str | None = None, name: str = "kata-proxy"):
        super().__init__()
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r} (one of: text, logfmt, json)")
        self.json = fmt == "json"
        self.sandbox = sandbox
        self.name = name
        self.pid = os.getpid()

    def items(self, record: logging.LogRecord) -> list:
        msg = record.getMessage()
        items = [
            ("time", rfc3339(record.created)),
            ("level", level_name(record.levelno)),
            ("msg", msg),
            ("name", self.name),
            ("pid", self.pid),
            ("source", _source(record)),
        ]
        if self.sandbox:
            items.append(("sandbox", self.sandbox))
        if record.exc_info and record.exc_info[1] is not None:
            # one line still: the traceback is a (quoted, escaped) field
            items.append(("traceback", self.formatException(record.exc_info)))
        extra = getattr(record, "fields", None)
        if extra:
            taken = {k for k, _ in items}
            for key, value in extra.items():
                if key in taken:
                    key = "fields." + key
                items.append((key, value))
        return items

    def format(self, record: logging.LogRecord) -> str:
        return format_line(self.items(record), as_json=self.json)


# --------------------------------------------------------------------------- handler


class BackgroundHandler(logging.Handler):
    """Queues formatted lines for a writer thread; drops (and counts) when the queue is full."""

    _STOP = object()

    def __init__(self, stream, *, capacity: int = 4096, close_stream: bool = False):
        super().__init__()
        self.stream = stream
        self.close_stream = close_stream
        self.queue: queue.Queue = queue.Queue(maxsize=capacity)
        self.dropped = 0
        self._dropped_lock = threading.Lock()
        self._thread = threading.Thread(target=self._writer, name="kata-proxy-log", daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a broken record must never take the proxy down
            self.handleError(record)
            return
        try:
            self.queue.put_nowait(line)
        except queue.Full:
            with self._dropped_lock:
                self.dropped += 1

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text + "\n")
            self.stream.flush()
        except (OSError, ValueError):
            pass

    def _writer(self) -> None:
        while True:
            item = self.queue.get()
            if item is self._STOP:
                self.queue.task_done()
                return
            self._write(item)
            self.queue.task_done()
            if self.dropped:
                with self._dropped_lock:
                    count, self.dropped = self.dropped, 0
                if count:
                    self._write(
                        format_logfmt(
                            [
                                ("time", rfc3339(time.time())),
                                ("level", "warning"),
                                ("msg", f"dropped {count} log lines (log output too slow)"),
                                ("name", "kata-proxy"),
                                ("pid", os.getpid()),
                                ("source", "proxy"),
                            ]
                        )
                    )

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until the queue has been written."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self) -> None:
        if self._thread.is_alive():
            try:
                self.queue.put(self._STOP, timeout=2.0)
            except queue.Full:
                pass
            self._thread.join(timeout=2.0)
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
