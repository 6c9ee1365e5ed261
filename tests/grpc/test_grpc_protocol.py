"""kata_grpc.protocol (the gRPC level: PROTOCOL-HTTP2.md) and a fuzz of the server core: whatever
bytes come, receive() returns events and never raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from kata_grpc import h2, protocol
from kata_grpc.frames import PREFACE, frame
from kata_grpc.protocol import (RpcError, format_timeout, grpc_message, message_length, parse_timeout,
                                percent_decode, percent_encode)
from kata_grpc.server import ConnectionEnded, RequestReceived, ServerConnection, StreamReset


def test_names_stay_importable_from_h2():
    for name in ("RpcError", "grpc_message", "STATUS_NAMES", "OK", "UNKNOWN", "NOT_FOUND", "OUT_OF_RANGE",
                 "UNAVAILABLE", "CANCELLED", "H2Error", "frame", "PREFACE", "request_headers", "Connection"):
        assert hasattr(h2, name), name
    assert h2.RpcError is protocol.RpcError


def test_percent_encoding_round_trip():
    text = "caf\u00e9 100% done\r\n\u2713"
    encoded = percent_encode(text)
    assert encoded == b"caf%C3%A9 100%25 done%0D%0A%E2%9C%93"
    assert percent_decode(encoded) == text
    assert percent_encode("plain text") == b"plain text"
    assert percent_decode(b"50%") == "50%" and percent_decode(b"%zz%4") == "%zz%4"  # never fails


@pytest.mark.parametrize("value, seconds", [(b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"1500m", 1.5),
                                             (b"250u", 0.00025), (b"99999999n", 0.099999999)])
def test_grpc_timeout(value, seconds):
    assert parse_timeout(value) == pytest.approx(seconds)
    assert parse_timeout(format_timeout(seconds)) == pytest.approx(seconds, rel=1e-6)


@pytest.mark.parametrize("value", [b"", b"S", b"10", b"1x", b"123456789S", b"-1S", b"1.5S"])
def test_bad_grpc_timeout(value):
    with pytest.raises(ValueError):
        parse_timeout(value)


def test_message_framing():
    assert grpc_message(b"abc") == b"\0\0\0\0\3abc"
    assert message_length(grpc_message(b"x" * 70000)[:5]) == 70000
    with pytest.raises(ValueError, match="compressed"):
        message_length(b"\1\0\0\0\0")
    with pytest.raises(ValueError):
        message_length(b"\0\0")
    assert str(RpcError(5, "gone")) == "NOT_FOUND: gone" and RpcError(99).name == "99"


frames = st.builds(frame, st.integers(0, 12), st.integers(0, 255), st.integers(0, 9),
                   st.binary(max_size=60))


@settings(max_examples=300, deadline=None)
@given(st.lists(frames, max_size=12), st.integers(1, 50))
def test_server_core_never_raises(wire, step):
    conn = ServerConnection({"/a"})
    data = PREFACE + frame(4, 0, 0) + b"".join(wire)
    events = []
    for i in range(0, len(data), step):
        events += conn.receive(data[i:i + step])
        conn.data_to_send()
    assert all(isinstance(e, (RequestReceived, StreamReset, ConnectionEnded)) for e in events)
    ended = [e for e in events if isinstance(e, ConnectionEnded)]
    assert len(ended) <= 1
