"""The ``logging.Formatter`` of kata-proxy and kata-agent: one record, one :mod:`kata_log` line.

Both components log through the standard library's ``logging``; this formatter turns a record
into the pairs of :func:`kata_log.entry` (``time level msg name pid source``, the component's
own, ``traceback``, the record's ``fields``) and writes them as logfmt or JSON.  A separate module
because ``logging`` is more than kata-shim's start path may load.

Structured fields ride on the record: ``log.info("x", extra=fields(clients=3))``.
"""

from __future__ import annotations

import logging
import os

from kata_log import entry, format_line, parse_format

__all__ = ["LineFormatter", "fields"]


def fields(**pairs) -> dict:
    """The ``extra=`` argument carrying structured fields: ``log.info("x", extra=fields(a=1))``."""
    return {"fields": pairs}


class LineFormatter(logging.Formatter):
    """Formats a record as one logfmt (``text``, ``logfmt``) or ``json`` line.

    ``name`` is the program (``kata-agent``).  ``source`` is either the one source of every line
    (``"agent"``) or a mapping of logger names to sources, tried in order, a name matching
    itself and its children (``{"kata_proxy.agent": "agent", "kata_proxy": "proxy"}``); a logger
    it does not name speaks as its name's first part (``yamux.session`` -> ``yamux``).
    ``context`` pairs follow ``source`` on every line (``[("sandbox", ID)]``); with ``subsystem``
    the logger name's rest after the first dot is one more (``kata_agent.channel`` ->
    ``subsystem=channel``), as the Go agent's subsystem loggers wrote it.  A logged exception
    becomes the ``traceback`` field.  Raises ValueError for an unknown ``fmt``.
    """

    def __init__(self, fmt: str = "text", *, name: str, source, context=(), subsystem: bool = False):
        super().__init__()
        self.json = parse_format(fmt)
        self.name = name
        self.source = source
        self.context = list(context)
        self.subsystem = subsystem
        self.pid = os.getpid()

    def source_of(self, logger: str) -> str:
        """The ``source`` value of a line logged by the logger named ``logger``."""
        if isinstance(self.source, str):
            return self.source
        for prefix, source in self.source.items():
            if logger == prefix or logger.startswith(prefix + "."):
                return source
        return logger.split(".", 1)[0]

    def context_of(self, record: logging.LogRecord) -> list:
        """The component's pairs of one line: ``context``, then ``subsystem`` when asked for."""
        if self.subsystem and "." in record.name:
            return [*self.context, ("subsystem", record.name.split(".", 1)[1])]
        return self.context

    def traceback_of(self, record: logging.LogRecord) -> str:
        """The formatted exception of the record, or ``""``."""
        if record.exc_info and record.exc_info[1] is not None:
            return self.formatException(record.exc_info)
        return ""

    def items(self, record: logging.LogRecord) -> list:
        """The ``(key, value)`` pairs of the record's line (:func:`kata_log.entry`)."""
        return entry(record.created, record.levelno, record.getMessage(), name=self.name, pid=self.pid,
                     source=self.source_of(record.name), context=self.context_of(record),
                     traceback=self.traceback_of(record), fields=getattr(record, "fields", None))

    def format(self, record: logging.LogRecord) -> str:
        return format_line(self.items(record), as_json=self.json)
