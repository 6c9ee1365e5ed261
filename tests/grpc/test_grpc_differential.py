"""Differential tests: kata_grpc's HTTP/2 + HPACK cores against the ``h2`` and ``hpack``
libraries (dev extras), both sans-IO, bytes cut at random points.

* the ``h2`` library's client-side connection drives our server core;
* an ``h2`` server-side connection (padding, CONTINUATION, SETTINGS changes, WINDOW_UPDATE
  at random points, its Huffman + dynamic-table encoder) drives our client core;
* the ``hpack`` library's encoder (Huffman or not, dynamic table, table size changes) feeds
  our decoder.
"""

from __future__ import annotations

import random

import pytest

h2_config = pytest.importorskip("h2.config")
import h2.connection  # noqa: E402
import h2.events  # noqa: E402
import h2.settings  # noqa: E402
import hpack as hpack_lib  # noqa: E402
from hypothesis import given, settings as hyp_settings, strategies as st  # noqa: E402

from kata_grpc import h2 as our_client  # noqa: E402
from kata_grpc import hpack  # noqa: E402
from kata_grpc.protocol import grpc_message  # noqa: E402
from kata_grpc.server import ConnectionEnded, RequestReceived, ServerConnection  # noqa: E402

PATH = "/grpc.AgentService/ReadStdout"


def pieces(rng: random.Random, data: bytes):
    """``data`` cut at random points."""
    pos = 0
    while pos < len(data):
        n = rng.choice((1, 7, 100, 4096, 70000, len(data)))
        yield data[pos:pos + n]
        pos += n


def set_first_settings(conn, values: dict) -> None:
    """The SETTINGS an h2 connection opens with.  (h2 applies a MAX_FRAME_SIZE change to its
    frame buffer only at its next receive_data, not at the ACK itself: a later change would fail
    frames the same read carries after the ACK, so the test sets the frame size up front; and
    h2 matches an ACK to the oldest pending change of each setting, not to a SETTINGS frame,
    so the tests change settings only when none is waiting for its ACK.)"""
    conn.local_settings = h2.settings.Settings(client=conn.config.client_side, initial_values=values)
    conn.max_inbound_frame_size = conn.local_settings.max_frame_size


def reply_to(request: bytes) -> bytes:
    return request[::-1] + b"!"


# ------------------------------------------------------------------ h2 client -> our server


@pytest.mark.parametrize("seed", range(12))
def test_h2_client_drives_our_server(seed):
    rng = random.Random(seed)
    small_frames = seed % 3 == 0
    server = ServerConnection({PATH}, max_frame=16384 if small_frames else 1 << 20, window=rng.choice((65535, 1 << 20)))
    server.decoder.max_list_size = 1 << 20  # room for a header block that needs CONTINUATION
    client = h2.connection.H2Connection(config=h2_config.H2Configuration(client_side=True, header_encoding=None))
    set_first_settings(client, {
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: rng.choice((100, 16384, 65535, 1 << 20)),
        h2.settings.SettingCodes.MAX_FRAME_SIZE: rng.choice((16384, 100000, 1 << 20)),
        h2.settings.SettingCodes.HEADER_TABLE_SIZE: rng.choice((0, 100, 4096)),
        h2.settings.SettingCodes.ENABLE_PUSH: 0,
    })
    client.initiate_connection()
    unacked = [1]  # SETTINGS frames the h2 client sent that our server has not acknowledged yet
    requests = {}
    bodies: dict[int, bytearray] = {}
    trailers = {}
    ended = set()
    answered = set()

    def to_server():
        data = client.data_to_send()
        events = []
        for piece in pieces(rng, data):
            events += server.receive(piece)
        for ev in events:
            assert isinstance(ev, RequestReceived), ev
            assert ev.path == PATH and ev.message == requests[ev.stream_id]
            assert server.respond(ev.stream_id, reply_to(ev.message))
            answered.add(ev.stream_id)

    def to_client():
        data = server.data_to_send()
        for piece in pieces(rng, data):
            for ev in client.receive_data(piece):
                if isinstance(ev, h2.events.DataReceived):
                    bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data)
                    client.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.TrailersReceived):
                    trailers[ev.stream_id] = dict(ev.headers)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended.add(ev.stream_id)
                elif isinstance(ev, h2.events.SettingsAcknowledged):
                    unacked[0] -= 1
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise AssertionError(ev)

    to_server()
    to_client()
    sending = {}
    for _ in range(6):
        sid = client.get_next_available_stream_id()
        message = rng.randbytes(rng.choice((0, 10, 20000, 300000)))
        requests[sid] = message
        extra = [(b"x-big", rng.randbytes(15000).hex().encode())] if small_frames and sid == 1 else []
        client.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH.encode()),
                                  (b":authority", b"agent"), (b"content-type", b"application/grpc"),
                                  (b"te", b"trailers"), (b"grpc-timeout", b"10S"), *extra])
        sending[sid] = memoryview(grpc_message(message))
    for _ in range(10000):
        for sid, rest in list(sending.items()):  # as much as the windows allow, padded at random
            while rest:
                room = min(client.local_flow_control_window(sid), client.max_outbound_frame_size)
                pad = rng.choice((None, 0, 3, 200)) if room > 300 else None
                n = min(len(rest), room - (pad + 1 if pad is not None else 0))
                if n <= 0:
                    break
                client.send_data(sid, bytes(rest[:n]), end_stream=n == len(rest), pad_length=pad)
                rest = rest[n:]
            sending[sid] = rest
            if not rest:
                del sending[sid]
        if rng.random() < 0.2:
            client.ping(rng.randbytes(8))
        if rng.random() < 0.3 and not unacked[0]:  # (h2 tells ACKs apart only one SETTINGS at a time)
            client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: rng.choice((1000, 65535, 1 << 20))})
            unacked[0] += 1
        to_server()
        to_client()
        if len(ended) == len(requests) and not sending:
            break
    assert ended == set(requests) == answered
    for sid, message in requests.items():
        assert bytes(bodies[sid]) == grpc_message(reply_to(message))
        assert trailers[sid][b"grpc-status"] == b"0"
    assert server.open_streams == 0


def test_h2_client_reset_and_goaway():
    server = ServerConnection({PATH})
    client = h2.connection.H2Connection(config=h2_config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    head = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH.encode()), (b":authority", b"a"),
            (b"content-type", b"application/grpc")]
    client.send_headers(1, head)
    client.send_data(1, grpc_message(b"a"), end_stream=True)
    (ev,) = server.receive(client.data_to_send())
    client.receive_data(server.data_to_send())
    client.reset_stream(1, 8)
    client.close_connection()
    events = server.receive(client.data_to_send())
    assert [type(e).__name__ for e in events] == ["StreamReset", "ConnectionEnded"]
    assert isinstance(events[1], ConnectionEnded) and events[1].graceful
    assert not server.respond(1, b"late")


# ------------------------------------------------------------------ h2 server -> our client


@pytest.mark.parametrize("seed", range(12))
def test_h2_server_drives_our_client(seed):
    rng = random.Random(1000 + seed)
    client = our_client.Connection(window=rng.choice((65535, 1 << 20, 4 << 20)),
                                   max_frame=rng.choice((16384, 1 << 20)))
    server = h2.connection.H2Connection(config=h2_config.H2Configuration(client_side=False, header_encoding=None))
    set_first_settings(server, {h2.settings.SettingCodes.MAX_FRAME_SIZE: rng.choice((16384, 1 << 20))})
    server.initiate_connection()
    unacked = [1]  # SETTINGS frames the h2 server sent that we have not acknowledged yet
    got_request: dict[int, bytearray] = {}
    sending: dict[int, memoryview] = {}

    def to_server():
        for piece in pieces(rng, client.data_to_send()):
            for ev in server.receive_data(piece):
                if isinstance(ev, h2.events.RequestReceived):
                    assert dict(ev.headers)[b":path"] == PATH.encode()
                    got_request[ev.stream_id] = bytearray()
                elif isinstance(ev, h2.events.DataReceived):
                    got_request[ev.stream_id] += ev.data
                    server.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    request = bytes(got_request[ev.stream_id])
                    big = [(b"x-pad", b"p" * 30000)] if rng.random() < 0.3 else []  # CONTINUATION
                    server.send_headers(ev.stream_id, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                                       *big])
                    sending[ev.stream_id] = memoryview(grpc_message(reply_to(request[5:])))
                elif isinstance(ev, h2.events.SettingsAcknowledged):
                    unacked[0] -= 1
                elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                    raise AssertionError(ev)

    def from_server():
        for sid, rest in list(sending.items()):
            while rest:
                room = min(server.local_flow_control_window(sid), server.max_outbound_frame_size)
                pad = rng.choice((None, 0, 5, 255)) if room > 300 else None
                n = min(len(rest), room - (pad + 1 if pad is not None else 0))
                if n <= 0:
                    break
                server.send_data(sid, bytes(rest[:n]), pad_length=pad)
                rest = rest[n:]
            sending[sid] = rest
            if not rest:
                del sending[sid]
                server.send_headers(sid, [(b"grpc-status", b"0"), (b"grpc-message", b"fine")], end_stream=True)
        if rng.random() < 0.3:
            server.ping(rng.randbytes(8))
        if rng.random() < 0.2:
            server.increment_flow_control_window(rng.randint(1, 1 << 16))
        if rng.random() < 0.3 and not unacked[0]:  # (h2 tells ACKs apart only one SETTINGS at a time)
            server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: rng.choice((1000, 65535, 1 << 20))})
            unacked[0] += 1
        for piece in pieces(rng, server.data_to_send()):
            client.receive(piece)

    calls = []
    for _ in range(5):
        message = rng.randbytes(rng.choice((0, 100, 70000, 1 << 20)))
        calls.append((client.request(our_client.request_headers(PATH.encode()), message), message))
    for _ in range(10000):
        to_server()
        from_server()
        if all(c.done for c, _ in calls):
            break
    for c, message in calls:
        assert bytes(c.result()) == reply_to(message)
        assert c.status() == (0, "fine")


# ------------------------------------------------------------------ hpack encoder -> our decoder

header = st.tuples(st.sampled_from([b":path", b"content-type", b"grpc-status", b"grpc-message", b"x-custom",
                                    b"user-agent", b"te"]) | st.binary(min_size=1, max_size=20).map(bytes.lower),
                   st.binary(max_size=300))


@hyp_settings(max_examples=150, deadline=None)
@given(blocks=st.lists(st.tuples(st.lists(header, max_size=12), st.booleans(),
                                 st.none() | st.sampled_from([0, 64, 256, 4096])), min_size=1, max_size=8))
def test_hpack_encoder_feeds_our_decoder(blocks):
    encoder = hpack_lib.Encoder()
    decoder = hpack.Decoder(4096)
    for headers, huffman, table_size in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size  # a size update at the start of the next block
        block = encoder.encode(headers, huffman=huffman)
        assert decoder.decode(block) == [(n, v) for n, v in headers]
    assert decoder.size <= decoder.max_size


@hyp_settings(max_examples=150, deadline=None)
@given(blocks=st.lists(st.tuples(st.lists(header, max_size=6), st.integers(1, 3)), min_size=1, max_size=8))
def test_repeated_blocks_decode_as_the_reference_decoder_does(blocks):
    """Header lists sent again (as a gRPC client repeats its request headers: the same indexed
    bytes once they are in the table): our decoder, which remembers a block that left the table
    unchanged, against the reference decoder, block by block."""
    encoder, reference, decoder = hpack_lib.Encoder(), hpack_lib.Decoder(), hpack.Decoder(4096)
    for headers, times in blocks:
        for _ in range(times):
            block = encoder.encode(headers)
            assert decoder.decode(block) == [(bytes(n), bytes(v)) for n, v in reference.decode(block, raw=True)]


def test_a_remembered_block_is_decoded_again_once_the_table_changed():
    decoder = hpack.Decoder(4096)
    add = lambda name, value: b"\x40" + hpack.encode_plain(((name, value),))[1:]  # literal, incremental indexing
    assert decoder.decode(add(b"x-a", b"1")) == [(b"x-a", b"1")]
    assert decoder.decode(b"\xbe") == [(b"x-a", b"1")]  # index 62: the newest entry
    first = decoder.decode(b"\xbe")
    first.append((b"mutated", b"by the caller"))  # a caller's change does not reach the next answer
    assert decoder.decode(b"\xbe") == [(b"x-a", b"1")]
    decoder.decode(add(b"x-b", b"2"))
    assert decoder.decode(b"\xbe") == [(b"x-b", b"2")]  # 62 is now the newer entry
    assert decoder.decode(b"\x3f\xe1\x1f\xbe") == [(b"x-b", b"2")]  # a size update in the block (4096)...
    decoder.decode(b"\x20")  # ...and to 0: the table is emptied
    with pytest.raises(hpack.HPACKError, match="out of range"):
        decoder.decode(b"\xbe")
    limited = hpack.Decoder(4096, max_list_size=100)
    assert limited.decode(b"\x82") == [(b":method", b"GET")]
    limited.max_list_size = 10  # 32 + 7 + 3 bytes is over
    with pytest.raises(hpack.HPACKError, match="larger than"):
        limited.decode(b"\x82")


def test_hpack_never_indexed_and_sensitive_fields():
    encoder = hpack_lib.Encoder()
    headers = [hpack_lib.NeverIndexedHeaderTuple(b"authorization", b"secret"), (b"x", b"y")]
    assert hpack.Decoder().decode(encoder.encode(headers)) == [(b"authorization", b"secret"), (b"x", b"y")]


@pytest.mark.parametrize("block, error", [
    (b"\x80", "header index 0"),                 # indexed field 0
    (b"\xbe", "header index out of range"),      # 62: the first dynamic entry, and the table is empty
    (b"\xff\x80\x01", "header index out of range"),  # 255 in the 7-bit prefix's continuation form
])
def test_bad_indexes_are_errors(block, error):
    with pytest.raises(hpack.HPACKError, match=error):
        hpack.Decoder().decode(block)


def test_indexes_reach_the_static_and_the_dynamic_table():
    decoder = hpack.Decoder()
    assert decoder.decode(b"\x40" + hpack.encode_plain(((b"x-a", b"1"),))[1:]) == [(b"x-a", b"1")]
    assert decoder.decode(b"\x82\xbe\x84") == [(b":method", b"GET"), (b"x-a", b"1"), (b":path", b"/")]
