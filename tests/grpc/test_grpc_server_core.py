"""The sans-IO server core (kata_grpc.server) against scripted client frames (no sockets)."""

from __future__ import annotations

import pytest

from kata_grpc import hpack
from kata_grpc.frames import (ACK, CONTINUATION, DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS,
                              INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, HEADER_TABLE_SIZE, PADDED, PING, PREFACE,
                              PRIORITY, RST_STREAM, SETTINGS, WINDOW_UPDATE, frame, settings_payload)
from kata_grpc.protocol import grpc_message
from kata_grpc.server import ConnectionEnded, RequestReceived, ServerConnection, StreamReset
from tests.support.h2_frames import parse_frames

CHECK = "/grpc.Health/Check"
PATHS = {CHECK, "/grpc.AgentService/ReadStdout"}


def request_block(path=CHECK, extra=()):
    return b"\x83\x86" + hpack.encode_plain([(b":path", path.encode()), (b":authority", b"x"),
                                             (b"content-type", b"application/grpc"), (b"te", b"trailers"),
                                             *extra])


def settings(**values):
    ids = {"window": INITIAL_WINDOW_SIZE, "frame": MAX_FRAME_SIZE, "table": HEADER_TABLE_SIZE}
    return frame(SETTINGS, 0, 0, settings_payload((ids[k], v) for k, v in values.items()))


def started(paths=PATHS, client_settings=b"", **kw):
    """A server core past the preface and the SETTINGS exchange."""
    conn = ServerConnection(paths, **kw)
    conn.data_to_send()
    assert conn.receive(PREFACE + (client_settings or settings())) == []
    assert (SETTINGS, ACK, 0, b"") in parse_frames(conn.data_to_send())
    return conn


def call(sid, message=b"", path=CHECK):
    return frame(HEADERS, END_HEADERS, sid, request_block(path)) + frame(DATA, END_STREAM, sid, grpc_message(message))


def response(frames, sid):
    """(headers, message bytes, trailers) of stream ``sid`` among ``frames``."""
    dec = hpack.Decoder()
    blocks = [dict(dec.decode(p)) for t, f, s, p in frames if t == HEADERS and s == sid]
    body = b"".join(p for t, f, s, p in frames if t == DATA and s == sid)
    return blocks, body


def test_settings_then_request_and_response():
    conn = ServerConnection(PATHS)
    sent = parse_frames(conn.data_to_send())
    assert sent[0][0] == SETTINGS and sent[1][0] == WINDOW_UPDATE
    events = conn.receive(PREFACE + settings() + call(1, b"\x0a\x01x"))
    assert len(events) == 1 and isinstance(events[0], RequestReceived)
    ev = events[0]
    assert (ev.stream_id, ev.path, ev.message, ev.timeout) == (1, CHECK, b"\x0a\x01x", None)
    assert conn.respond(1, b"\x08\x01")
    frames = parse_frames(conn.data_to_send())
    blocks, body = response(frames, 1)
    assert blocks[0][b":status"] == b"200" and blocks[0][b"content-type"] == b"application/grpc"
    assert blocks[1] == {b"grpc-status": b"0"}
    assert body == grpc_message(b"\x08\x01")
    assert frames[-1][1] == END_HEADERS | END_STREAM
    assert conn.open_streams == 0
    assert not conn.respond(1, b"")  # answered already


def test_request_one_byte_at_a_time_with_padding_priority_and_continuation():
    conn = ServerConnection(PATHS)
    block = request_block(extra=[(b"grpc-timeout", b"1500m")])
    padded = bytes([4]) + b"\x00\x00\x00\x00\x10" + block[:7] + b"\0" * 4  # PADDED | PRIORITY
    msg = grpc_message(b"hello")
    wire = (PREFACE + settings() + frame(PRIORITY, 0, 1, b"\0\0\0\0\x10")
            + frame(HEADERS, PADDED | 0x20, 1, padded) + frame(CONTINUATION, 0, 1, block[7:20])
            + frame(CONTINUATION, END_HEADERS, 1, block[20:])
            + frame(DATA, PADDED, 1, bytes([3]) + msg[:4] + b"\0\0\0") + frame(DATA, END_STREAM, 1, msg[4:]))
    events = []
    for i in range(len(wire)):
        events += conn.receive(wire[i:i + 1])
    assert [(e.path, e.message, e.timeout) for e in events] == [(CHECK, b"hello", 1.5)]


def test_huffman_and_dynamic_table_from_the_client():
    conn = started()
    path = hpack.huffman_encode(CHECK.encode())
    # ":path" (static 4) with incremental indexing, Huffman value; then the same by index (62) next time
    block = b"\x83\x86\x44" + bytes([0x80 | len(path)]) + path + hpack.encode_plain([(b"content-type", b"application/grpc")])
    events = conn.receive(frame(HEADERS, END_HEADERS, 1, block) + frame(DATA, END_STREAM, 1, grpc_message(b"")))
    again = b"\x83\x86\xbe" + hpack.encode_plain([(b"content-type", b"application/grpc")])
    events += conn.receive(frame(HEADERS, END_HEADERS, 3, again) + frame(DATA, END_STREAM, 3, grpc_message(b"")))
    assert [(e.stream_id, e.path) for e in events] == [(1, CHECK), (3, CHECK)]


def test_flow_control_of_large_requests():
    conn = started(window=1 << 16)
    payload = bytes(range(256)) * 1024  # 256 KiB: four of our windows
    msg = grpc_message(payload)
    conn.receive(frame(HEADERS, END_HEADERS, 1, request_block()))
    updates = {0: 0, 1: 0}
    events = []
    for i in range(0, len(msg), 16384):
        last = i + 16384 >= len(msg)
        events += conn.receive(frame(DATA, END_STREAM if last else 0, 1, msg[i:i + 16384]))
        for t, f, s, p in parse_frames(conn.data_to_send()):
            if t == WINDOW_UPDATE:
                updates[s] += int.from_bytes(p, "big")
        # never more in flight than the windows we gave
        assert i + 16384 - updates[0] <= (1 << 16)
    assert events[0].message == payload
    assert updates[0] >= len(msg) - (1 << 16) and updates[1] >= len(msg) - (1 << 16) - 16384


def test_large_response_respects_the_client_windows_and_frame_size():
    conn = started(client_settings=settings(window=1000))
    conn.receive(call(1))
    payload = bytes(range(256)) * 4096  # 1 MiB, as a ReadStdout answer
    conn.respond(1, payload)
    frames = parse_frames(conn.data_to_send())
    data = [f for f in frames if f[0] == DATA]
    assert sum(len(f[3]) for f in data) == 1000 and not any(f[0] == HEADERS and f[1] & END_STREAM for f in frames)
    got = b"".join(f[3] for f in data)
    conn.receive(frame(WINDOW_UPDATE, 0, 0, (1 << 21).to_bytes(4, "big")))  # connection window: plenty
    for _ in range(2000):
        conn.receive(frame(WINDOW_UPDATE, 0, 1, (1000).to_bytes(4, "big")))
        frames = parse_frames(conn.data_to_send())
        chunk = [f for f in frames if f[0] == DATA]
        assert sum(len(f[3]) for f in chunk) <= 1000
        got += b"".join(f[3] for f in chunk)
        if any(f[0] == HEADERS and f[1] & END_STREAM for f in frames):
            break
    assert got == grpc_message(payload)
    # with big windows, frames are cut to the client's SETTINGS_MAX_FRAME_SIZE (16 KiB by default)
    conn.receive(frame(SETTINGS, 0, 0, settings_payload([(INITIAL_WINDOW_SIZE, 1 << 24)])) + call(3))
    conn.receive(frame(WINDOW_UPDATE, 0, 0, (1 << 24).to_bytes(4, "big")))
    conn.data_to_send()
    conn.respond(3, payload)
    data = [f for f in parse_frames(conn.data_to_send()) if f[0] == DATA]
    assert max(len(f[3]) for f in data) == 16384 and b"".join(f[3] for f in data) == grpc_message(payload)


def test_long_error_message_is_cut_and_headers_split_into_continuation():
    conn = started()
    conn.receive(call(1) + call(3))
    assert conn.respond_error(1, 5, "caf\u00e9 100%" * 2000)
    frames = parse_frames(conn.data_to_send())
    (block,), _ = response(frames, 1)
    assert block[b"grpc-status"] == b"5" and block[b"grpc-message"].startswith(b"caf%C3%A9 100%25")
    assert len(block[b"grpc-message"]) <= 4096
    # a block beyond the client's max frame size goes out as HEADERS + CONTINUATION
    conn.peer_max_frame = 16384
    conn.respond(3, b"")
    big = b"\x88" + hpack.encode_plain([(b"x-big", b"v" * 40000)])
    conn._send_headers(5, END_STREAM, big)
    frames = parse_frames(conn.data_to_send())
    tail = [f for f in frames if f[2] == 5]
    assert [f[0] for f in tail] == [HEADERS, CONTINUATION, CONTINUATION]
    assert tail[-1][1] == END_HEADERS and b"".join(f[3] for f in tail) == big


def test_ping_is_acked():
    conn = started()
    conn.receive(frame(PING, 0, 0, b"pingpong") + frame(PING, ACK, 0, b"ignored!"))
    assert parse_frames(conn.data_to_send()) == [(PING, ACK, 0, b"pingpong")]


def test_unknown_path_is_unimplemented_and_needs_no_event():
    conn = started()
    assert conn.receive(call(1, path="/grpc.AgentService/Nope")) == []
    (block,), body = response(parse_frames(conn.data_to_send()), 1)
    assert block[b"grpc-status"] == b"12" and body == b""


def test_oversize_request_is_refused_early():
    conn = started(max_message=1000)
    conn.receive(frame(HEADERS, END_HEADERS, 1, request_block()))
    assert conn.receive(frame(DATA, 0, 1, grpc_message(b"x" * 2000)[:1500])) == []
    frames = parse_frames(conn.data_to_send())
    (block,), _ = response(frames, 1)
    assert block[b"grpc-status"] == b"8"
    assert (RST_STREAM, 0, 1, b"\0\0\0\0") in frames  # the rest of the request is not wanted (NO_ERROR)
    # the rest arrives anyway: counted, dropped; the connection goes on
    assert conn.receive(frame(DATA, END_STREAM, 1, b"x" * 505) + call(3)) != []
    # announced by its prefix before the bytes come
    conn.receive(frame(HEADERS, END_HEADERS, 5, request_block()) + frame(DATA, 0, 5, b"\0\0\0\x10\0"))
    (block,), _ = response(parse_frames(conn.data_to_send()), 5)
    assert block[b"grpc-status"] == b"8"


@pytest.mark.parametrize("body, status", [
    (b"", b"13"),                                  # no message
    (grpc_message(b"ab") + grpc_message(b""), b"13"),  # two messages
    (b"\x01\0\0\0\0", b"13"),                       # compressed
])
def test_bad_request_bodies(body, status):
    conn = started()
    assert conn.receive(frame(HEADERS, END_HEADERS, 1, request_block()) + frame(DATA, END_STREAM, 1, body)) == []
    (block,), _ = response(parse_frames(conn.data_to_send()), 1)
    assert block[b"grpc-status"] == status


def test_reset_mid_call():
    conn = started()
    conn.receive(call(1) + call(3))
    events = conn.receive(frame(RST_STREAM, 0, 1, (8).to_bytes(4, "big")))
    assert [(type(e), e.stream_id, e.error_code) for e in events] == [(StreamReset, 1, 8)]
    assert not conn.respond(1, b"late")  # nothing goes out for a reset stream
    assert conn.respond(3, b"ok")
    assert {f[2] for f in parse_frames(conn.data_to_send())} == {3}
    # a reset in the middle of a large answer stops it
    conn.receive(frame(SETTINGS, 0, 0, settings_payload([(INITIAL_WINDOW_SIZE, 100)])) + call(5))
    conn.respond(5, b"y" * 10000)
    conn.data_to_send()
    assert isinstance(conn.receive(frame(RST_STREAM, 0, 5, (8).to_bytes(4, "big")))[0], StreamReset)
    conn.receive(frame(WINDOW_UPDATE, 0, 5, (1 << 20).to_bytes(4, "big")))
    assert [f for f in parse_frames(conn.data_to_send()) if f[2] == 5] == []
    assert conn.open_streams == 0


def test_goaway_from_the_client_and_from_us():
    conn = started()
    conn.receive(call(1))
    events = conn.receive(frame(GOAWAY, 0, 0, (1).to_bytes(4, "big") + b"\0\0\0\0"))
    assert isinstance(events[0], ConnectionEnded) and events[0].graceful
    assert conn.respond(1, b"still answered")
    conn.close()
    frames = parse_frames(conn.data_to_send())
    assert frames[-1] == (GOAWAY, 0, 0, (1).to_bytes(4, "big") + b"\0\0\0\0")
    assert conn.receive(call(3)) == []  # above our last stream id: never processed


def test_too_many_streams_are_refused():
    conn = started(max_streams=2)
    conn.receive(call(1) + call(3) + call(5))
    assert (RST_STREAM, 0, 5, (7).to_bytes(4, "big")) in parse_frames(conn.data_to_send())


@pytest.mark.parametrize("extra, expect", [
    ([(b"grpc-timeout", b"forever")], "13"),
    ([(b"grpc-encoding", b"gzip")], "12"),
])
def test_header_level_answers(extra, expect):
    conn = started()
    assert conn.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block(extra=extra))) == []
    (block,), _ = response(parse_frames(conn.data_to_send()), 1)
    assert block[b"grpc-status"] == expect.encode()


@pytest.mark.parametrize("extra", [[(b"te", b"gzip")], [(b"Upper", b"x")], [(b"connection", b"close")]])
def test_connection_specific_or_uppercase_headers_are_malformed(extra):
    conn = started()
    assert conn.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, request_block(extra=extra))) == []
    assert parse_frames(conn.data_to_send()) == [(RST_STREAM, 0, 1, (1).to_bytes(4, "big"))]
    assert conn.receive(call(3)) != []  # only that stream is refused


def test_malformed_request_headers_reset_the_stream():
    conn = started()
    no_path = b"\x83\x86" + hpack.encode_plain([(b"content-type", b"application/grpc")])
    assert conn.receive(frame(HEADERS, END_HEADERS | END_STREAM, 1, no_path)) == []
    assert parse_frames(conn.data_to_send()) == [(RST_STREAM, 0, 1, (1).to_bytes(4, "big"))]
    not_grpc = b"\x83\x86" + hpack.encode_plain([(b":path", CHECK.encode()), (b"content-type", b"text/plain")])
    conn.receive(frame(HEADERS, END_HEADERS | END_STREAM, 3, not_grpc))
    (block,), _ = response(parse_frames(conn.data_to_send()), 3)
    assert block[b":status"] == b"415"


@pytest.mark.parametrize("wire, code", [
    (b"GET / HTTP/1.1\r\n\r\n" + b"x" * 20, 1),                          # not HTTP/2
    (PREFACE + frame(PING, 0, 0, b"12345678"), 1),                        # first frame not SETTINGS
    (PREFACE + settings() + frame(HEADERS, END_HEADERS, 1, b"\x80"), 9),  # HPACK index 0
    (PREFACE + settings() + frame(HEADERS, END_HEADERS, 1, b"\xff\xff"), 9),  # truncated integer
    (PREFACE + settings() + frame(HEADERS, END_HEADERS, 2, request_block()), 1),  # even stream
    (PREFACE + settings() + frame(DATA, 0, 7, b"x"), 1),                 # DATA on an idle stream
    (PREFACE + settings() + frame(HEADERS, 0, 1, request_block()) + frame(DATA, 0, 1, b"x"), 1),  # not CONTINUATION
    (PREFACE + settings() + frame(WINDOW_UPDATE, 0, 0, b"\0\0\0\0"), 1),  # zero increment
    (PREFACE + settings() + frame(SETTINGS, 0, 0, b"\0\5\0\0\0\1"), 1),   # MAX_FRAME_SIZE too small
    (PREFACE + settings() + bytes((0x20, 0, 0, DATA, 0, 0, 0, 0, 1)), 6),  # a frame above our max
])
def test_connection_errors_are_events_and_goaway(wire, code):
    conn = ServerConnection(PATHS, max_frame=1 << 20)
    conn.data_to_send()
    events = conn.receive(wire)
    assert len(events) == 1 and isinstance(events[0], ConnectionEnded) and not events[0].graceful
    assert events[0].error_code == code
    goaway = parse_frames(conn.data_to_send())[-1]
    assert goaway[0] == GOAWAY and int.from_bytes(goaway[3][4:8], "big") == code
    assert conn.receive(call(1)) == []  # nothing more is processed


def test_header_list_bomb_is_a_compression_error():
    conn = started()
    # one 4000-byte entry in the dynamic table, then referenced again and again
    block = b"\x40" + hpack.encode_int(5, 7) + b"x-big" + hpack.encode_int(4000, 7) + b"v" * 4000 + b"\xbe" * 1000
    events = conn.receive(frame(HEADERS, END_HEADERS, 1, block))
    assert isinstance(events[0], ConnectionEnded) and events[0].error_code == 9


def test_table_size_setting_is_acknowledged_in_the_next_block():
    conn = started(client_settings=settings(table=0))
    conn.receive(call(1))
    conn.respond(1, b"")
    frames = parse_frames(conn.data_to_send())
    first = [f for f in frames if f[0] == HEADERS][0]
    assert first[3][0] == 0x20  # dynamic table size update to 0
    dec = hpack.Decoder(0)
    assert dict(dec.decode(first[3]))[b":status"] == b"200"


def test_a_small_answer_is_three_whole_frames_and_takes_from_both_windows():
    """An answer that fits one frame and both windows goes out whole (HEADERS, one DATA frame
    without END_STREAM, trailers with it), as _flush_data would cut it, and counts against the
    windows; one past SMALL_ANSWER goes through _flush_data and reads back the same."""
    from kata_grpc.server import SMALL_ANSWER

    conn = started()
    conn.receive(call(1) + call(3))
    window, message = conn.send_window, b"\x08\x01" * 10
    assert conn.respond(1, message)
    frames = parse_frames(conn.data_to_send())
    assert [(t, f, s) for t, f, s, _ in frames] == [(HEADERS, END_HEADERS, 1), (DATA, 0, 1),
                                                    (HEADERS, END_HEADERS | END_STREAM, 1)]
    headers, body = response(frames, 1)
    assert headers == [{b":status": b"200", b"content-type": b"application/grpc"}, {b"grpc-status": b"0"}]
    assert body == grpc_message(message) and conn.send_window == window - len(body)
    assert 1 not in conn.streams and not conn.respond(1, message)  # done: forgotten, not answerable twice
    big = bytes(SMALL_ANSWER)
    assert conn.respond(3, big)
    headers, body = response(parse_frames(conn.data_to_send()), 3)
    assert headers[-1] == {b"grpc-status": b"0"} and body == grpc_message(big)


def test_a_small_answer_waits_for_the_window_like_any_other():
    conn = started(client_settings=settings(window=4))  # the client's stream window: 4 bytes
    conn.receive(call(1))
    assert conn.respond(1, b"\x08\x01")  # 7 bytes with the prefix: cut, the rest when the window opens
    frames = parse_frames(conn.data_to_send())
    assert [(t, len(p)) for t, f, s, p in frames if t == DATA] == [(DATA, 4)]
    conn.receive(frame(WINDOW_UPDATE, 0, 1, (10).to_bytes(4, "big")))
    headers, body = response(frames + parse_frames(conn.data_to_send()), 1)
    assert body == grpc_message(b"\x08\x01") and headers[-1] == {b"grpc-status": b"0"}


def test_any_split_of_the_received_bytes_gives_the_same_events():
    """Bytes arriving in two pieces, cut anywhere: parsed where they lie while nothing is
    buffered, the unfinished frame kept for the next piece."""
    wire = PREFACE + settings() + call(1, b"\x0a\x01x") + frame(PING, 0, 0, bytes(8)) + call(3, b"y" * 300)

    def events(pieces):
        conn = ServerConnection(PATHS)
        got = []
        for piece in pieces:
            got += [(type(e).__name__, getattr(e, "stream_id", None), getattr(e, "message", None))
                    for e in conn.receive(piece)]
        return got, parse_frames(conn.data_to_send())

    whole = events([wire])
    assert [e[:2] for e in whole[0]] == [("RequestReceived", 1), ("RequestReceived", 3)]
    for cut in range(1, len(wire)):
        assert events([wire[:cut], wire[cut:]]) == whole, cut


def test_a_repeated_header_list_passes_as_the_first_did_and_any_other_is_checked():
    """The last accepted request's headers are remembered: an equal list is accepted with the
    same path and timeout; a different one (another path, a bad header) is checked in full, even
    if a handler changed the list the first request's event carried."""
    conn = started()
    timed = request_block(extra=[(b"grpc-timeout", b"5S")])
    first = conn.receive(frame(HEADERS, END_HEADERS, 1, timed) + frame(DATA, END_STREAM, 1, grpc_message(b"")))
    first[0].headers.append((b"connection", b"close"))  # what a handler might do with the event's list
    again = conn.receive(frame(HEADERS, END_HEADERS, 3, timed) + frame(DATA, END_STREAM, 3, grpc_message(b"")))
    assert [(e.stream_id, e.path, e.timeout) for e in first + again] == [(1, CHECK, 5.0), (3, CHECK, 5.0)]
    bad = request_block(extra=[(b"grpc-timeout", b"5S"), (b"connection", b"close")])
    assert conn.receive(frame(HEADERS, END_HEADERS, 5, bad)) == []
    assert (RST_STREAM, 0, 5, (1).to_bytes(4, "big")) in parse_frames(conn.data_to_send())  # PROTOCOL_ERROR
    other = conn.receive(call(7, path="/grpc.AgentService/ReadStdout"))
    assert [(e.stream_id, e.path, e.timeout) for e in other] == [(7, "/grpc.AgentService/ReadStdout", None)]



def test_a_repeated_header_list_is_refused_once_its_path_is_no_longer_served():
    paths = {CHECK}
    conn = started(paths=paths)
    assert [e.stream_id for e in conn.receive(call(1))] == [1]
    paths.discard(CHECK)
    assert conn.receive(call(3)) == []  # UNIMPLEMENTED, answered by the core
    headers, _ = response(parse_frames(conn.data_to_send()), 3)
    assert headers[-1][b"grpc-status"] == b"12"
