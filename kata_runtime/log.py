"""kata-runtime's log: runc's ``--log FILE``, ``--log-format text|json`` and ``--debug``.

One line per record, appended to the --log file (or stderr without one), in runc's shape
so that a caller that parses runc's log (containerd-shim reads the last
``"level":"error"`` line of ``--log-format json``) parses ours::

    {"level":"error","msg":"container x1 does not exist","time":"2026-11-30T09:54:03Z"}
    time="2026-11-30T09:54:03Z" level=error msg="container x1 does not exist"

JSON keys are sorted (logrus' JSON formatter writes a Go map); the time is RFC 3339 in UTC
with seconds, as logrus' default. Without --debug only warnings and errors are written;
without --log only errors reach stderr (as the plain message, from the error handler).
"""

import os
import sys
import time

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def format_record(level: str, msg: str, fields: dict, as_json: bool) -> str:
    """One log line (no newline): runc's JSON (sorted keys) or logfmt ``time= level= msg=``."""
    items = {"level": level, "msg": msg, "time": _timestamp(), **fields}
    if as_json:
        import json

        return json.dumps(items, sort_keys=True, default=str, ensure_ascii=False, separators=(",", ":"))
    from kata_log import format_logfmt

    ordered = [("time", items.pop("time")), ("level", items.pop("level")), ("msg", items.pop("msg"))]
    return format_logfmt(ordered + list(items.items()))


class Log:
    """The runtime's logger for one command: ``log.debug("msg", key=value)`` etc.

    ``path`` None writes to stderr, but only records at ``warning`` or above (stderr is
    the caller's, and debug lines there would break callers that read it). Never raises:
    a log that cannot be written is dropped.
    """

    def __init__(self, path: str | None = None, fmt: str = "text", debug: bool = False):
        self.path = path
        self.as_json = fmt == "json"
        self.threshold = LEVELS["debug"] if debug and path else LEVELS["warning"]
        self.fields: dict = {}

    def bind(self, **fields) -> None:
        """Add fields (e.g. ``container=ID``) to every later record."""
        self.fields.update(fields)

    def write(self, level: str, msg: str, **fields) -> None:
        if LEVELS[level] < self.threshold:
            return
        line = format_record(level, msg, {**self.fields, **fields}, self.as_json) + "\n"
        try:
            if self.path:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
                try:
                    os.write(fd, line.encode("utf-8", "replace"))
                finally:
                    os.close(fd)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def debug(self, msg: str, **fields) -> None:
        self.write("debug", msg, **fields)

    def info(self, msg: str, **fields) -> None:
        self.write("info", msg, **fields)

    def warning(self, msg: str, **fields) -> None:
        self.write("warning", msg, **fields)

    def error(self, msg: str, **fields) -> None:
        self.write("error", msg, **fields)


#: The current command's log (replaced by the CLI's global flags).
log = Log()


def configure(path: str | None, fmt: str, debug: bool) -> Log:
    """Set the module-level :data:`log` from runc's global flags; returns it."""
    global log
    log = Log(path, fmt, debug)
    return log


def current() -> Log:
    """The log configured for this command (modules hold this, not a stale reference)."""
    return log
