"""Unit tests: logfmt and JSON lines, level names, the non-blocking handler."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import threading

import pytest

from kata_log import parse_logfmt
from kata_proxy import log as klog


def record(msg="hello", levelno=logging.INFO, name="kata_proxy", **fields):
    rec = logging.LogRecord(name, levelno, __file__, 1, msg, (), None)
    rec.created = 1700000000.25
    if fields:
        rec.fields = fields
    return rec


def test_logfmt_line_shape():
    fmt = klog.LineFormatter("text", sandbox="sb-1")
    line = fmt.format(record('say "hi" = ok', clients=3, path="/run/a b"))
    parsed = parse_logfmt(line)
    assert line.startswith("time=2023-11-14T22:13:20.250000Z level=info ")
    assert parsed["msg"] == 'say "hi" = ok'
    assert parsed["level"] == "info"
    assert parsed["source"] == "proxy"
    assert parsed["sandbox"] == "sb-1"
    assert parsed["name"] == "kata-proxy"
    assert parsed["clients"] == "3"
    assert parsed["path"] == "/run/a b"
    assert "\n" not in line


def test_agent_and_yamux_sources():
    fmt = klog.LineFormatter("text", sandbox="x")
    assert parse_logfmt(fmt.format(record(name=klog.AGENT_LOGGER)))["source"] == "agent"
    assert parse_logfmt(fmt.format(record(name="yamux.session")))["source"] == "yamux"


def test_json_line():
    fmt = klog.LineFormatter("json", sandbox="sb")
    line = fmt.format(record("multi\nline", levelno=logging.WARNING, streams=2))
    obj = json.loads(line)
    assert obj["msg"] == "multi\nline"
    assert obj["level"] == "warning"
    assert obj["sandbox"] == "sb"
    assert obj["streams"] == 2
    assert obj["source"] == "proxy"
    assert "\n" not in line


def test_field_name_clash_is_prefixed():
    fmt = klog.LineFormatter("text")
    parsed = parse_logfmt(fmt.format(record(level="x_not_level", msg="m")))
    # a field called "level" must not replace the record's level
    assert parsed["level"] == "info"
    assert parsed["fields.level"] == "x_not_level"


@pytest.mark.parametrize("name, level", [
    ("debug", logging.DEBUG), ("info", logging.INFO), ("warn", logging.WARNING),
    ("WARNING", logging.WARNING), ("error", logging.ERROR), ("fatal", logging.CRITICAL),
    ("panic", logging.CRITICAL), ("trace", logging.DEBUG),
])
def test_levels(name, level):
    assert klog.parse_level(name) == level


def test_unknown_level():
    with pytest.raises(ValueError):
        klog.parse_level("loud")


class _StuckStream(io.StringIO):
    """A stream whose writes wait until ``gate`` is set."""

    def __init__(self):
        super().__init__()
        self.gate = threading.Event()

    def write(self, text):
        self.gate.wait(5)
        return super().write(text)


def test_handler_drops_instead_of_blocking():
    stream = _StuckStream()
    handler = klog.BackgroundHandler(stream, capacity=4)
    handler.setFormatter(klog.LineFormatter("text"))
    for i in range(50):  # must return at once although the stream is stuck
        handler.emit(record(f"line {i}"))
    assert handler.dropped > 0
    stream.gate.set()
    handler.flush()
    handler.close()
    assert "dropped" in stream.getvalue()


def test_handler_is_the_stdlib_queue_pair_and_the_notice_counts_what_it_dropped():
    stream = _StuckStream()
    handler = klog.BackgroundHandler(stream, capacity=4)
    assert isinstance(handler, logging.handlers.QueueHandler)
    handler.setFormatter(klog.LineFormatter("json", sandbox="sb"))
    for i in range(50):
        handler.emit(record(f"line {i}"))
    dropped = handler.dropped
    stream.gate.set()
    handler.flush()
    handler.close()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    notices = [line for line in lines if line["msg"].startswith("dropped")]
    assert [n["msg"] for n in notices] == [f"dropped {dropped} log lines (log output too slow)"]
    assert notices[0]["level"] == "warning" and notices[0]["sandbox"] == "sb" and notices[0]["source"] == "proxy"
    assert len(lines) == 50 - dropped + 1 and handler.dropped == 0


def test_closing_twice_and_a_broken_stream_are_quiet(capsys):
    class Broken(io.StringIO):
        def write(self, text):
            raise OSError("EPIPE")

    handler = klog.BackgroundHandler(Broken())
    handler.setFormatter(klog.LineFormatter("text"))
    handler.emit(record("lost"))
    handler.flush()
    handler.close()
    handler.close()
    assert capsys.readouterr().err == ""


def test_traceback_stays_on_one_line():
    fmt = klog.LineFormatter("text")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys
        rec = logging.LogRecord("kata_proxy", logging.CRITICAL, __file__, 1, "internal error", (),
                                sys.exc_info())
    line = fmt.format(rec)
    assert "\n" not in line
    parsed = parse_logfmt(line)
    assert parsed["msg"] == "internal error"
    assert "RuntimeError: boom" in parsed["traceback"]
