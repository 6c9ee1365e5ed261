"""kata_log: the shared log line format (logfmt values and keys, RFC 3339 time, JSON lines)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys

import pytest
from hypothesis import given, strategies as st

import kata_log


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


def test_imports_nothing_heavy():
    """The shim loads kata_log on every start: standard library only, no json until asked."""
    code = ("import sys; before = set(sys.modules); import kata_log; "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    assert loaded == ["kata_log"], loaded
