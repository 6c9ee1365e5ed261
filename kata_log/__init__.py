"""The one line format of kata-py's logs: logfmt (``key=value``) or JSON, one record a line.

kata-proxy, kata-shim and kata-agent each keep their own small adapter on top of this module
(level names, where lines go, the proxy's non-blocking writer); what a line looks like is
decided here only::

    time=2026-11-24T17:25:19.123456Z level=info msg="..." name=kata-proxy pid=42 source=proxy

* values: bare when safe, else double-quoted with Go-style escapes (``\\"`` ``\\\\`` ``\\n``
  ``\\r`` ``\\t``, ``\\u00XX`` for other control characters); ``True``/``False`` are
  ``true``/``false``, ``None`` is ``""``;
* keys: characters a logfmt key cannot hold (space, ``=``, ``"``, backslash, control
  characters) become ``_``;
* time: RFC 3339 in UTC with microseconds, rounded like ``datetime.fromtimestamp``;
* JSON: one compact object, non-ASCII kept as UTF-8, unknown types as ``str()``.

Bottom of the package graph: imports nothing of ours, and only cheap standard-library
modules (``time``; ``json`` only once a JSON line is asked for), because every kata-shim
start loads it.
"""

from __future__ import annotations

import time

__all__ = ["rfc3339", "logfmt_value", "logfmt_key", "format_logfmt", "parse_logfmt",
           "json_line", "format_line"]


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
