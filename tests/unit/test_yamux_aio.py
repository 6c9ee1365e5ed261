"""asyncio yamux: Session, Stream and splice over real sockets (asyncio and uvloop)."""

import asyncio
import contextlib
import inspect
import os
import socket
import subprocess
import sys
import tty

import pytest

from yamux import (
    Config,
    GoAwayError,
    KeepAliveTimeoutError,
    ProtocolError,
    Session,
    SessionClosedError,
    StreamClosedError,
    StreamResetError,
    YamuxTimeoutError,
    splice,
)
from yamux.frame import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    HEADER_SIZE,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Header,
    decode_header,
    encode_header,
)

try:
    import uvloop
except ImportError:  # pragma: no cover
    uvloop = None

pytestmark = pytest.mark.timeout(30)

NO_KEEPALIVE = Config(enable_keepalive=False)
KiB = 1024
MiB = 1024 * KiB


LOOP_FACTORIES = {"asyncio": asyncio.new_event_loop}
if uvloop is not None:
    LOOP_FACTORIES["uvloop"] = uvloop.new_event_loop


def on_both_loops(fn):
    """Run the coroutine test ``fn`` once on asyncio's loop and once on uvloop's
    (independent of pytest-asyncio's loop configuration)."""
    signature = inspect.signature(fn)
    loop_param = inspect.Parameter("loop_kind", inspect.Parameter.POSITIONAL_OR_KEYWORD)

    def test(loop_kind, **kwargs):
        with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_kind]) as runner:
            runner.run(fn(**kwargs))

    test.__name__ = fn.__name__
    test.__qualname__ = fn.__qualname__
    test.__doc__ = fn.__doc__
    test.__module__ = fn.__module__
    test.__signature__ = signature.replace(parameters=[loop_param, *signature.parameters.values()])
    test.pytestmark = [*getattr(fn, "pytestmark", []), pytest.mark.parametrize("loop_kind", list(LOOP_FACTORIES))]
    return test


async def session_pair(client_config=NO_KEEPALIVE, server_config=NO_KEEPALIVE):
    a, b = socket.socketpair()
    client = await Session.from_socket(a, client=True, config=client_config)
    server = await Session.from_socket(b, client=False, config=server_config)
    return client, server


@contextlib.asynccontextmanager
async def sessions(client_config=NO_KEEPALIVE, server_config=NO_KEEPALIVE):
    client, server = await session_pair(client_config, server_config)
    try:
        yield client, server
    finally:
        await client.close()
        await server.close()


async def echo(stream):
    while True:
        data = await stream.read(64 * KiB)
        if not data:
            stream.write_eof()
            return
        stream.write(data)
        await stream.drain()


async def echo_server(session):
    tasks = []
    try:
        while True:
            stream = await session.accept_stream()
            tasks.append(asyncio.ensure_future(echo(stream)))
    except SessionClosedError:
        pass
    finally:
        for task in tasks:
            task.cancel()


class RawPeer:
    """The other end of a session, speaking raw frames."""

    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def with_session(cls, *, client, config=NO_KEEPALIVE):
        a, b = socket.socketpair()
        session = await Session.from_socket(a, client=client, config=config)
        reader, writer = await asyncio.open_unix_connection(sock=b)
        return session, cls(reader, writer)

    def send(self, *frames):
        self.writer.write(b"".join(frames))

    async def frame(self, timeout=5):
        raw = await asyncio.wait_for(self.reader.readexactly(HEADER_SIZE), timeout)
        hdr = decode_header(raw)
        body = b""
        if hdr.type == TYPE_DATA and hdr.length:
            body = await asyncio.wait_for(self.reader.readexactly(hdr.length), timeout)
        return hdr, body

    async def frames_until_eof(self, timeout=5):
        """Every frame up to the session's EOF; then the peer closes its end, as
        hashicorp/yamux does (its receive loop ends the session on EOF)."""
        frames = []
        while True:
            try:
                frames.append(await self.frame(timeout))
            except (asyncio.IncompleteReadError, ConnectionError):
                self.close()
                return frames

    async def close_session(self, session):
        """``session.close()`` while the peer reads to its EOF and then closes
        (a clean close lingers until the peer's EOF)."""
        closing = asyncio.ensure_future(session.close())
        await self.frames_until_eof()
        await closing

    def close(self):
        self.writer.close()


def wu(flags, sid, delta=0):
    return encode_header(TYPE_WINDOW_UPDATE, flags, sid, delta)


def data(sid, body, flags=0):
    return encode_header(TYPE_DATA, flags, sid, len(body)) + body


# ---------------------------------------------------------------- basics


async def test_open_accept_echo_both_ways():
    async with sessions() as (client, server):
        task = asyncio.ensure_future(echo_server(server))
        streams = [await client.open_stream() for _ in range(3)]
        assert [s.id for s in streams] == [1, 3, 5]
        for i, stream in enumerate(streams):
            stream.write(b"hello %d" % i)
        for i, stream in enumerate(streams):
            assert await stream.readexactly(7) == b"hello %d" % i
        # the server role opens even ids
        client_task = asyncio.ensure_future(echo_server(client))
        back = await server.open_stream()
        assert back.id == 2
        back.write(b"ping")
        back.write_eof()
        assert await back.read_until_eof() == b"ping"
        task.cancel()
        client_task.cancel()
    assert client.closed and server.closed and client.error is None


async def test_generic_reader_writer_pair():
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_unix_connection(sock=a)
    rb, wb = await asyncio.open_unix_connection(sock=b)
    client = Session(ra, wa, client=True, config=NO_KEEPALIVE)
    server = Session(rb, wb, client=False, config=NO_KEEPALIVE)
    task = asyncio.ensure_future(echo_server(server))
    stream = await client.open_stream()
    payload = os.urandom(3 * MiB)
    stream.write(payload)
    stream.write_eof()
    assert await stream.read_until_eof() == payload
    await client.close()
    await server.wait_closed()
    assert server.closed and server.error is None  # Go Away(0) then EOF: a clean end
    task.cancel()


async def test_connect_unix(tmp_path):
    path = str(tmp_path / "y.sock")
    servers = []

    async def handle(reader, writer):
        session = Session(reader, writer, client=False, config=NO_KEEPALIVE)
        servers.append(session)
        await echo_server(session)

    unix_server = await asyncio.start_unix_server(handle, path)
    client = await Session.connect_unix(path, client=True, config=NO_KEEPALIVE)
    stream = await client.open_stream()
    stream.write(b"over a path")
    assert await stream.readexactly(11) == b"over a path"
    await client.close()
    await servers[0].wait_closed()
    unix_server.close()
    await unix_server.wait_closed()


async def test_from_fd_over_a_socket_fd():
    a, b = socket.socketpair()
    client = await Session.from_fd(a.fileno(), client=True, config=NO_KEEPALIVE)
    a.close()  # the session keeps its own duplicates
    server = await Session.from_socket(b, client=False, config=NO_KEEPALIVE)
    task = asyncio.ensure_future(echo_server(server))
    stream = await client.open_stream()
    payload = os.urandom(2 * MiB)
    stream.write(payload)
    stream.write_eof()
    assert await stream.read_until_eof() == payload
    await client.close()
    await server.wait_closed()
    task.cancel()


async def test_from_fd_over_a_character_device():
    """A pty pair in raw mode stands in for a virtio-serial port (both are char devices)."""
    master, slave = os.openpty()
    tty.setraw(slave)
    tty.setraw(master)
    try:
        client = await Session.from_fd(master, client=True, config=NO_KEEPALIVE)
        server = await Session.from_fd(slave, client=False, config=NO_KEEPALIVE)
        task = asyncio.ensure_future(echo_server(server))
        stream = await client.open_stream()
        payload = bytes(range(256)) * 1024
        stream.write(payload)
        stream.write_eof()
        assert await asyncio.wait_for(stream.read_until_eof(), 10) == payload
        assert await client.ping() > 0
        await client.close()
        await server.close()
        task.cancel()
    finally:
        os.close(master)
        os.close(slave)


async def test_streams_and_num_streams():
    async with sessions() as (client, server):
        a = await client.open_stream()
        b = await client.open_stream()
        assert client.num_streams == 2 and set(client.streams) == {1, 3}
        assert client.streams[1] is a
        peer = await server.accept_stream()
        await server.accept_stream()
        a.write_eof()
        peer.write_eof()
        await a.wait_closed()
        assert await a.read() == b""
        assert client.num_streams == 1 and len(client.streams) == 1
        b.reset()
        assert client.num_streams == 0


# ---------------------------------------------------------------- ping, keepalive


async def test_ping_rtt():
    async with sessions() as (client, server):
        rtt = await client.ping()
        assert 0 < rtt < 1
        assert await server.ping() > 0


async def test_ping_timeout_leaves_the_session_up():
    session, peer = await RawPeer.with_session(client=True, config=Config(enable_keepalive=False, connection_write_timeout=0.1))
    with pytest.raises(YamuxTimeoutError):
        await session.ping()
    assert not session.closed
    hdr, _ = await peer.frame()
    assert hdr == Header(0, TYPE_PING, FLAG_SYN, 0, 0)
    await peer.close_session(session)


async def test_ping_is_answered_with_the_same_opaque():
    session, peer = await RawPeer.with_session(client=False)
    peer.send(encode_header(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF))
    assert await peer.frame() == (Header(0, TYPE_PING, FLAG_ACK, 0, 0xDEADBEEF), b"")
    await peer.close_session(session)


async def test_keepalive_timeout_closes_the_session():
    config = Config(keepalive_interval=0.05, connection_write_timeout=0.1)
    session, peer = await RawPeer.with_session(client=True, config=config)
    stream = await session.open_stream()
    reader = asyncio.ensure_future(stream.read())
    await asyncio.wait_for(session.wait_closed(), 5)
    assert session.closed
    assert isinstance(session.error, KeepAliveTimeoutError) and isinstance(session.error, SessionClosedError)
    with pytest.raises(KeepAliveTimeoutError):
        await reader
    frames = await peer.frames_until_eof()
    assert all(h.type != TYPE_GO_AWAY for h, _ in frames)  # like Go: no Go Away on keepalive failure


async def test_keepalive_with_a_live_peer_keeps_the_session():
    config = Config(keepalive_interval=0.02, connection_write_timeout=0.5)
    async with sessions(config, config) as (client, server):
        await asyncio.sleep(0.3)
        assert not client.closed and not server.closed


# ---------------------------------------------------------------- go away


async def test_go_away_zero_refuses_new_streams_keeps_old_ones():
    async with sessions() as (client, server):
        old = await client.open_stream()
        peer = await server.accept_stream()
        await server.go_away()
        assert server.local_go_away
        await client.ping()  # the Go Away has arrived
        assert client.remote_go_away
        with pytest.raises(GoAwayError):
            await client.open_stream()
        old.write(b"still")
        assert await peer.readexactly(5) == b"still"
        # the server can still open streams of its own
        mine = await server.open_stream()
        assert mine.id == 2


async def test_syn_after_local_go_away_gets_rst():
    session, peer = await RawPeer.with_session(client=False)
    await session.go_away(0)
    assert await peer.frame() == (Header(0, TYPE_GO_AWAY, 0, 0, 0), b"")
    peer.send(wu(FLAG_SYN, 1))
    assert await peer.frame() == (Header(0, TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0), b"")
    await peer.close_session(session)


async def test_peer_go_away_one_ends_the_session_with_protocol_error():
    session, peer = await RawPeer.with_session(client=True)
    stream = await session.open_stream()
    reader = asyncio.ensure_future(stream.read())
    await asyncio.sleep(0)
    peer.send(encode_header(TYPE_GO_AWAY, 0, 0, 1))
    with pytest.raises(ProtocolError, match="Go Away"):
        await reader
    await session.wait_closed()


# ---------------------------------------------------------------- closing and errors


@pytest.mark.parametrize("transport", ["socket", "streams"])
async def test_clean_close_lingers_until_the_peers_eof(transport):
    """A clean close ends with our write side shut (the peer reads EOF) while
    our socket stays open and read: a peer still writing then (a window
    update for what it is still reading) is not cut off with EPIPE, which
    makes hashicorp/yamux end its session without reading the frames still
    in its socket.  close() returns once the peer has closed its end."""
    a, b = socket.socketpair()
    if transport == "socket":
        session = await Session.from_socket(a, client=True, config=NO_KEEPALIVE)
    else:
        ra, wa = await asyncio.open_unix_connection(sock=a)
        session = Session(ra, wa, client=True, config=NO_KEEPALIVE)
    peer = RawPeer(*await asyncio.open_unix_connection(sock=b))
    stream = await session.open_stream()
    stream.write(b"last words")
    stream.close()
    closing = asyncio.ensure_future(session.close())
    frames = []
    with pytest.raises(asyncio.IncompleteReadError):
        while True:
            frames.append(await peer.frame())
    assert Header(0, TYPE_GO_AWAY, 0, 0, 0) in [hdr for hdr, _ in frames]
    assert b"".join(body for _, body in frames) == b"last words"
    for _ in range(50):  # written after our EOF: the socket must still take them
        peer.send(wu(0, 1, 1000))
        await peer.writer.drain()
    assert not closing.done()  # waits for the peer's EOF
    peer.close()
    await asyncio.wait_for(closing, 5)
    assert session.closed and session.error is None


async def test_cancelling_wait_closed_raises_cancelled_error():
    """wait_closed() lets a cancel through (the close itself goes on)."""
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_unix_connection(sock=a)
    session = Session(ra, wa, client=True, config=NO_KEEPALIVE)
    peer = RawPeer(*await asyncio.open_unix_connection(sock=b))
    closing = asyncio.ensure_future(session.close())  # lingers: the peer has not closed
    waiter = asyncio.ensure_future(session.wait_closed())
    await peer.frame()  # Go Away: the close has begun
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not closing.done()
    await peer.frames_until_eof()  # then the peer closes
    await asyncio.wait_for(closing, 5)


async def test_cancelling_the_stream_pair_close_aborts_the_transport_and_raises():
    """The close of a (StreamReader, StreamWriter) session, cancelled while it
    lingers, raises CancelledError, aborts the transport and still ends the
    session's wait_closed()."""
    a, b = socket.socketpair()
    ra, wa = await asyncio.open_unix_connection(sock=a)
    session = Session(ra, wa, client=True, config=Config(enable_keepalive=False, close_timeout=30))
    peer = RawPeer(*await asyncio.open_unix_connection(sock=b))
    closing = asyncio.ensure_future(session.close())
    with pytest.raises(asyncio.IncompleteReadError):
        while True:
            await peer.frame()  # our EOF came: the close lingers for the peer's
    task = session._io.close_task
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert wa.transport.is_closing()
    await asyncio.wait_for(closing, 5)
    assert session.closed
    peer.close()


async def test_close_wakes_every_waiter():
    # the peer never ACKs nor reads: the graceful close gives up after close_timeout
    config = Config(enable_keepalive=False, accept_backlog=1, close_timeout=0.05)
    session, peer = await RawPeer.with_session(client=True, config=config)
    stream = await session.open_stream()  # never ACKed: the backlog of 1 is full
    stream.write(b"x" * (INITIAL_WINDOW + 200 * KiB))
    writer = asyncio.ensure_future(stream.drain())
    reader = asyncio.ensure_future(stream.read())
    acceptor = asyncio.ensure_future(session.accept_stream())
    opener = asyncio.ensure_future(session.open_stream())
    pinger = asyncio.ensure_future(session.ping())
    await asyncio.sleep(0.05)
    assert not any(t.done() for t in (writer, reader, acceptor, opener))
    await session.close()
    for task in (writer, reader, acceptor, opener, pinger):
        with pytest.raises(SessionClosedError):
            await task
    assert session.closed and session.error is None
    frames = await peer.frames_until_eof()
    assert frames[-1][0] == Header(0, TYPE_GO_AWAY, 0, 0, 0)
    with pytest.raises(SessionClosedError):
        stream.write(b"more")


async def test_peer_closing_the_transport_is_not_a_clean_eof():
    session, peer = await RawPeer.with_session(client=True)
    finished = await session.open_stream()
    cut = await session.open_stream()
    peer.send(data(1, b"all", FLAG_ACK), wu(FLAG_FIN, 1), data(3, b"partial", FLAG_ACK))
    assert await finished.read() == b"all"
    reader = asyncio.ensure_future(cut.read_until_eof())
    await asyncio.sleep(0.01)
    peer.close()
    await session.wait_closed()
    assert await finished.read() == b""  # a real FIN: clean EOF
    with pytest.raises(SessionClosedError, match="closed by the peer"):
        await reader  # no FIN: the session died, not an EOF
    assert isinstance(session.error, SessionClosedError)
    with pytest.raises(SessionClosedError):
        await session.accept_stream()


async def test_buffered_data_is_readable_after_the_session_dies():
    session, peer = await RawPeer.with_session(client=True)
    stream = await session.open_stream()
    peer.send(data(1, b"leftover", FLAG_ACK))
    await asyncio.sleep(0.05)
    peer.close()
    await session.wait_closed()
    assert await stream.read() == b"leftover"
    with pytest.raises(SessionClosedError):
        await stream.read()


@pytest.mark.parametrize(
    "bad, message",
    [
        (encode_header(TYPE_PING, FLAG_SYN, 0, 0, version=1), "version 1"),
        (encode_header(5, 0, 0, 0), "unknown frame type 5"),
        (data(1, b"y" * (INITIAL_WINDOW + 1)), "exceeds the receive window"),
        (wu(FLAG_FIN, 2) + wu(FLAG_FIN, 2), "already sent FIN"),
        (wu(FLAG_SYN, 2), "duplicate SYN"),
        (wu(FLAG_SYN | FLAG_ACK, 4), "SYN and ACK"),
    ],
    ids=["version", "type", "window", "fin-twice", "duplicate-syn", "syn-ack"],
)
async def test_protocol_error_wakes_everyone_with_a_clear_message(bad, message):
    session, peer = await RawPeer.with_session(client=True)
    stream = await session.open_stream()
    peer.send(wu(FLAG_SYN, 2))  # a live peer stream, for the duplicate and FIN cases
    first = await session.accept_stream()
    reader = asyncio.ensure_future(stream.read())
    acceptor = asyncio.ensure_future(session.accept_stream())
    writer_stream = await session.open_stream()
    writer_stream.write(b"w" * (INITIAL_WINDOW + 300 * KiB))
    writer = asyncio.ensure_future(writer_stream.drain())
    await asyncio.sleep(0.01)
    peer.send(bad)
    for task in (reader, acceptor, writer):
        with pytest.raises(ProtocolError, match=message):
            await task
    assert isinstance(session.error, ProtocolError) and message in str(session.error)
    if "FIN" not in message:
        with pytest.raises(ProtocolError, match=message):
            await first.read()
    frames = await peer.frames_until_eof()
    if len(bad) < 1000:  # a big write may be cut by EPIPE before the peer reads our Go Away
        assert (Header(0, TYPE_GO_AWAY, 0, 0, 1), b"") in frames
    await session.wait_closed()


async def test_unknown_stream_frames_do_not_hurt():
    session, peer = await RawPeer.with_session(client=False)
    peer.send(data(99, b"nobody"), wu(0, 99, 10), wu(FLAG_RST, 99), encode_header(TYPE_PING, FLAG_SYN, 0, 3))
    assert await peer.frame() == (Header(0, TYPE_PING, FLAG_ACK, 0, 3), b"")
    assert not session.closed
    await peer.close_session(session)


# ---------------------------------------------------------------- streams


async def test_half_close_both_ways():
    async with sessions() as (client, server):
        stream = await client.open_stream()
        stream.write(b"question")
        stream.write_eof()
        stream.write_eof()  # harmless, never a second FIN
        with pytest.raises(StreamClosedError):
            stream.write(b"late")
        peer = await server.accept_stream()
        assert await peer.read_until_eof() == b"question"
        peer.write(b"answer")  # the other direction is still open
        await peer.drain()
        assert await stream.readexactly(6) == b"answer"
        peer.write_eof()
        assert await stream.read() == b""
        await asyncio.wait_for(stream.wait_closed(), 5)
        await asyncio.wait_for(peer.wait_closed(), 5)
        assert stream.closed and peer.closed


async def test_reset_wakes_reader_and_writer_on_both_sides():
    async with sessions() as (client, server):
        stream = await client.open_stream()
        stream.write(b"x")
        peer = await server.accept_stream()
        await peer.readexactly(1)
        peer.write(b"w" * (INITIAL_WINDOW + 300 * KiB))  # more than the window: the writer blocks
        peer_writer = asyncio.ensure_future(peer.drain())
        peer_reader = asyncio.ensure_future(peer.read())
        await asyncio.sleep(0.05)
        assert not peer_writer.done()
        quiet = await client.open_stream()
        local_reader = asyncio.ensure_future(quiet.read())
        await asyncio.sleep(0.01)
        quiet.reset()
        with pytest.raises(StreamResetError, match="by us"):
            await local_reader
        stream.reset()  # drops what the peer had sent
        with pytest.raises(StreamResetError, match="by us"):
            await stream.read()
        for task in (peer_writer, peer_reader):
            with pytest.raises(StreamResetError, match="by the peer"):
                await task
        with pytest.raises(StreamResetError):
            stream.write(b"x")
        with pytest.raises(StreamResetError):
            await peer.read()
        assert stream.closed and peer.closed
        await stream.wait_closed()


async def test_drain_blocks_on_the_window_and_resumes_when_the_peer_reads():
    async with sessions() as (client, server):
        stream = await client.open_stream()
        total = 2 * MiB
        stream.write(b"d" * total)
        drainer = asyncio.ensure_future(stream.drain())
        peer = await server.accept_stream()
        await asyncio.sleep(0.05)
        assert not drainer.done()  # the peer does not read: window closed
        assert peer._st.recv_len <= INITIAL_WINDOW  # memory bounded by the window
        got = 0
        while got < total:
            got += len(await peer.read())
        await asyncio.wait_for(drainer, 5)


async def test_accept_is_cancellable_without_losing_a_stream():
    async with sessions() as (client, server):
        acceptor = asyncio.ensure_future(server.accept_stream())
        await asyncio.sleep(0.01)
        acceptor.cancel()
        with pytest.raises(asyncio.CancelledError):
            await acceptor
        stream = await client.open_stream()
        stream.write(b"hi")
        peer = await asyncio.wait_for(server.accept_stream(), 5)
        assert peer.id == stream.id and await peer.readexactly(2) == b"hi"


async def test_cancelled_read_leaves_the_stream_usable():
    async with sessions() as (client, server):
        stream = await client.open_stream()
        reader = asyncio.ensure_future(stream.read())
        await asyncio.sleep(0.01)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        stream.write(b"x")
        peer = await server.accept_stream()
        peer.write(b"y")
        assert await stream.read() == b"y"


async def test_full_backlog_resets_the_opener():
    async with sessions(server_config=Config(enable_keepalive=False, accept_backlog=2)) as (client, server):
        streams = [await client.open_stream() for _ in range(3)]
        for s in streams:
            s.write(b"x")
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(streams[2].read(), 5)
        assert (await server.accept_stream()).id == 1
        assert (await server.accept_stream()).id == 3


async def test_open_waits_while_the_unacked_backlog_is_full():
    config = Config(enable_keepalive=False, accept_backlog=2)
    async with sessions(config, config) as (client, server):
        await client.open_stream()
        await client.open_stream()
        opener = asyncio.ensure_future(client.open_stream())
        await asyncio.sleep(0.05)
        assert not opener.done()  # two opens are un-ACKed
        await server.accept_stream()  # sends the ACK
        third = await asyncio.wait_for(opener, 5)
        assert third.id == 5


async def test_read_after_local_close_returns_eof_and_the_stream_finishes():
    async with sessions() as (client, server):
        task = asyncio.ensure_future(echo_server(server))
        stream = await client.open_stream()
        stream.write(b"x" * (INITIAL_WINDOW * 3))
        stream.close()
        assert await stream.read() == b""
        await asyncio.wait_for(stream.wait_closed(), 5)  # the echo's FIN arrived; its data was dropped
        task.cancel()


async def test_closed_stream_is_reset_when_the_peer_never_fins():
    config = Config(enable_keepalive=False, stream_close_timeout=0.05)
    async with sessions(config, NO_KEEPALIVE) as (client, server):
        stream = await client.open_stream()
        stream.close()
        peer = await server.accept_stream()
        assert await peer.read() == b""  # our FIN; the peer never answers with its own
        await asyncio.wait_for(stream.wait_closed(), 5)
        assert stream.is_reset and client.num_streams == 0
        await asyncio.wait_for(peer.wait_closed(), 5)
        assert peer.is_reset  # the RST reached the peer


async def test_keepalive_tolerates_a_peer_busy_sending():
    """A ping answer stuck behind bulk data is not a dead peer."""
    config = Config(keepalive_interval=0.01, connection_write_timeout=0.05)
    session, peer = await RawPeer.with_session(client=True, config=config)
    stream = await session.open_stream()
    peer.send(wu(FLAG_ACK, 1))
    for _ in range(30):  # keep sending data but never answer pings
        peer.send(data(1, b"z" * 100))
        await peer.writer.drain()
        await stream.read()
        await asyncio.sleep(0.01)
    assert not session.closed
    await peer.close_session(session)


async def test_concurrent_bulk_both_directions_does_not_deadlock():
    async with sessions() as (client, server):
        stream = await client.open_stream()
        peer_future = asyncio.ensure_future(server.accept_stream())
        size = 8 * MiB
        blob = os.urandom(size)

        async def pump(s):
            s.write(blob)
            s.write_eof()
            await s.drain()

        async def collect(s):
            return await s.read_until_eof()

        peer = await peer_future
        results = await asyncio.wait_for(
            asyncio.gather(pump(stream), pump(peer), collect(stream), collect(peer)), 20
        )
        assert results[2] == blob and results[3] == blob


async def test_many_streams_in_parallel():
    async with sessions() as (client, server):
        task = asyncio.ensure_future(echo_server(server))

        async def one(i):
            stream = await client.open_stream()
            payload = bytes([i % 256]) * (300 * KiB + i)
            stream.write(payload)
            stream.write_eof()
            assert await stream.read_until_eof() == payload

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(64))), 20)
        task.cancel()


async def test_big_windows_on_one_side():
    big = Config(enable_keepalive=False, max_stream_window_size=4 * MiB)
    async with sessions(big, NO_KEEPALIVE) as (client, server):
        task = asyncio.ensure_future(echo_server(server))
        stream = await client.open_stream()
        payload = os.urandom(10 * MiB)
        stream.write(payload)
        stream.write_eof()
        assert await stream.read_until_eof() == payload
        task.cancel()


async def test_readexactly_incomplete():
    async with sessions() as (client, server):
        stream = await client.open_stream()
        stream.write(b"abc")
        stream.write_eof()
        peer = await server.accept_stream()
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await peer.readexactly(10)
        assert info.value.partial == b"abc"


async def test_write_accepts_bytearray_and_memoryview():
    async with sessions() as (client, server):
        stream = await client.open_stream()
        buf = bytearray(b"one")
        stream.write(buf)
        buf[:] = b"XXX"  # copied on write
        stream.write(memoryview(b"two"))
        peer = await server.accept_stream()
        assert await peer.readexactly(6) == b"onetwo"


# ---------------------------------------------------------------- drain and graceful close (issue 11, item 5)


async def steady_reader(stream, delay=0.001):
    """Read to the end in 64 KiB pieces, a little apart; the bytes, or the error."""
    chunks = bytearray()
    try:
        while data := await stream.read(64 * KiB):
            chunks += data
            await asyncio.sleep(delay)
    except SessionClosedError as exc:
        return bytes(chunks), exc
    return bytes(chunks), None


async def test_drain_returns_once_every_byte_is_handed_to_the_transport():
    async with sessions() as (client, server):
        stream = await client.open_stream()
        payload = os.urandom(MiB)
        stream.write(payload)
        reader = asyncio.ensure_future(steady_reader(await server.accept_stream()))
        await asyncio.wait_for(stream.drain(), 10)
        assert stream.get_write_buffer_size() <= stream._st.send_window  # nothing waits for the peer
        await asyncio.sleep(0)  # the flush this iteration had scheduled has run
        assert stream.get_write_buffer_size() == 0
        stream.write_eof()
        assert await asyncio.wait_for(reader, 10) == (payload, None)


async def test_drain_within_the_window_returns_without_waiting_and_the_flush_keeps_its_promise():
    """A write that fits the send window: drain() returns at once and the
    bytes go out with this iteration's flush, even if the transport paused
    meanwhile (then only what drain() promised goes, other streams wait)."""
    session, peer = await RawPeer.with_session(client=True)
    other = await session.open_stream()
    stream = await session.open_stream()
    other.write(b"o" * 2000)  # queued for this iteration's flush (the SYNs scheduled it)
    stream.write(b"s" * 2000)
    await stream.drain()  # nothing waits for the peer: returns without yielding to the loop
    assert stream.get_write_buffer_size() == 2000  # handed over by the flush, still to come
    session._paused = True  # as if the transport's buffer had filled in between
    await asyncio.sleep(0)  # the flush
    assert stream.get_write_buffer_size() == 0  # promised by drain(): handed over anyway
    assert other.get_write_buffer_size() == 2000  # not promised: waits for the transport
    session._resume()
    assert other.get_write_buffer_size() == 0
    bodies = {}
    while sum(len(b) for b in bodies.values()) < 4000:
        hdr, body = await peer.frame()
        bodies[hdr.stream_id] = bodies.get(hdr.stream_id, b"") + body
    assert bodies == {1: b"o" * 2000, 3: b"s" * 2000}
    await peer.close_session(session)


@pytest.mark.parametrize("drained", [True, False], ids=["drain", "no-drain"])
async def test_session_close_delivers_what_streams_wrote(drained):
    """Write 1 MiB, (await drain(),) close the stream, close the session while
    the peer reads steadily: the peer gets all of it, then EOF."""
    client, server = await session_pair()
    try:
        streams = [await client.open_stream() for _ in range(3)]
        payloads = [os.urandom(MiB) for _ in streams]
        for stream, payload in zip(streams, payloads):
            stream.write(payload)
        readers = [asyncio.ensure_future(steady_reader(await server.accept_stream())) for _ in streams]
        if drained:
            for stream in streams:
                await asyncio.wait_for(stream.drain(), 10)
        for stream in streams:
            stream.close()
        await asyncio.wait_for(client.close(), 10)
        assert client.error is None
        results = await asyncio.wait_for(asyncio.gather(*readers), 10)
        for (got, error), payload in zip(results, payloads):
            assert error is None and len(got) == len(payload) and got == payload
    finally:
        await client.close()
        await server.close()


async def test_session_close_gives_up_after_close_timeout_when_the_peer_never_reads():
    config = Config(enable_keepalive=False, close_timeout=0.2)
    session, peer = await RawPeer.with_session(client=True, config=config)
    stream = await session.open_stream()
    stream.write(b"q" * (INITIAL_WINDOW + 300 * KiB))  # 300 KiB wait for a window that never opens
    drainer = asyncio.ensure_future(stream.drain())
    stream.close()
    loop = asyncio.get_running_loop()
    start = loop.time()
    await asyncio.wait_for(session.close(), 5)
    assert 0.15 <= loop.time() - start < 2
    assert session.closed and session.error is None
    with pytest.raises(SessionClosedError):
        await drainer  # dropped bytes are never reported as handed over
    frames = await peer.frames_until_eof()
    assert frames[0][0] == Header(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)
    assert Header(0, TYPE_GO_AWAY, 0, 0, 0) in [hdr for hdr, _ in frames]
    assert sum(len(body) for _, body in frames) == INITIAL_WINDOW  # the window, not a byte more
    assert not any(hdr.flags & FLAG_FIN for hdr, _ in frames)  # its data never all went out


async def test_while_closing_no_new_streams_or_writes_but_queued_data_goes_out():
    config = Config(enable_keepalive=False, close_timeout=5)
    session, peer = await RawPeer.with_session(client=True, config=config)
    stream = await session.open_stream()
    other = await session.open_stream()
    stream.write(b"a" * (INITIAL_WINDOW + 10))
    closing = asyncio.ensure_future(session.close())
    await asyncio.sleep(0.05)
    assert session.closing and not session.closed and not closing.done()
    with pytest.raises(SessionClosedError, match="closing"):
        await session.open_stream()
    with pytest.raises(SessionClosedError, match="closing"):
        stream.write(b"more")
    other.write_eof()  # a FIN is still allowed
    peer.send(wu(FLAG_SYN, 2))  # refused: we sent Go Away(0)
    frames = []
    while not any(hdr.type == TYPE_WINDOW_UPDATE and hdr.flags & FLAG_RST for hdr, _ in frames):
        frames.append(await peer.frame())
    peer.send(wu(FLAG_ACK, 1, 10))  # the window for the last 10 bytes
    frames += await peer.frames_until_eof()
    await asyncio.wait_for(closing, 5)
    assert session.closed and session.error is None
    headers = [hdr for hdr, _ in frames]
    assert Header(0, TYPE_GO_AWAY, 0, 0, 0) in headers
    assert Header(0, TYPE_WINDOW_UPDATE, FLAG_RST, 2, 0) in headers
    assert Header(0, TYPE_WINDOW_UPDATE, FLAG_FIN, 3, 0) in headers
    assert sum(len(body) for hdr, body in frames if hdr.stream_id == 1) == INITIAL_WINDOW + 10


@pytest.mark.parametrize("peer_kind", ["raw", "session"])
async def test_accept_returns_a_stream_the_peer_opened_and_closed_before_ending_the_session(peer_kind):
    """The peer opens a stream, writes, closes it and ends its session before
    we call accept_stream(): we still get the stream, its data, then EOF."""
    if peer_kind == "raw":  # as Go does it: no Go Away, the transport just closes
        session, peer = await RawPeer.with_session(client=False)
        peer.send(wu(FLAG_SYN, 1), data(1, b"last words"), wu(FLAG_FIN, 1))
        peer.close()
    else:
        opener, session = await session_pair()
        stream = await opener.open_stream()
        stream.write(b"last words")
        stream.close()
        await opener.close()
    await asyncio.wait_for(session.wait_closed(), 5)
    accepted = await session.accept_stream()
    assert accepted.id == 1
    assert await accepted.read_until_eof() == b"last words"
    with pytest.raises(SessionClosedError):
        await session.accept_stream()
    with pytest.raises(SessionClosedError):
        accepted.write(b"reply")


# ---------------------------------------------------------------- splice


async def unix_echo_pair():
    """A connected socket pair whose far end echoes until EOF, then half-closes."""
    near, far = socket.socketpair()
    reader, writer = await asyncio.open_unix_connection(sock=far)

    async def run():
        while True:
            chunk = await reader.read(64 * KiB)
            if not chunk:
                writer.write_eof()
                break
            writer.write(chunk)
            await writer.drain()
        await asyncio.sleep(0.01)
        writer.close()

    return near, asyncio.ensure_future(run())


async def test_splice_stream_to_an_echoing_socket():
    async with sessions() as (client, server):

        async def serve():
            stream = await server.accept_stream()
            sock, echo_task = await unix_echo_pair()
            await splice(stream, sock)
            await echo_task
            assert sock.fileno() == -1  # splice closed the socket

        server_task = asyncio.ensure_future(serve())
        stream = await client.open_stream()
        payload = os.urandom(5 * MiB)
        stream.write(payload)
        stream.write_eof()
        assert await asyncio.wait_for(stream.read_until_eof(), 20) == payload
        await asyncio.wait_for(server_task, 5)


async def test_splice_socket_side_half_close_and_reply():
    async with sessions() as (client, server):
        near, far = socket.socketpair()
        stream = await client.open_stream()
        splicer = asyncio.ensure_future(splice(stream, near))
        reader, writer = await asyncio.open_unix_connection(sock=far)
        writer.write(b"request")
        writer.write_eof()  # socket EOF -> FIN on the stream
        peer = await server.accept_stream()
        assert await peer.read_until_eof() == b"request"
        peer.write(b"response")
        peer.write_eof()  # FIN -> shutdown(SHUT_WR) on the socket
        assert await reader.read() == b"response"
        await asyncio.wait_for(splicer, 5)
        writer.close()


async def test_splice_backpressure_on_a_slow_socket_reader():
    async with sessions() as (client, server):
        near, far = socket.socketpair()
        stream = await client.open_stream()
        splicer = asyncio.ensure_future(splice(stream, near))
        peer_future = asyncio.ensure_future(server.accept_stream())
        stream.write(b"")  # nothing; the server writes
        await asyncio.sleep(0)
        stream.write(b"go")
        peer = await peer_future
        await peer.readexactly(2)
        peer.write(b"p" * (8 * MiB))
        drainer = asyncio.ensure_future(peer.drain())
        await asyncio.sleep(0.2)
        assert not drainer.done()  # the socket is not read: the window closed
        assert stream._st.recv_len <= INITIAL_WINDOW
        reader, writer = await asyncio.open_unix_connection(sock=far)
        got = 0
        while got < 8 * MiB:
            got += len(await reader.read(256 * KiB))
        await asyncio.wait_for(drainer, 5)
        peer.reset()
        await asyncio.wait_for(splicer, 5)
        writer.close()


async def test_splice_graceful_close_delivers_what_the_socket_gave_and_reads_no_more():
    """A spliced stream with data queued beyond the window when the session
    closes: what the splice took from its socket still goes out (the peer
    reads on); socket data arriving after the close began is not read; the
    splice ends with the session."""
    client, server = await session_pair()
    near, far = socket.socketpair()
    stream = await client.open_stream()
    splicer = asyncio.ensure_future(splice(stream, near))
    far.setblocking(False)
    loop = asyncio.get_running_loop()
    first = os.urandom(300 * KiB)  # 256 KiB go out, the rest waits for the window
    await loop.sock_sendall(far, first)
    peer = await server.accept_stream()
    for _ in range(200):
        if stream._st.send_len == len(first) - INITIAL_WINDOW:
            break
        await asyncio.sleep(0.01)
    assert stream._st.send_len == len(first) - INITIAL_WINDOW
    closing = asyncio.ensure_future(client.close())
    await asyncio.sleep(0.05)
    assert client.closing and not client.closed  # waiting for the peer's window
    await loop.sock_sendall(far, b"too late")
    await asyncio.sleep(0.05)
    got, error = await asyncio.wait_for(steady_reader(peer), 5)
    assert got == first and isinstance(error, SessionClosedError)
    await asyncio.wait_for(closing, 5)
    assert client.error is None
    await asyncio.wait_for(splicer, 5)
    assert stream.is_reset  # the splice ended with the session (no FIN: the socket never ended)
    far.close()
    await server.close()


async def test_splice_resets_the_stream_when_the_socket_fails():
    async with sessions() as (client, server):
        near, far = socket.socketpair()
        stream = await client.open_stream()
        splicer = asyncio.ensure_future(splice(stream, near))
        stream.write(b"x")
        await asyncio.sleep(0.01)
        peer = await server.accept_stream()
        # the socket peer vanishes with unread data: RST on the socket
        far.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.write(b"y" * 1000)
        await asyncio.sleep(0.05)
        far.close()
        peer.write(b"y" * (512 * KiB))
        await asyncio.wait_for(splicer, 5)
        with pytest.raises(StreamResetError):
            await asyncio.wait_for(peer.read_until_eof(), 5)


async def test_splice_peer_reset_closes_the_socket():
    async with sessions() as (client, server):
        near, far = socket.socketpair()
        stream = await client.open_stream()
        splicer = asyncio.ensure_future(splice(stream, near))
        stream.write(b"x")
        peer = await server.accept_stream()
        peer.reset()
        await asyncio.wait_for(splicer, 5)
        far.setblocking(False)
        reader, writer = await asyncio.open_unix_connection(sock=far)
        assert await reader.read() == b""
        writer.close()


async def test_splice_cancel_resets_and_closes():
    async with sessions() as (client, server):
        near, far = socket.socketpair()
        stream = await client.open_stream()
        splicer = asyncio.ensure_future(splice(stream, near))
        await asyncio.sleep(0.01)
        splicer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await splicer
        assert stream.is_reset
        far.close()


for _name, _fn in list(globals().items()):
    if _name.startswith("test_") and inspect.iscoroutinefunction(_fn):
        globals()[_name] = on_both_loops(_fn)


def test_config_validation():
    with pytest.raises(ValueError, match="accept_backlog"):
        Config(accept_backlog=0)
    with pytest.raises(ValueError, match="keepalive_interval"):
        Config(keepalive_interval=0)
    with pytest.raises(ValueError, match="max_stream_window_size"):
        Config(max_stream_window_size=256 * KiB - 1)
    with pytest.raises(ValueError, match="connection_write_timeout"):
        Config(connection_write_timeout=-1)
    with pytest.raises(ValueError, match="close_timeout"):
        Config(close_timeout=0)
    assert Config().close_timeout == 10.0
    assert Config().max_stream_window_size == 256 * KiB and Config().accept_backlog == 256
    assert Config().keepalive_interval == 30.0 and Config().connection_write_timeout == 10.0
    assert Config().enable_keepalive is True


def test_malloc_tuning_happens_once():
    import yamux

    yamux.tune_malloc()
    assert yamux.tune_malloc() is False


def test_a_session_leaves_the_allocator_alone():
    """The library does not tune its process's malloc; the programs do (kata-proxy,
    kata-agent: their __main__), so a fresh process with a session is untuned."""
    code = (
        "import asyncio, socket, yamux, yamux._malloc as m\n"
        "async def main():\n"
        "    a, b = socket.socketpair()\n"
        "    session = await yamux.Session.from_socket(a, client=True, config=yamux.Config(enable_keepalive=False))\n"
        "    await session.open_stream()\n"
        "    b.close()\n"
        "    await session.wait_closed()\n"
        "asyncio.run(main())\n"
        "print(m._done)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
