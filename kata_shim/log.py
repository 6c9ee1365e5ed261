"""kata-shim's logger: one logfmt (or JSON) line per record, never on the container's stdio.

The shim's stdout and stderr ARE the container's, so log lines go elsewhere:
to ``--log-file`` when given, else to syslog through /dev/log when it exists
(as the original, which logged to syslog only), else nowhere.  The one line a
fatal error prints on stderr is written by the shim itself, not by this module.

Each line carries ``time level msg name=kata-shim pid source=shim container
exec-id`` and the record's own fields, in that order: levels, fields and the line
format are :mod:`kata_log`'s (shared with the proxy and the agent).  Deliberately
tiny (no ``logging``): the shim is one process per container process.
"""

from __future__ import annotations

import _socket  # the C socket type: the socket module's Python layer costs the shim's start ~3 ms
import os
import time

from kata_log import LEVELS, entry, format_line, parse_format

#: level number -> syslog severity (debug 7, info 6, warning 4, error 3, fatal: crit 2)
_SYSLOG_SEVERITY = {10: 7, 20: 6, 30: 4, 40: 3, 50: 2}
SYSLOG_PATH = "/dev/log"


class Logger:
    """kata-shim's logger: ``log.info("msg", key=value, ...)`` writes one line at or above ``level``.

    ``level`` and ``fmt`` are kata_log's names (ValueError for an unknown format; an unknown
    level is ``warn``); ``file`` to append to (OSError when it cannot be opened), else syslog
    when ``use_syslog`` and /dev/log exists, else nowhere.  Writing never raises.
    """

    def __init__(self, level: str = "warn", fmt: str = "text", *, file: str = "",
                 container: str = "", exec_id: str = "", use_syslog: bool = True) -> None:
        self.level = LEVELS.get(level, LEVELS["warn"])
        self.json = parse_format(fmt)
        self.pid = os.getpid()
        self.context = []
        if container:
            self.context.append(("container", container))
        if exec_id:
            self.context.append(("exec-id", exec_id))
        self.fd = -1
        self.sock = None
        if file:
            self.fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        elif use_syslog and os.path.exists(SYSLOG_PATH):
            try:
                sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
                sock.connect(SYSLOG_PATH)
                self.sock = sock
            except OSError:
                self.sock = None

    @property
    def enabled(self) -> bool:
        return self.fd >= 0 or self.sock is not None

    def line(self, levelno: int, msg: str, fields: dict) -> str:
        """One line (no newline) of ``msg`` and ``fields`` at ``levelno``, stamped now."""
        items = entry(time.time(), levelno, msg, name="kata-shim", pid=self.pid, source="shim",
                      context=self.context, fields=fields)
        return format_line(items, as_json=self.json)

    def log(self, levelno: int, msg: str, fields: dict) -> None:
        if levelno < self.level or not self.enabled:
            return
        text = self.line(levelno, msg, fields)
        try:
            if self.fd >= 0:
                os.write(self.fd, (text + "\n").encode("utf-8", "replace"))
            else:
                pri = 8 + _SYSLOG_SEVERITY.get(levelno, 6)  # facility user
                self.sock.send(f"<{pri}>kata-shim[{os.getpid()}]: {text}".encode("utf-8", "replace"),
                               _socket.MSG_DONTWAIT)
        except OSError:
            pass  # logging must never stop the relay

    def debug(self, msg: str, **fields) -> None:
        self.log(10, msg, fields)

    def info(self, msg: str, **fields) -> None:
        self.log(20, msg, fields)

    def warning(self, msg: str, **fields) -> None:
        self.log(30, msg, fields)

    def error(self, msg: str, **fields) -> None:
        self.log(40, msg, fields)
