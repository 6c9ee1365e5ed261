"""The one log vocabulary of kata-py: levels, the fields of a line, logfmt (``key=value``) or JSON.

kata-proxy, kata-shim and kata-agent decide here, not each on its own, what a log line holds
and looks like (Go's logrus TextFormatter/JSONFormatter, as the Kata 1.x components wrote them)::

    time=2026-11-24T17:25:19.123456Z level=info msg="..." name=kata-proxy pid=42 source=proxy sandbox=ID k=v

* levels: :data:`LEVELS` (logrus's names and Python's ``critical``) to Python's numbers;
  :func:`level_name` writes logrus's name (``warning``, ``fatal``);
* fields, in this order (:func:`entry`): ``time level msg name pid source``, the component's own
  (``container exec-id``, ``sandbox``, ``subsystem``), ``traceback`` when an exception is logged
  (always a field, never inside ``msg``), then the caller's fields; one whose key is already
  taken is written as ``fields.KEY`` (logrus's prefixFieldClashes);
* values: bare when safe, else double-quoted with Go-style escapes (``\\"`` ``\\\\`` ``\\n``
  ``\\r`` ``\\t``, ``\\u00XX`` for other control characters); ``True``/``False`` are
  ``true``/``false``, ``None`` is ``""``;
* keys: characters a logfmt key cannot hold (space, ``=``, ``"``, backslash, control
  characters) become ``_``;
* time: RFC 3339 in UTC with microseconds, rounded like ``datetime.fromtimestamp``;
* JSON: one compact object, non-ASCII kept as UTF-8, unknown types as ``str()``.

:mod:`kata_log.formatter` is the ``logging.Formatter`` of the proxy and the agent (the shim
does without ``logging``); :mod:`kata_log.flags` is the command-line vocabulary the proxy and
the shim share with their Go originals.

Bottom of the package graph: imports nothing of ours, and only cheap standard-library
modules (``time``; ``json`` only once a JSON line is asked for), because every kata-shim
start loads it.
"""

import time

__all__ = ["LEVELS", "LEVEL_NAMES", "FORMATS", "parse_level", "level_name", "parse_format", "entry",
           "rfc3339", "logfmt_value", "logfmt_key", "format_logfmt", "parse_logfmt", "json_line",
           "format_line"]

#: Level names a command line may give (logrus's ParseLevel names, any case, and Python's
#: ``critical``) -> Python's logging numbers.  ``trace`` is ``debug``: nothing logs below it.
LEVELS = {"trace": 10, "debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40,
          "fatal": 50, "panic": 50, "critical": 50}
#: Level number -> the ``level=`` value, as logrus's Level.String() writes it.
LEVEL_NAMES = {10: "debug", 20: "info", 30: "warning", 40: "error", 50: "fatal"}
#: Line formats: ``text`` (logrus's TextFormatter, logfmt; ``logfmt`` is the same) or ``json``.
FORMATS = ("text", "logfmt", "json")


def parse_level(name: str) -> int:
    """The level number of a command-line level name (any case, surrounding blanks ignored).

    Raises ValueError ``unknown log level 'x' (one of: ...)``."""
    try:
        return LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r} (one of: {', '.join(sorted(LEVELS))})") from None


def level_name(levelno: int) -> str:
    """The ``level=`` value of a level number: the named level at or below it (``debug`` below 10)."""
    name = LEVEL_NAMES.get(levelno)
    if name is None:
        name = LEVEL_NAMES[max((n for n in LEVEL_NAMES if n <= levelno), default=10)]
    return name


def parse_format(fmt: str) -> bool:
    """True for a JSON line format, False for text (logfmt).  Raises ValueError for another name."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (one of: {', '.join(FORMATS)})")
    return fmt == "json"


def entry(when: float, levelno: int, msg: str, *, name: str, pid: int, source: str, context=(),
          traceback: str = "", fields=None) -> list:
    """The ``(key, value)`` pairs of one log line, in the order every component writes them.

    ``when`` is seconds since the epoch; ``name`` the program (``kata-proxy``), ``source`` who
    speaks (``proxy``, ``agent``, ``shim``, ``yamux``); ``context`` the component's own pairs;
    ``traceback`` a formatted exception (a field, so that the line stays one line); ``fields``
    a mapping of the caller's pairs, a key already taken prefixed with ``fields.`` as logrus does.
    """
    items = [("time", rfc3339(when)), ("level", level_name(levelno)), ("msg", msg), ("name", name),
             ("pid", pid), ("source", source), *context]
    if traceback:
        items.append(("traceback", traceback))
    if fields:
        taken = {key for key, _ in items}
        items += [("fields." + key if key in taken else key, value) for key, value in fields.items()]
    return items


def rfc3339(t: float) -> str:
    """``t`` (seconds since the epoch) as ``2006-01-02T15:04:05.000000Z``."""
    seconds = int(t)
    micros = round((t - seconds) * 1e6)  # half-even, as datetime.fromtimestamp
    if micros >= 1_000_000:
        seconds, micros = seconds + 1, micros - 1_000_000
    elif micros < 0:
        seconds, micros = seconds - 1, micros + 1_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%06dZ" % micros


# --------------------------------------------------------------------------- logfmt


def _needs_quotes(text: str) -> bool:
    if text == "":
        return True
    for ch in text:
        if ch <= " " or ch in '="\\' or ch == "\x7f":
            return True
    return False


def logfmt_value(value) -> str:
    """One logfmt value: bare when safe, else double-quoted with Go-style escapes."""
    if value is None:
        return '""'
    if value is True:
        return "true"
    if value is False:
        return "false"
    text = value if isinstance(value, str) else str(value)
    if not _needs_quotes(text):
        return text
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ch < " " or ch == "\x7f":
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def logfmt_key(key) -> str:
    """A key as logfmt can carry it: unusable characters become ``_`` (never empty)."""
    cleaned = "".join(ch if (ch > " " and ch not in '="\\') else "_" for ch in str(key))
    return cleaned or "_"


def format_logfmt(items) -> str:
    """``key=value`` pairs, in order, separated by single spaces (no newline)."""
    return " ".join(f"{logfmt_key(k)}={logfmt_value(v)}" for k, v in items)


_UNESCAPE = {'"': '"', "\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def parse_logfmt(line: str) -> dict:
    """Parse one logfmt line into a dict (the inverse of :func:`format_logfmt`).

    A key without ``=`` maps to ``True``.  Raises ValueError on an unterminated quote.
    """
    out: dict = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and line[i] not in " =":
            i += 1
        key = line[start:i]
        if i >= n or line[i] == " ":
            out[key] = True
            continue
        i += 1  # '='
        if i < n and line[i] == '"':
            i += 1
            buf = []
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted value")
                ch = line[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < n:
                    nxt = line[i + 1]
                    if nxt == "u" and i + 5 < n:
                        buf.append(chr(int(line[i + 2 : i + 6], 16)))
                        i += 6
                        continue
                    buf.append(_UNESCAPE.get(nxt, nxt))
                    i += 2
                    continue
                buf.append(ch)
                i += 1
            out[key] = "".join(buf)
        else:
            start = i
            while i < n and line[i] != " ":
                i += 1
            out[key] = line[start:i]
    return out


# --------------------------------------------------------------------------- JSON


def json_line(items) -> str:
    """The pairs as one compact JSON object (a later duplicate key wins)."""
    import json  # only when JSON is asked for: the shim's start path never pays for it

    return json.dumps(dict(items), default=str, ensure_ascii=False, separators=(",", ":"))


def format_line(items, *, as_json: bool = False) -> str:
    """One log line (no newline) from ``(key, value)`` pairs: logfmt, or JSON if ``as_json``."""
    return json_line(items) if as_json else format_logfmt(items)
