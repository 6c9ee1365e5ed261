"""kata_log: the shared log vocabulary (levels, fields, logfmt values and keys, RFC 3339 time,
JSON lines, the logging formatter) and command-line vocabulary (Go flags, unix:// addresses)."""

from __future__ import annotations

import datetime
import json
import logging
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

import kata_log
from kata_log.flags import FlagError, GoFlags, parse_bool, unix_socket_path
from kata_log.formatter import LineFormatter, fields


@pytest.mark.parametrize("value, text", [
    ("plain", "plain"), ("", '""'), ("a b", '"a b"'), ('q"', '"q\\""'), ("a=b", '"a=b"'),
    ("tab\there", '"tab\\there"'), ("cr\r", '"cr\\r"'), ("\x01", '"\\u0001"'), ("\x7f", '"\\u007f"'),
    ("back\\slash", '"back\\\\slash"'), ("é", "é"), (True, "true"), (False, "false"), (None, '""'),
    (12, "12"),
])
def test_logfmt_values(value, text):
    assert kata_log.logfmt_value(value) == text


def test_keys_are_cleaned():
    assert kata_log.format_logfmt([("a b", 1), ("", 2), ("k=v", 3), ("exec-id", "e")]) == \
        "a_b=1 _=2 k_v=3 exec-id=e"


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_.]{0,10}", fullmatch=True),
                       st.text(max_size=40), max_size=6))
def test_logfmt_round_trip(fields):
    line = kata_log.format_logfmt(fields.items())
    assert "\n" not in line
    assert kata_log.parse_logfmt(line) == fields


@given(st.floats(min_value=0, max_value=4102444800, allow_nan=False))
def test_rfc3339_is_datetime_to_the_microsecond(t):
    want = datetime.datetime.fromtimestamp(t, tz=datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert kata_log.rfc3339(t) == want


def test_rfc3339_examples():
    assert kata_log.rfc3339(1700000000.25) == "2023-11-14T22:13:20.250000Z"
    assert kata_log.rfc3339(1700000000.9999996) == "2023-11-14T22:13:21.000000Z"  # carries


def test_json_line_and_format_line():
    items = [("msg", "multi\nline é"), ("n", 2), ("obj", object), ("ok", True)]
    line = kata_log.format_line(items, as_json=True)
    assert "\n" not in line and "é" in line and ", " not in line
    assert json.loads(line) == {"msg": "multi\nline é", "n": 2, "obj": str(object), "ok": True}
    assert kata_log.format_line(items[1:2]) == "n=2"


@pytest.mark.parametrize("module", ["kata_log", "kata_log.flags"])
def test_imports_nothing_heavy(module):
    """The shim loads kata_log and its flags on every start: nothing new of the standard library
    (no json until asked, no typing, no re), only kata_log's own modules."""
    code = (f"import sys; before = set(sys.modules); import {module}; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert set(loaded) == {"kata_log", module}, loaded


# --------------------------------------------------------------------------- levels and fields


@pytest.mark.parametrize("name, number", [
    ("trace", 10), ("debug", 10), ("info", 20), ("warn", 30), ("warning", 30), ("error", 40),
    ("fatal", 50), ("panic", 50), ("critical", 50), (" WARN ", 30), ("Debug", 10),
])
def test_level_names_are_logrus_and_python(name, number):
    assert kata_log.parse_level(name) == number


def test_unknown_level_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown log level 'loud' \(one of: critical, debug, "):
        kata_log.parse_level("loud")


@pytest.mark.parametrize("number, name", [
    (10, "debug"), (20, "info"), (30, "warning"), (40, "error"), (50, "fatal"), (5, "debug"),
    (25, "info"), (45, "error"), (60, "fatal"),
])
def test_level_field_is_logrus_spelling_of_the_level_at_or_below(number, name):
    assert kata_log.level_name(number) == name


def test_formats():
    assert [kata_log.parse_format(f) for f in kata_log.FORMATS] == [False, False, True]
    with pytest.raises(ValueError, match="unknown log format 'xml'"):
        kata_log.parse_format("xml")


def test_entry_order_traceback_and_field_clashes():
    items = kata_log.entry(1700000000.25, 30, "m", name="kata-x", pid=7, source="x",
                           context=[("sandbox", "s")], traceback="Traceback ...",
                           fields={"level": "mine", "k": 1, "sandbox": "t"})
    assert items == [("time", "2023-11-14T22:13:20.250000Z"), ("level", "warning"), ("msg", "m"),
                     ("name", "kata-x"), ("pid", 7), ("source", "x"), ("sandbox", "s"),
                     ("traceback", "Traceback ..."), ("fields.level", "mine"), ("k", 1),
                     ("fields.sandbox", "t")]
    assert [k for k, _ in kata_log.entry(0, 20, "m", name="n", pid=1, source="s")] == \
        ["time", "level", "msg", "name", "pid", "source"]


# --------------------------------------------------------------------------- the logging formatter


def _record(name="kata_x", levelno=logging.INFO, msg="hello %s", args=("you",), exc_info=None, **extra):
    rec = logging.LogRecord(name, levelno, __file__, 1, msg, args, exc_info)
    rec.created = 1700000000.25
    rec.__dict__.update(extra)
    return rec


def test_formatter_fixed_source_subsystem_and_fields():
    fmt = LineFormatter("text", name="kata-agent", source="agent", subsystem=True)
    line = fmt.format(_record("kata_agent.channel", **fields(n=2)))
    assert line.startswith('time=2023-11-14T22:13:20.250000Z level=info msg="hello you" name=kata-agent pid=')
    assert line.endswith(" source=agent subsystem=channel n=2")
    assert "subsystem" not in fmt.format(_record("kata_agent"))


def test_formatter_sources_by_logger_and_context():
    fmt = LineFormatter("json", name="kata-p", source={"p.agent": "agent", "p": "proxy"},
                        context=[("sandbox", "sb")])
    sources = [json.loads(fmt.format(_record(name)))["source"]
               for name in ("p", "p.agent", "p.agent.x", "p.other", "pp", "yamux.session")]
    assert sources == ["proxy", "agent", "agent", "proxy", "pp", "yamux"]
    assert json.loads(fmt.format(_record("p")))["sandbox"] == "sb"


def test_formatter_puts_a_traceback_in_its_field_on_one_line():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        rec = _record(levelno=logging.ERROR, msg="failed", args=(), exc_info=sys.exc_info())
    for fmt in ("text", "json"):
        line = LineFormatter(fmt, name="n", source="s").format(rec)
        parsed = json.loads(line) if fmt == "json" else kata_log.parse_logfmt(line)
        assert "\n" not in line and parsed["msg"] == "failed"
        assert parsed["traceback"].startswith("Traceback") and "RuntimeError: boom" in parsed["traceback"]


def test_formatter_refuses_an_unknown_format():
    with pytest.raises(ValueError):
        LineFormatter("xml", name="n", source="s")


# --------------------------------------------------------------------------- Go flags


def _flags(argv, value_flags=("agent", "log")):
    scan = GoFlags(argv, lambda name: name in value_flags)
    return [(f.name, f.value, f.joined) for f in scan], scan.rest


@pytest.mark.parametrize("argv, flags, rest", [
    (["-agent", "a", "--log", "x"], [("agent", "a", False), ("log", "x", False)], []),
    (["-agent=a", "--log=", "-t"], [("agent", "a", True), ("log", "", True), ("t", None, False)], []),
    (["-agent", "-t", "-t", "false"], [("agent", "-t", False), ("t", None, False)], ["false"]),
    (["-t=false", "x", "-agent", "a"], [("t", "false", True)], ["x", "-agent", "a"]),
    (["-t", "--", "-agent"], [("t", None, False)], ["-agent"]),
    (["-", "-t"], [], ["-", "-t"]),
    (["-bogus"], [("bogus", None, False)], []),
    ([], [], []),
])
def test_go_flag_syntax(argv, flags, rest):
    """As Go's flag.FlagSet.Parse: values after '=' or in the next argument, other flags never
    take one, the flags end at '--' (dropped) or at the first argument that is not a flag."""
    assert _flags(argv) == (flags, rest)


@pytest.mark.parametrize("arg", ["---agent", "-=x", "--=x"])
def test_bad_flag_syntax(arg):
    with pytest.raises(FlagError, match=f"bad flag syntax: {arg}"):
        _flags(["-t", arg])


def test_flag_needs_an_argument_and_errors_come_in_order():
    with pytest.raises(FlagError, match="flag needs an argument: -log"):
        _flags(["-t", "-log"])
    scan = iter(GoFlags(["-bogus", "---x"], lambda name: False))
    assert next(scan).name == "bogus"  # the caller rejects it before the next one is read
    with pytest.raises(FlagError, match="bad flag syntax"):
        next(scan)


@pytest.mark.parametrize("text, value", [(w, True) for w in ("1", "t", "T", "TRUE", "true", "True")]
                         + [(w, False) for w in ("0", "f", "F", "FALSE", "false", "False")])
def test_booleans_are_strconv_parse_bool(text, value):
    assert parse_bool("x", text) is value


@pytest.mark.parametrize("text", ["yes", "no", "", "tRUE", "2"])
def test_other_boolean_words_are_refused(text):
    with pytest.raises(FlagError, match=f"invalid boolean value '{text}' for flag -terminal"):
        parse_bool("terminal", text)


# --------------------------------------------------------------------------- unix addresses

#: address -> Host + Path of Go's url.Parse (printed by go1.19's net/url), as the Go kata-proxy's
#: unixAddr and the agent client kata-shim uses read a socket address.
GO_URL_PARSE = [
    ("unix:///run/p.sock", "/run/p.sock"),
    ("unix:/run/p.sock", "/run/p.sock"),
    ("/run/p.sock", "/run/p.sock"),
    ("unix://relative.sock", "relative.sock"),
    ("unix://rel/p.sock", "rel/p.sock"),
    ("rel/p.sock", "rel/p.sock"),
    ("./x.sock", "./x.sock"),
    ("UNIX:///x", "/x"),
    ("//h/p", "h/p"),
    ("///p", "///p"),
    ("unix:///a%20b", "/a b"),
    ("unix:///\u00e9%C3%A9", "/\u00e9\u00e9"),
    ("unix:///a+b", "/a+b"),
    ("unix:///p?x#y", "/p"),
    ("unix://h:5/p", "h:5/p"),
]


@pytest.mark.parametrize("address, path", GO_URL_PARSE)
def test_unix_addresses_read_as_go_reads_them(address, path):
    assert unix_socket_path(address) == path


@pytest.mark.parametrize("address, message", [
    ("", "has no socket path"),
    ("unix://", "has no socket path"),
    ("unix:rel.sock", "has no socket path"),  # opaque: url.Parse gives no Host and no Path
    ("tcp://1.2.3.4:5", "unsupported agent scheme 'tcp'"),
    ("vsock://3:1024", "unix://"),
    ("1a:b", "first path segment in URL cannot contain colon"),
    ("unix:///bad%zz", "invalid URL escape '%zz'"),
    ("unix:///bad%2", "invalid URL escape '%2'"),
])
def test_unix_address_errors(address, message):
    with pytest.raises(FlagError, match=message.replace("(", r"\(")) as info:
        unix_socket_path(address, "agent")
    assert "\n" not in str(info.value) and isinstance(info.value, ValueError)
