"""kata_log.cjson against the json package: the same text out, the same values in, and a
ValueError wherever json.loads refuses."""

import json
import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kata_log import cjson
from tests.support.processes import REPO

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text()
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                         max_leaves=20)
ARGUMENTS = [{}, {"indent": 2}, {"indent": 1, "sort_keys": True}, {"separators": (",", ":")}, {"indent": 0},
             {"sort_keys": True, "separators": (",", ":")}]


def same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@settings(max_examples=300, deadline=None)
@given(documents)
def test_dumps_is_json_dumps(value):
    for kwargs in ARGUMENTS:
        assert cjson.dumps(value, **kwargs) == json.dumps(value, **kwargs)


@settings(max_examples=300, deadline=None)
@given(documents, st.sampled_from(["", " ", "\n", " \t\r\n "]))
def test_loads_is_json_loads(value, padding):
    for kwargs in ARGUMENTS:
        text = padding + json.dumps(value, **kwargs) + padding
        assert same_value(cjson.loads(text), json.loads(text))
        assert same_value(cjson.loads(text.encode()), json.loads(text.encode()))


def test_state_shapes():
    state = {"ociVersion": "1.0.2", "id": "c1", "pid": 42, "status": "running", "bundle": "/b",
             "rootfs": "/b/rootfs", "created": "2026-11-30T10:00:00.5Z", "annotations": {"k": "v\u00e9\n"}, "owner": ""}
    assert cjson.dumps(state, indent=2) == json.dumps(state, indent=2)
    assert cjson.dumps(None, separators=(",", ":")) == "null"


@pytest.mark.parametrize("text", ["", "   ", "{", "}", "[1,]", "[1 2]", "1 2", '{"a" 1}', "{'a': 1}", "nul", "tru",
                                  '"\x01"', '"\\x"', "01", "1.", "-", "[", '{"a":1}}', "\ufeff{}", "NaNx"])
def test_loads_refuses_what_json_refuses(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        cjson.loads(text)


@pytest.mark.parametrize("value", [{"a": object()}, b"bytes", {"a": {1, 2}}])
def test_dumps_refuses_other_types(value):
    with pytest.raises(TypeError):
        json.dumps(value)
    with pytest.raises(TypeError):
        cjson.dumps(value)


def test_dumps_refuses_keys_json_would_convert():
    assert json.dumps({1: "a"}) == '{"1": "a"}'
    with pytest.raises(TypeError, match="keys must be str"):
        cjson.dumps({1: "a"})


def test_dumps_refuses_a_cycle():
    value: list = []
    value.append(value)
    with pytest.raises(ValueError):
        cjson.dumps(value)


@pytest.mark.parametrize("data", [b'\xef\xbb\xbf{"id": "a"}', b'{"id": "\xed\xa0\x80"}', b'{"id": "\xc3\xa9"}'])
def test_bytes_read_as_json_reads_utf8_bytes(data):
    """A byte order mark and lone surrogates, as json.loads takes them from UTF-8 bytes."""
    assert cjson.loads(data) == json.loads(data)


@pytest.mark.parametrize("text", ['{not json', '{"a": 1', '["a", 1', '"abc', '{"a" 1}', '[1 2]'])
def test_a_malformed_document_is_a_value_error_where_json_was_never_imported(text):
    """CPython's _json raises an error inside an object, array or string through
    json.decoder, found in sys.modules only: in a fresh kata-runtime (which never imports
    json) that was a SystemError. This test process has json loaded, so it runs a fresh one."""
    code = ("import sys; from kata_log import cjson\n"
            "try:\n    cjson.loads(sys.argv[1])\nexcept ValueError as e:\n    print('ValueError', e)")
    out = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, cwd=str(REPO))
    assert out.returncode == 0 and out.stdout.startswith("ValueError "), out.stderr
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    assert out.stdout.strip() == f"ValueError {expected.value}"
