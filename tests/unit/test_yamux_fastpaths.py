"""The yamux fast paths, pinned down against the general paths.

Sans-IO core: ``receive_data(transient=True)`` (a reused read buffer is never
aliased by what the connection keeps), the one-flagless-Data-frame receive
fast path and ``take_direct`` (same bytes and the same window updates as the
buffered path, whatever the chunking; never for a reset or closed stream),
``send_data_now`` (never beyond the send window, never after FIN or RST).

asyncio (and uvloop): the BufferedProtocol session reader and its reused
buffer, the splice fast paths (payload written from the read buffer, socket
chunks sent as one frame at once) with backpressure, half-close and reset,
and ``Config.socket_send_buffer``.
"""

import asyncio
import os
import random
import socket

import pytest

from yamux import Config, ProtocolError, SessionClosedError, StreamClosedError, StreamResetError, splice
from yamux.core import MAX_DATA_FRAME, Connection, DataReceived, StreamEnded
from yamux.frame import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    HEADER_SIZE,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_WINDOW_UPDATE,
    encode_header,
)
from test_yamux_aio import NO_KEEPALIVE, RawPeer, on_both_loops, sessions
from yamux_helpers import split_frames

pytestmark = pytest.mark.timeout(30)

KiB = 1024
MiB = 1024 * KiB
THRESHOLD = INITIAL_WINDOW // 2  # a window update is sent once this much was consumed


def wu(flags, sid, delta=0):
    return encode_header(TYPE_WINDOW_UPDATE, flags, sid, delta)


def dframe(sid, body, flags=0):
    return encode_header(TYPE_DATA, flags, sid, len(body)) + body


def frames_of(buffers):
    return split_frames(b"".join(bytes(b) for b in buffers))


def inbound(direct, config=None):
    """A server core with stream 1 opened by the peer and accepted (ACK taken)."""
    conn = Connection(client=False, config=config)
    conn.receive_data(wu(FLAG_SYN, 1))
    st = conn.accept()
    conn.take_output()
    conn.take_events()
    st.direct = direct
    return conn, st


class Feeder:
    """Feeds a core as the asyncio session does.  Transient: each chunk is
    read into one reused bytearray and passed as a view; direct payload is
    copied out at once (the splice writes it before the next read); then the
    buffer is overwritten, as the next read would."""

    def __init__(self, conn, transient):
        self.conn = conn
        self.transient = transient
        self.buf = bytearray(512 * KiB)
        self.direct = {}  # sid -> bytearray, via take_direct
        self.events = []
        self.parse_calls = 0
        parse = conn._parse

        def counting_parse(data):
            self.parse_calls += 1
            return parse(data)

        conn._parse = counting_parse

    def feed(self, chunk):
        conn = self.conn
        if self.transient:
            n = len(chunk)
            self.buf[:n] = chunk
            events = conn.receive_data(memoryview(self.buf)[:n], transient=True)
        else:
            events = conn.receive_data(chunk)
        direct = conn.take_direct()
        for i in range(0, len(direct), 2):
            self.direct.setdefault(direct[i].stream_id, bytearray()).extend(direct[i + 1])
        if self.transient:
            self.buf[:n] = b"\xee" * n  # the next read reuses the buffer
        self.events += events
        return events


def chunked(wire, sizes):
    """Cut ``wire`` into chunks of the given sizes (cycled)."""
    chunks, pos, i = [], 0, 0
    while pos < len(wire):
        size = sizes[i % len(sizes)]
        chunks.append(wire[pos : pos + size])
        pos += size
        i += 1
    return chunks


# ----------------------------------------------------- transient receive buffer


def test_transient_buffer_two_chunks_then_mutated():
    conn, st = inbound(direct=False)
    feeder = Feeder(conn, transient=True)
    wire = dframe(1, b"hello ") + dframe(1, b"world")
    # the first chunk ends inside the second frame's header (kept as _partial)
    feeder.feed(wire[: len(b"hello ") + HEADER_SIZE + 5])
    feeder.feed(wire[len(b"hello ") + HEADER_SIZE + 5 :])
    assert conn.read(st) == b"hello world"
    assert not conn.closed


@pytest.mark.parametrize(
    "sizes",
    [[1 << 30], [7], [HEADER_SIZE + 3], [5], [4096 + 3], [16 * KiB], [64 * KiB + 1], [100, 30000, 1, 70000]],
    ids=lambda s: "-".join(map(str, s)),
)
def test_transient_buffer_is_never_aliased_by_buffered_data(sizes):
    """Buffered (not direct) payload must be copied out of the reused buffer:
    small and large bodies, a body continued over chunks, a chunk that is all
    body, a header split over chunks."""
    rng = random.Random(1)
    payload = rng.randbytes(250 * KiB)
    bodies, pos = [], 0
    for size in (1, 100, 4096, 4097, 20000, 70000, 16 * KiB):
        bodies.append(payload[pos : pos + size])
        pos += size
    bodies.append(payload[pos:])
    wire = b"".join(dframe(1, body) for body in bodies)
    conn, st = inbound(direct=False)
    feeder = Feeder(conn, transient=True)
    chunks = chunked(wire, sizes)
    step = max(1, len(chunks) // 64)
    for i, chunk in enumerate(chunks):
        feeder.feed(chunk)
        # what is buffered so far is exactly a prefix, though the buffer was overwritten
        if i % step == 0:
            assert b"".join(bytes(piece) for piece in st.recv_buf) == payload[: st.recv_len]
    assert not conn.closed
    assert st.recv_len == len(payload)
    assert conn.read(st) == payload
    assert not any(isinstance(piece, memoryview) and piece.obj is feeder.buf for piece in st.recv_buf)


def test_transient_direct_payload_is_delivered_before_the_buffer_is_reused():
    rng = random.Random(2)
    payload = rng.randbytes(200 * KiB)
    wire = b"".join(dframe(1, payload[i : i + 9000]) for i in range(0, len(payload), 9000))
    for sizes in ([len(wire)], [9000 + HEADER_SIZE], [777], [3]):
        conn, st = inbound(direct=True)
        feeder = Feeder(conn, transient=True)
        for chunk in chunked(wire, sizes):
            feeder.feed(chunk)
        assert bytes(feeder.direct[1]) == payload, sizes
        assert st.recv_len == 0 and not conn.closed


# ------------------------------------------------ fast path vs general path


def run_chunks(chunks, *, direct, transient):
    """Feed ``chunks`` to stream 1; a non-direct stream is read after every
    chunk (as a splice takes all that is buffered).  Returns what the stream
    got, the window updates sent (after every chunk, in order), the feeder."""
    conn, st = inbound(direct=direct)
    feeder = Feeder(conn, transient=transient)
    got = bytearray()
    updates = []
    for chunk in chunks:
        feeder.feed(chunk)
        if not direct:
            got += conn.read(st)
        updates.append([(h.type, h.flags, h.stream_id, h.length) for h, _ in frames_of(conn.take_output())])
    if direct:
        got += feeder.direct.get(1, b"")
    assert not conn.closed, conn.error
    return bytes(got), updates, feeder, conn, st


def shapes():
    rng = random.Random(3)
    payload = rng.randbytes(900 * KiB)
    sizes = [1, 4096, 4097, 100 * KiB, 30000, 64 * KiB, 120 * KiB, 5, 128 * KiB, 50000, 90000, 77777]
    bodies, pos = [], 0
    for size in sizes:
        bodies.append(payload[pos : pos + size])
        pos += size
    total = pos
    flagless = [dframe(1, b) for b in bodies]
    # ACK is a no-op on an inbound stream but takes the frame off the fast path
    flagged = [dframe(1, b, FLAG_ACK if i % 2 else 0) for i, b in enumerate(bodies)]
    flagged[-1] = dframe(1, bodies[-1], FLAG_FIN)
    partial = []
    for frame in flagless:  # every frame in three pieces: header cut, body cut
        partial += [frame[:7], frame[7 : HEADER_SIZE + len(frame) // 3], frame[HEADER_SIZE + len(frame) // 3 :]]
    partial = [piece for piece in partial if piece]
    # several frames per chunk: smaller frames, so that the sender stays within
    # the window even when the receiver reads only once per chunk
    small, pos, cycle = [], 0, [1, 4096, 4097, 40000, 30000, 5, 12345, 39999]
    while pos < total:
        size = cycle[len(small) % len(cycle)]
        small.append(dframe(1, payload[pos : min(pos + size, total)]))
        pos += size
    pairs = [b"".join(small[i : i + 2]) for i in range(0, len(small), 2)]
    odd = chunked(b"".join(small), [40000, 3, 31073, 12, 20000, HEADER_SIZE + 1])
    return payload[:total], {"flagless": flagless, "flagged": flagged, "partial": partial, "pairs": pairs, "odd": odd}


PAYLOAD, SHAPES = shapes()


@pytest.mark.parametrize("shape", ["flagless", "flagged", "partial"])
def test_one_piece_per_chunk_same_bytes_and_window_updates_as_the_slow_path(shape):
    chunks = SHAPES[shape]
    ref_bytes, ref_updates, _, _, _ = run_chunks(chunks, direct=False, transient=False)
    assert ref_bytes == PAYLOAD
    assert any(ref_updates), "the shape must cross the update threshold"
    for direct in (False, True):
        for transient in (False, True):
            got, updates, feeder, conn, st = run_chunks(chunks, direct=direct, transient=transient)
            assert got == PAYLOAD, (direct, transient)
            assert updates == ref_updates, (direct, transient)
            if direct and shape == "flagless":
                assert feeder.parse_calls == 0  # every chunk took the one-frame fast path
            if shape == "flagged":
                assert [type(e) for e in feeder.events].count(StreamEnded) == 1
                assert not any(type(e) is DataReceived for e in feeder.events) or not direct


@pytest.mark.parametrize("shape", ["pairs", "odd"])
def test_several_pieces_per_chunk_keep_the_window_exact(shape):
    chunks = SHAPES[shape]
    ref = run_chunks(chunks, direct=True, transient=False)
    for direct, transient in ((False, False), (False, True), (True, True)):
        got, updates, _, conn, st = run_chunks(chunks, direct=direct, transient=transient)
        assert got == PAYLOAD
        if direct:
            assert updates == ref[1]  # a transient buffer changes nothing but copies
        deltas = [u[3] for chunk_updates in updates for u in chunk_updates]
        assert all(u[:3] == (TYPE_WINDOW_UPDATE, 0, 1) for chunk_updates in updates for u in chunk_updates)
        assert all(delta >= THRESHOLD for delta in deltas)
        # every byte is either advertised back or still counted as consumed
        assert sum(deltas) + st.consumed == len(PAYLOAD)
        assert st.consumed < THRESHOLD
        assert st.recv_window + st.consumed == INITIAL_WINDOW


@pytest.mark.parametrize("transient", [False, True])
def test_a_data_frame_exactly_filling_the_window(transient):
    body = os.urandom(INITIAL_WINDOW)
    # buffered stream: the window closes to 0, one byte more is a protocol error
    conn, st = inbound(direct=False)
    feeder = Feeder(conn, transient)
    feeder.feed(dframe(1, body))
    assert st.recv_window == 0 and st.recv_len == INITIAL_WINDOW and not conn.closed
    feeder.feed(dframe(1, b"x"))
    assert conn.closed and isinstance(conn.error, ProtocolError)
    assert (TYPE_GO_AWAY, 1) in [(h.type, h.length) for h, _ in frames_of(conn.take_output())]

    # direct stream with part of its window in use: exactly what is left goes
    # through the fast path; one byte more must not slip past the window check
    for extra, ok in ((0, True), (1, False)):
        conn, st = inbound(direct=False)
        feeder = Feeder(conn, transient)
        feeder.feed(dframe(1, body[: 100 * KiB]))
        assert conn.read(st) == body[: 100 * KiB]
        assert not frames_of(conn.take_output())  # 100 KiB consumed: below the threshold
        left = st.recv_window
        assert left == INITIAL_WINDOW - 100 * KiB
        st.direct = True
        big = os.urandom(left + extra)
        feeder.feed(dframe(1, big))
        if ok:
            assert bytes(feeder.direct[1]) == big and feeder.parse_calls == 1  # the 100 KiB only
            assert [(h.type, h.flags, h.length) for h, _ in frames_of(conn.take_output())] == [
                (TYPE_WINDOW_UPDATE, 0, INITIAL_WINDOW)
            ]
            assert st.recv_window == INITIAL_WINDOW and st.consumed == 0
        else:
            assert conn.closed and isinstance(conn.error, ProtocolError)
            assert 1 not in feeder.direct


# ------------------------------------------------------------- take_direct


@pytest.mark.parametrize("transient", [False, True])
def test_take_direct_is_empty_for_reset_and_closed_streams(transient):
    body = b"payload" * 100

    conn, st = inbound(direct=True)
    conn.reset_stream(st)
    Feeder(conn, transient).feed(dframe(1, body))
    assert conn.take_direct() == [] and st.recv_len == 0

    conn, st = inbound(direct=True)  # reset by the peer, then data
    feeder = Feeder(conn, transient)
    feeder.feed(wu(FLAG_RST, 1) + dframe(1, body))
    feeder.feed(dframe(1, body))
    assert feeder.direct == {} and st.reset

    conn, st = inbound(direct=True)  # payload on the RST frame itself
    feeder = Feeder(conn, transient)
    feeder.feed(dframe(1, body, FLAG_RST))
    assert feeder.direct == {} and st.reset

    conn, st = inbound(direct=True)  # FIN from the peer, then (bogus) data
    feeder = Feeder(conn, transient)
    feeder.feed(wu(FLAG_FIN, 1))
    feeder.feed(dframe(1, body))
    assert feeder.direct == {}

    conn, st = inbound(direct=True)  # closed by us: dropped, credit still returned
    conn.close_stream(st)
    conn.take_output()
    feeder = Feeder(conn, transient)
    for _ in range(3):
        feeder.feed(dframe(1, os.urandom(100 * KiB)))
    assert feeder.direct == {} and st.recv_len == 0
    assert sum(h.length for h, _ in frames_of(conn.take_output()) if h.type == TYPE_WINDOW_UPDATE) >= THRESHOLD

    conn, st = inbound(direct=True)  # the session ended
    conn.close()
    Feeder(conn, transient).feed(dframe(1, body))
    assert conn.take_direct() == []


@pytest.mark.parametrize("transient", [False, True])
def test_direct_payload_keeps_its_order_behind_buffered_data(transient):
    conn, st = inbound(direct=False)
    feeder = Feeder(conn, transient)
    feeder.feed(dframe(1, b"first "))
    st.direct = True  # e.g. the splice resumed writing: the buffer goes first
    feeder.feed(dframe(1, b"second "))
    feeder.feed(dframe(1, b"third", FLAG_FIN))
    assert feeder.direct == {}
    assert b"".join(bytes(p) for p in conn.take_received(st)) == b"first second third"
    # nothing buffered any more: payload goes direct again, the FIN event after it
    conn, st = inbound(direct=True)
    feeder = Feeder(conn, transient)
    events = feeder.feed(dframe(1, b"last", FLAG_FIN))
    assert bytes(feeder.direct[1]) == b"last" and [type(e) for e in events] == [StreamEnded]


# ----------------------------------------------------------- send_data_now


def outbound():
    conn = Connection(client=True)
    st = conn.open_stream()
    return conn, st


def test_send_data_now_cuts_one_frame_after_the_control_frames():
    conn, st = outbound()
    out = conn.send_data_now(st, b"small")
    assert len(out) == 2  # the SYN, then header and body joined
    frames = frames_of(out)
    assert [(h.type, h.flags, h.length) for h, _ in frames] == [(TYPE_WINDOW_UPDATE, FLAG_SYN, 0), (TYPE_DATA, 0, 5)]
    assert frames[1][1] == b"small"
    big = bytearray(os.urandom(10 * KiB))
    expected = bytes(big)
    out = conn.send_data_now(st, big)
    big[:] = b"\0" * len(big)  # the caller's buffer is not kept
    assert len(out) == 2 and [body for _, body in frames_of(out)] == [expected]  # header, body
    assert st.send_window == INITIAL_WINDOW - 5 - 10 * KiB and st.send_len == 0
    assert conn.send_data_now(st, b"") is None and not conn.has_output


def test_send_data_now_never_exceeds_the_send_window():
    conn, st = outbound()
    conn.take_output()
    body = os.urandom(INITIAL_WINDOW)
    out = conn.send_data_now(st, body)  # exactly the window: at once
    assert [(h.length, b) for h, b in frames_of(out)] == [(INITIAL_WINDOW, body)]
    assert st.send_window == 0
    assert conn.send_data_now(st, b"z") is None  # no window: queued
    assert conn.take_output() == []
    conn.receive_data(wu(0, 1, 10))
    assert conn.send_data_now(st, b"after") is None  # behind the queued byte
    assert [(h.length, b) for h, b in frames_of(conn.take_output())] == [(6, b"zafter")]
    assert st.send_window == 4
    assert conn.send_data_now(st, b"12345") is None  # one byte over the window
    assert [b for _, b in frames_of(conn.take_output())] == [b"1234"]
    conn.receive_data(wu(0, 1, 4 * MiB))
    assert [b for _, b in frames_of(conn.take_output())] == [b"5"]
    huge = os.urandom(MAX_DATA_FRAME + 1)
    assert conn.send_data_now(st, huge) is None  # larger than a frame
    frames = frames_of(conn.take_output())
    assert [h.length for h, _ in frames] == [MAX_DATA_FRAME, 1] and b"".join(b for _, b in frames) == huge


def test_send_data_now_random_writes_and_window_updates():
    rng = random.Random(4)
    conn, st = outbound()
    window = INITIAL_WINDOW  # the peer's view
    written, sent = bytearray(), bytearray()

    def account(out):
        nonlocal window
        for hdr, body in frames_of(out):
            if hdr.type == TYPE_DATA:
                assert hdr.length <= window and hdr.length <= MAX_DATA_FRAME
                window -= hdr.length
                sent.extend(body)

    for _ in range(3000):
        op = rng.random()
        if op < 0.6:
            data = rng.randbytes(rng.choice((1, 100, 5000, 70000)))
            written += data
            out = conn.send_data_now(st, data)
            if out is not None:
                account(out)
        elif op < 0.8:
            delta = rng.choice((1, 1000, 100000))
            window += delta
            conn.receive_data(wu(0, 1, delta))
        else:
            account(conn.take_output(rng.choice((1, 50000, 1 << 30))))
        assert st.send_window == window
    conn.end_stream(st)
    conn.receive_data(wu(0, 1, len(written)))
    window += len(written)
    while True:
        out = conn.take_output()
        account(out)
        if st.fin_sent:
            break
    assert bytes(sent) == bytes(written)
    assert frames_of(out)[-1][0].flags == FLAG_FIN


def test_send_data_now_refuses_after_fin_rst_and_the_end():
    conn, st = outbound()
    conn.end_stream(st)
    with pytest.raises(StreamClosedError):
        conn.send_data_now(st, b"x")
    frames = frames_of(conn.take_output())
    assert [(h.type, h.flags) for h, _ in frames] == [(TYPE_WINDOW_UPDATE, FLAG_SYN), (TYPE_WINDOW_UPDATE, FLAG_FIN)]
    with pytest.raises(StreamClosedError):  # FIN already sent
        conn.send_data_now(st, b"x")
    assert conn.take_output() == [] and st.send_len == 0 and st.send_window == INITIAL_WINDOW

    conn, st = outbound()
    conn.reset_stream(st)
    with pytest.raises(StreamResetError):
        conn.send_data_now(st, b"x")
    assert all(h.type != TYPE_DATA for h, _ in frames_of(conn.take_output()))

    conn, st = outbound()
    conn.take_output()
    conn.receive_data(wu(FLAG_ACK | FLAG_RST, 1))
    with pytest.raises(StreamResetError):
        conn.send_data_now(st, b"x")
    assert conn.take_output() == []

    conn, st = outbound()
    conn.close()
    with pytest.raises(SessionClosedError):
        conn.send_data_now(st, b"x")
    assert all(h.type != TYPE_DATA for h, _ in frames_of(conn.take_output()))


# ------------------------------------------------------ asyncio and uvloop


def wmem_max():
    try:
        with open("/proc/sys/net/core/wmem_max") as f:
            return int(f.read())
    except OSError:  # pragma: no cover
        return 1 << 30


def sndbuf(sock):
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)


async def read_exactly(sock, n, timeout=10):
    loop = asyncio.get_running_loop()
    got = bytearray()
    while len(got) < n:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, min(256 * KiB, n - len(got))), timeout)
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


async def read_eof(sock, timeout=10):
    loop = asyncio.get_running_loop()
    got = bytearray()
    while True:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 256 * KiB), timeout)
        if not chunk:
            return bytes(got)
        got += chunk


@on_both_loops
async def test_session_reader_reuses_its_buffer_and_buffered_data_stays_exact():
    async with sessions() as (client, server):
        stream = await client.open_stream()
        stream.write(b"!")
        peer = await server.accept_stream()
        assert await peer.readexactly(1) == b"!"
        rbuf = server._rbuf
        assert rbuf is not None and len(rbuf) == 256 * KiB  # a BufferedProtocol on this loop
        rng = random.Random(5)
        payload = rng.randbytes(INITIAL_WINDOW - 1)
        pos = 0
        while pos < len(payload):  # many reads into the same buffer while nothing is read
            size = rng.choice((1, 13, 4096, 4097, 30000))
            stream.write(payload[pos : pos + size])
            pos += size
            await asyncio.sleep(0)
        for _ in range(500):
            if peer._st.recv_len == len(payload):
                break
            await asyncio.sleep(0.005)
        assert server._rbuf is rbuf
        assert await peer.readexactly(len(payload)) == payload


async def spliced(client, server):
    """A client stream, its server side spliced to ``near``; returns
    (client stream, server stream, near, far, splice task)."""
    near, far = socket.socketpair()
    far.setblocking(False)
    stream = await client.open_stream()
    stream.write(b"#")
    peer = await server.accept_stream()
    assert await peer.readexactly(1) == b"#"
    task = asyncio.ensure_future(splice(peer, near))
    for _ in range(100):
        if peer._sink is not None:
            break
        await asyncio.sleep(0.001)
    assert peer._sink is not None and peer._st.direct
    return stream, peer, near, far, task


@on_both_loops
async def test_splice_forwards_byte_exact_with_backpressure_then_half_closes():
    async with sessions() as (client, server):
        stream, peer, near, far, task = await spliced(client, server)
        rng = random.Random(6)
        payload = rng.randbytes(6 * MiB)
        pos = 0
        while pos < len(payload):
            size = rng.choice((7, 4096, 50000, 256 * KiB, 300 * KiB))
            stream.write(payload[pos : pos + size])
            pos += size
        stream.write_eof()
        drainer = asyncio.ensure_future(stream.drain())
        await asyncio.sleep(0.3)
        # far does not read: the socket, the splice transport and the window fill, then it stops
        assert not drainer.done()
        assert peer._st.recv_len <= INITIAL_WINDOW
        assert not peer._st.direct  # paused: payload waits in the stream's buffer
        assert peer._sink.transport.get_write_buffer_size() > 0
        assert await read_eof(far) == payload  # FIN -> shutdown(SHUT_WR) after the last byte
        await asyncio.wait_for(drainer, 5)
        # the other direction still works, and its EOF finishes the splice
        loop = asyncio.get_running_loop()
        reply = rng.randbytes(3 * MiB)

        async def send_reply():
            await loop.sock_sendall(far, reply)
            far.shutdown(socket.SHUT_WR)

        sender = asyncio.ensure_future(send_reply())
        await asyncio.sleep(0.2)
        assert not sender.done()  # the stream is not read: the splice stops reading the socket
        assert peer.get_write_buffer_size() <= 128 * KiB + 256 * KiB
        assert await asyncio.wait_for(stream.read_until_eof(), 10) == reply
        await asyncio.wait_for(sender, 5)
        await asyncio.wait_for(task, 5)
        far.close()


@on_both_loops
async def test_splice_small_messages_and_several_streams_in_one_chunk():
    async with sessions() as (client, server):
        pairs = [await spliced(client, server) for _ in range(3)]
        rng = random.Random(7)
        sent = [bytearray() for _ in pairs]
        for round_ in range(40):
            # one loop iteration: the writes are coalesced into one chunk,
            # several frames of each stream, interleaved
            for _ in range(3):
                for i, (stream, *_rest) in enumerate(pairs):
                    msg = rng.randbytes(rng.choice((1, 50, 4096, 5000)))
                    stream.write(msg)
                    sent[i] += msg
            for i, (_s, _p, _n, far, _t) in enumerate(pairs):
                got = await read_exactly(far, len(sent[i]))
                assert got == bytes(sent[i]), (round_, i)
                sent[i].clear()
        for stream, peer, near, far, task in pairs:  # one flagless frame per chunk, each way
            for size in (1, 100, 4096, 4097, 60000):
                msg = rng.randbytes(size)
                stream.write(msg)
                assert await read_exactly(far, size) == msg
                reply = rng.randbytes(size)
                await asyncio.get_running_loop().sock_sendall(far, reply)
                assert await asyncio.wait_for(stream.readexactly(size), 5) == reply
            stream.reset()
            await asyncio.wait_for(task, 5)
            far.close()


@on_both_loops
async def test_splice_reset_while_the_socket_is_backed_up():
    async with sessions() as (client, server):
        stream, peer, near, far, task = await spliced(client, server)
        stream.write(os.urandom(4 * MiB))
        await asyncio.sleep(0.2)
        assert not task.done() and not peer._st.direct  # backed up: far never read
        stream.reset()
        await asyncio.wait_for(task, 5)
        assert peer.is_reset
        try:
            await read_eof(far)  # the socket is closed: EOF (or a reset) after what was sent
        except ConnectionResetError:
            pass
        far.close()


@on_both_loops
async def test_splice_session_end_while_the_socket_is_backed_up():
    async with sessions() as (client, server):
        stream, peer, near, far, task = await spliced(client, server)
        stream.write(os.urandom(4 * MiB))
        await asyncio.sleep(0.2)
        assert not task.done() and not peer._st.direct
        await server.close()
        await asyncio.wait_for(task, 5)
        assert peer.is_reset
        far.close()


@on_both_loops
async def test_splice_socket_chunks_never_exceed_the_send_window():
    """Wire-level: a raw peer opens a stream that is spliced; what the socket
    sends comes as Data frames within the window the peer gave, and data the
    peer sends (one flagless frame, one with FIN) reaches the socket exactly."""
    session, raw = await RawPeer.with_session(client=False)
    try:
        raw.send(wu(FLAG_SYN, 1))  # no extra window: 256 KiB
        stream = await session.accept_stream()
        near, far = socket.socketpair()
        far.setblocking(False)
        task = asyncio.ensure_future(splice(stream, near))
        hdr, _ = await raw.frame()
        assert (hdr.type, hdr.flags, hdr.stream_id) == (TYPE_WINDOW_UPDATE, FLAG_ACK, 1)

        loop = asyncio.get_running_loop()
        payload = os.urandom(700 * KiB)
        sender = asyncio.ensure_future(loop.sock_sendall(far, payload))
        window, got = INITIAL_WINDOW, bytearray()

        async def take(until):
            nonlocal window
            while len(got) < until:
                hdr, body = await raw.frame()
                assert (hdr.type, hdr.flags, hdr.stream_id) == (TYPE_DATA, 0, 1)
                assert hdr.length <= window
                window -= hdr.length
                got.extend(body)

        await take(INITIAL_WINDOW)
        with pytest.raises(asyncio.TimeoutError):  # window closed: nothing more
            await raw.frame(timeout=0.2)
        assert stream.get_write_buffer_size() <= 128 * KiB + 256 * KiB  # socket reading paused
        window += 100 * KiB
        raw.send(wu(0, 1, 100 * KiB))
        await take(INITIAL_WINDOW + 100 * KiB)
        with pytest.raises(asyncio.TimeoutError):
            await raw.frame(timeout=0.1)
        window += 1 * MiB
        raw.send(wu(0, 1, 1 * MiB))
        await take(len(payload))
        await asyncio.wait_for(sender, 5)
        assert bytes(got) == payload
        far.shutdown(socket.SHUT_WR)  # socket EOF -> FIN
        hdr, _ = await raw.frame()
        assert (hdr.type, hdr.flags, hdr.stream_id) == (TYPE_WINDOW_UPDATE, FLAG_FIN, 1)

        # the other way: one flagless frame per write, then one carrying FIN
        sent = bytearray()
        for size in (1, 4096, 4097, 100 * KiB):
            body = os.urandom(size)
            raw.send(encode_header(TYPE_DATA, 0, 1, size) + body)
            assert await read_exactly(far, size) == body
            sent += body
        last = os.urandom(3000)
        raw.send(encode_header(TYPE_DATA, FLAG_FIN, 1, len(last)) + last)
        assert await read_eof(far) == last
        await asyncio.wait_for(task, 5)
        # exact window accounting on the session side: advertised + pending == received
        frames = []
        with pytest.raises(asyncio.TimeoutError):
            while True:
                frames.append(await raw.frame(timeout=0.1))
        advertised = sum(h.length for h, _ in frames if h.type == TYPE_WINDOW_UPDATE and not h.flags)
        assert advertised + stream._st.consumed == len(sent) + len(last)
        far.close()
    finally:
        raw.close()
        await session.close()


@on_both_loops
async def test_socket_send_buffer_is_applied_to_session_and_splice_sockets():
    size = 300 * KiB
    expected = min(size, wmem_max())
    config = Config(enable_keepalive=False, socket_send_buffer=size)
    async with sessions(config, config) as (client, server):
        for session in (client, server):
            sock = session._io._write_transport.get_extra_info("socket")
            assert sndbuf(sock) >= expected  # Linux reports twice what was asked
        stream, peer, near, far, task = await spliced(client, server)
        assert sndbuf(near) >= expected
        stream.reset()
        await asyncio.wait_for(task, 5)
        far.close()
    a, b = socket.socketpair()
    default = sndbuf(a)
    a.close()
    b.close()
    for value in (0, 4 * KiB):  # 0: untouched; smaller than the default: the default is kept
        config = Config(enable_keepalive=False, socket_send_buffer=value)
        async with sessions(config, config) as (client, server):
            sock = client._io._write_transport.get_extra_info("socket")
            assert sndbuf(sock) == default


def test_socket_send_buffer_validation():
    for bad in (-1, 1.5, "1", None):
        with pytest.raises(ValueError, match="socket_send_buffer"):
            Config(socket_send_buffer=bad)
    assert Config().socket_send_buffer == 512 * KiB
    assert Config(socket_send_buffer=0).socket_send_buffer == 0
    assert NO_KEEPALIVE.socket_send_buffer == 512 * KiB
