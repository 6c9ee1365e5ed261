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


def valid_wire() -> bytes:
    """A client's opening and two calls, headers Huffman-coded through the dynamic table
    (the hpack library's encoder)."""
    import hpack as hpack_lib

    enc = hpack_lib.Encoder()
    out = PREFACE + frame(4, 0, 0, b"\0\4\0\1\0\0")
    for sid in (1, 3):
        block = enc.encode([(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/a"),
                            (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                            (b"grpc-timeout", b"5S")])
        out += frame(1, 4, sid, block) + frame(0, 1, sid, grpc_message(b"\x0a\x03abc"))
    return out


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4))
def test_server_core_survives_corrupted_calls(flips):
    data = bytearray(valid_wire())
    for pos, value in flips:
        data[len(PREFACE) + pos % (len(data) - len(PREFACE))] = value
    conn = ServerConnection({"/a"})
    events = conn.receive(bytes(data))
    conn.data_to_send()
    for e in events:
        if isinstance(e, RequestReceived):
            conn.respond(e.stream_id, e.message)
    conn.data_to_send()
    assert sum(isinstance(e, ConnectionEnded) for e in events) <= 1


def test_the_uncorrupted_calls_are_delivered():
    events = ServerConnection({"/a"}).receive(valid_wire())
    assert [(e.stream_id, e.message, e.timeout) for e in events] == [(1, b"\x0a\x03abc", 5.0), (3, b"\x0a\x03abc", 5.0)]


def valid_reply() -> bytes:
    """A server's opening and the answer to call 1 (Huffman, dynamic table: the hpack library)."""
    import hpack as hpack_lib

    enc = hpack_lib.Encoder()
    return (frame(4, 0, 0, b"\0\5\0\0\x40\0") + frame(1, 4, 1, enc.encode([(b":status", b"200"),
                                                                        (b"content-type", b"application/grpc")]))
            + frame(0, 8, 1, b"\2" + grpc_message(b"reply") + b"\0\0")
            + frame(1, 5, 1, enc.encode([(b"grpc-status", b"0"), (b"grpc-message", b"ok")])))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10 ** 6), st.integers(0, 255)), min_size=1, max_size=4), st.integers(1, 40))
def test_client_core_fails_only_with_h2error_or_rpcerror(flips, step):
    data = bytearray(valid_reply())
    for pos, value in flips:
        data[pos % len(data)] = value
    conn = h2.Connection()
    call = conn.request(h2.request_headers(b"/a"), b"req")
    try:
        for i in range(0, len(data), step):
            conn.receive(bytes(data[i:i + step]))
    except h2.H2Error:
        return
    if call.done:
        try:
            call.result()
        except RpcError:
            pass


def test_the_uncorrupted_reply_is_read():
    conn = h2.Connection()
    call = conn.request(h2.request_headers(b"/a"), b"req")
    conn.receive(valid_reply())
    assert bytes(call.result()) == b"reply" and call.status() == (0, "ok")
