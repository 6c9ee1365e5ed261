"""The sans-IO HTTP/2 core of kata-shim, against a scripted server (no sockets)."""

from __future__ import annotations

import pytest

from kata_grpc import h2, hpack
from kata_grpc.h2 import (ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PADDED, PING,
                          RST_STREAM, SETTINGS, WINDOW_UPDATE, Connection, H2Error, RpcError, frame)
from tests.support.h2_frames import parse_frames

BLOCK = h2.request_headers(b"/grpc.AgentService/WaitProcess")


def ok_headers(sid, end_headers=True):
    block = hpack.encode_plain([(b":status", b"200"), (b"content-type", b"application/grpc")])
    return frame(HEADERS, END_HEADERS if end_headers else 0, sid, block)


def trailers(sid, status=0, message=b""):
    fields = [(b"grpc-status", str(status).encode())]
    if message:
        fields.append((b"grpc-message", message))
    return frame(HEADERS, END_HEADERS | END_STREAM, sid, hpack.encode_plain(fields))


def reply(sid, payload: bytes) -> bytes:
    return ok_headers(sid) + frame(DATA, 0, sid, h2.grpc_message(payload)) + trailers(sid)


def test_preface_settings_and_request():
    c = Connection(window=1 << 20, max_frame=1 << 16)
    out = c.data_to_send()
    assert out.startswith(h2.PREFACE)
    frames = parse_frames(out)
    assert frames[0][0] == SETTINGS
    settings = {int.from_bytes(frames[0][3][i:i + 2], "big"): int.from_bytes(frames[0][3][i + 2:i + 6], "big")
                for i in range(0, len(frames[0][3]), 6)}
    assert settings[h2.ENABLE_PUSH] == 0 and settings[h2.INITIAL_WINDOW_SIZE] == 1 << 20
    assert settings[h2.MAX_FRAME_SIZE] == 1 << 16
    assert frames[1][0] == WINDOW_UPDATE and int.from_bytes(frames[1][3], "big") == (1 << 20) - 65535

    c.request(BLOCK, b"\x0a\x01c")
    sent = parse_frames(c.data_to_send())
    ftype, flags, sid, payload = sent[0]
    assert (ftype, flags, sid) == (HEADERS, END_HEADERS, 1)
    assert dict(hpack.Decoder().decode(payload))[b":path"] == b"/grpc.AgentService/WaitProcess"
    headers = hpack.Decoder().decode(payload)
    assert headers[:2] == [(b":method", b"POST"), (b":scheme", b"http")]
    assert (b"te", b"trailers") in headers and (b"content-type", b"application/grpc") in headers
    assert sent[1][:3] == (DATA, END_STREAM, 1) and sent[1][3] == h2.grpc_message(b"\x0a\x01c")


def test_unary_round_trip_in_pieces():
    c = Connection()
    c.data_to_send()
    call = c.request(BLOCK, b"req")
    sent = parse_frames(c.data_to_send())
    assert [f[0] for f in sent] == [HEADERS, DATA]
    assert sent[1][1] == END_STREAM and sent[1][3] == h2.grpc_message(b"req")
    wire = frame(SETTINGS, 0, 0) + reply(1, b"\x08\x03")
    for i in range(len(wire)):  # one byte at a time
        c.receive(wire[i:i + 1])
    assert call.done
    assert bytes(call.result()) == b"\x08\x03"
    assert parse_frames(c.data_to_send()) == [(SETTINGS, ACK, 0, b"")]
    assert c.calls == {}
    assert c.request(BLOCK, b"").stream_id == 3


def test_error_status_trailers_only_with_percent_encoding():
    c = Connection()
    call = c.request(BLOCK, b"")
    block = hpack.encode_plain([(b":status", b"200"), (b"grpc-status", b"11"), (b"grpc-message", b"EOF%20%E2%9C%93")])
    c.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
    with pytest.raises(RpcError) as info:
        call.result()
    assert info.value.code == h2.OUT_OF_RANGE and info.value.message == "EOF \u2713"
    assert str(info.value) == "OUT_OF_RANGE: EOF \u2713"


def test_headers_with_continuation_padding_and_huffman():
    c = Connection()
    call = c.request(BLOCK, b"")
    name = hpack.huffman_encode(b"content-type")
    value = hpack.huffman_encode(b"application/grpc")
    # indexed ":status: 200", then "content-type" with incremental indexing, both strings Huffman-coded
    block = b"\x88" + b"\x40" + bytes([0x80 | len(name)]) + name + bytes([0x80 | len(value)]) + value
    padded = bytes([3]) + block[:4] + b"\0\0\0"
    c.receive(frame(HEADERS, PADDED, 1, padded) + frame(CONTINUATION, END_HEADERS, 1, block[4:]))
    assert call.headers == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    msg = h2.grpc_message(b"hello")
    c.receive(frame(DATA, PADDED, 1, bytes([2]) + msg + b"\0\0"))
    # the trailers refer to the dynamic table entry added above (index 62)
    c.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, b"\xbe" + hpack.encode_plain([(b"grpc-status", b"0")])))
    assert bytes(call.result()) == b"hello"


def test_ping_is_answered_and_window_updates_are_sent():
    c = Connection(window=1 << 16)
    c.data_to_send()
    call = c.request(BLOCK, b"")
    c.data_to_send()
    c.receive(frame(PING, 0, 0, b"12345678"))
    assert parse_frames(c.data_to_send()) == [(PING, ACK, 0, b"12345678")]
    c.receive(ok_headers(1))
    big = h2.grpc_message(b"x" * 40000)
    c.receive(frame(DATA, 0, 1, big[:20000]) + frame(DATA, 0, 1, big[20000:]))
    updates = [f for f in parse_frames(c.data_to_send()) if f[0] == WINDOW_UPDATE]
    assert {(f[2], int.from_bytes(f[3], "big")) for f in updates} == {(0, 40005), (1, 40005)}
    c.receive(trailers(1))
    assert len(call.result()) == 40000


def test_send_flow_control_waits_for_window_updates():
    c = Connection()
    c.data_to_send()
    c.receive(frame(SETTINGS, 0, 0, h2.INITIAL_WINDOW_SIZE.to_bytes(2, "big") + (1000).to_bytes(4, "big")))
    c.data_to_send()
    payload = bytes(range(256)) * 20  # 5120 bytes + 5 of prefix
    call = c.request(BLOCK, payload)
    sent = b""
    frames = parse_frames(c.data_to_send())
    assert frames[0][0] == HEADERS
    data = [f for f in frames if f[0] == DATA]
    assert sum(len(f[3]) for f in data) == 1000 and not any(f[1] & END_STREAM for f in data)
    sent += b"".join(f[3] for f in data)
    for _ in range(10):
        c.receive(frame(WINDOW_UPDATE, 0, 1, (1000).to_bytes(4, "big")))
        data = parse_frames(c.data_to_send())
        sent += b"".join(f[3] for f in data)
        if data and data[-1][1] & END_STREAM:
            break
    assert sent == h2.grpc_message(payload)
    assert not call.done


def test_large_request_respects_peer_max_frame():
    c = Connection()
    c.data_to_send()
    c.receive(frame(WINDOW_UPDATE, 0, 0, (1 << 20).to_bytes(4, "big"))
              + frame(SETTINGS, 0, 0, h2.INITIAL_WINDOW_SIZE.to_bytes(2, "big") + (1 << 20).to_bytes(4, "big")))
    c.data_to_send()
    c.request(BLOCK, b"y" * 100000)
    data = [f for f in parse_frames(c.data_to_send()) if f[0] == DATA]
    assert max(len(f[3]) for f in data) == 16384
    assert sum(len(f[3]) for f in data) == 100005 and data[-1][1] == END_STREAM


def test_rst_stream_and_goaway():
    c = Connection()
    a = c.request(BLOCK, b"")
    b = c.request(BLOCK, b"")
    c.receive(frame(RST_STREAM, 0, 1, h2.CANCEL.to_bytes(4, "big")))
    with pytest.raises(RpcError) as info:
        a.result()
    assert info.value.code == h2.CANCELLED
    c.receive(frame(GOAWAY, 0, 0, (1).to_bytes(4, "big") + h2.NO_ERROR.to_bytes(4, "big")))
    with pytest.raises(RpcError) as info:
        b.result()
    assert info.value.code == h2.UNAVAILABLE  # never processed: retried on a new connection
    assert not c.usable
    with pytest.raises(H2Error):
        c.request(BLOCK, b"")


def test_http_status_without_grpc_status():
    c = Connection()
    call = c.request(BLOCK, b"")
    c.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, hpack.encode_plain([(b":status", b"503")])))
    with pytest.raises(RpcError) as info:
        call.result()
    assert info.value.code == h2.UNAVAILABLE


def test_missing_message_and_compressed_message():
    c = Connection()
    a = c.request(BLOCK, b"")
    c.receive(ok_headers(1) + trailers(1))
    with pytest.raises(RpcError, match="without a message"):
        a.result()
    b = c.request(BLOCK, b"")
    c.receive(ok_headers(3) + frame(DATA, 0, 3, b"\x01\0\0\0\0") + trailers(3))
    with pytest.raises(RpcError, match="compressed"):
        b.result()


@pytest.mark.parametrize("wire", [
    frame(DATA, 0, 0, b"x"),                                   # DATA on stream 0
    frame(DATA, 0, 9, b"x"),                                   # DATA on an idle stream
    frame(h2.PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2"),       # push is disabled
    frame(HEADERS, 0, 1, b"\x88") + frame(PING, 0, 0, b"8bytes!!"),  # frame inside a header block
    frame(SETTINGS, 0, 0, b"\0\5\0\0\0\1"),                    # MAX_FRAME_SIZE too small
    frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"),                   # zero increment
    frame(HEADERS, END_HEADERS, 1, b"\x80"),                   # HPACK index 0
    bytes((0x20, 0, 0, DATA, 0, 0, 0, 0, 1)),                  # frame larger than our max
])
def test_protocol_errors(wire):
    c = Connection(max_frame=1 << 20)
    c.request(BLOCK, b"")
    c.data_to_send()
    with pytest.raises(H2Error):
        c.receive(wire)
    assert parse_frames(c.data_to_send())[-1][0] == GOAWAY
    with pytest.raises(H2Error):
        c.receive(b"")


def test_goaway_with_error_makes_the_connection_unusable():
    c = Connection()
    c.receive(frame(GOAWAY, 0, 0, (0).to_bytes(4, "big") + h2.ENHANCE_YOUR_CALM.to_bytes(4, "big") + b"too_many_pings"))
    assert not c.usable and "too_many_pings" in c.closed_reason


def test_stream_ids_run_out():
    c = Connection()
    c.next_id = h2.MAX_STREAM_ID
    c.request(BLOCK, b"")
    assert not c.usable


def feed_via_buffers(c: Connection, wire: bytes, step: int) -> list[int]:
    """Deliver ``wire`` as a socket would (recv_into the core's buffers, ``step`` at most)."""
    sizes = []
    view = memoryview(wire)
    while len(view):
        room = c.get_buffer()
        sizes.append(len(room))
        n = min(len(room), step, len(view))
        room[:n] = view[:n]
        room.release()
        view = view[n:]
        c.buffer_updated(n)
    return sizes


@pytest.mark.parametrize("step", [1, 7, 4096, 100000, 1 << 22])
def test_big_data_frames_go_straight_into_the_reply_buffer(step):
    c = Connection(in_size=1024)
    body = bytearray()
    call = c.request(BLOCK, b"", body=body)
    payload = bytes(range(256)) * 4096  # 1 MiB, in two frames, the second one padded
    msg = h2.grpc_message(payload)
    wire = (ok_headers(1) + frame(DATA, 0, 1, msg[:300000])
            + frame(DATA, PADDED, 1, bytes([9]) + msg[300000:] + b"\0" * 9) + trailers(1))
    sizes = feed_via_buffers(c, wire, step)
    assert bytes(call.result()) == payload
    assert len(c._in) == 1024  # the input buffer never had to hold a frame
    if step >= 4096:
        assert max(sizes) >= 300000 - 4096  # room in the reply buffer itself was offered
    # the same body buffer serves the next call
    call2 = c.request(BLOCK, b"", body=call.body)
    feed_via_buffers(c, reply(3, b"short"), step)
    assert bytes(call2.result()) == b"short" and call2.body is call.body


def test_reply_buffer_still_viewed_is_replaced_not_resized():
    c = Connection()
    body = bytearray()
    first = c.request(BLOCK, b"", body=body)
    c.receive(reply(1, b"a" * 10))
    held = first.result()  # a consumer still holds this view
    second = c.request(BLOCK, b"", body=first.body)
    c.receive(reply(3, b"b" * 100000))  # needs a bigger buffer
    assert bytes(second.result()) == b"b" * 100000
    assert second.body is not first.body and bytes(held) == b"a" * 10


def test_large_non_data_frame_grows_the_input_buffer():
    c = Connection(in_size=1024)
    call = c.request(BLOCK, b"")
    big = hpack.encode_plain([(b":status", b"200"), (b"x-big", b"v" * 5000)])
    feed_via_buffers(c, frame(HEADERS, END_HEADERS, 1, big) + frame(DATA, 0, 1, h2.grpc_message(b"ok"))
                     + trailers(1), 1 << 20)
    assert bytes(call.result()) == b"ok" and dict(call.headers)[b"x-big"] == b"v" * 5000


def test_long_request_header_block_goes_out_with_continuation():
    c = Connection()
    c.data_to_send()
    block = h2.request_headers(b"/grpc.AgentService/" + b"X" * 40000)
    c.request(block, b"")
    frames = parse_frames(c.data_to_send())
    heads = [f for f in frames if f[0] in (HEADERS, CONTINUATION)]
    assert [f[0] for f in heads] == [HEADERS, CONTINUATION, CONTINUATION]
    assert [f[1] & END_HEADERS for f in heads] == [0, 0, END_HEADERS]
    assert all(len(f[3]) <= h2.DEFAULT_MAX_FRAME for f in heads)
    assert b"".join(f[3] for f in heads) == block


def test_a_smaller_header_table_is_acknowledged_in_the_next_block():
    c = Connection()
    c.data_to_send()
    c.receive(frame(SETTINGS, 0, 0, h2.HEADER_TABLE_SIZE.to_bytes(2, "big") + (0).to_bytes(4, "big")))
    c.request(BLOCK, b"")
    c.request(BLOCK, b"")
    heads = [f[3] for f in parse_frames(c.data_to_send()) if f[0] == HEADERS]
    assert heads == [b"\x20" + BLOCK, BLOCK]  # a size update to 0, once (RFC 7541 section 4.2)
    assert dict(hpack.Decoder(0).decode(heads[0]))[b":path"] == b"/grpc.AgentService/WaitProcess"
