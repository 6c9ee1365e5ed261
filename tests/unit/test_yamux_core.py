"""Sans-IO yamux core: stream state machines, windows, session control."""

import pytest

from yamux import (
    Config,
    GoAwayError,
    KeepAliveTimeoutError,
    ProtocolError,
    SessionClosedError,
    StreamClosedError,
    StreamResetError,
)
from yamux.core import (
    MAX_DATA_FRAME,
    REMOTE_FIN,
    Connection,
    ConnectionTerminated,
    DataReceived,
    GoAwayReceived,
    OpenSlotAvailable,
    PingAcked,
    PingTimedOut,
    StreamClosed,
    StreamEnded,
    StreamOpened,
    StreamPhase,
    StreamReset,
    advance,
)
from yamux.frame import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    INITIAL_WINDOW,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Header,
    encode_header,
)
from yamux_helpers import split_frames

KiB = 1024


# ---------------------------------------------------------------- helpers


def frames_of(buffers):
    """Split output buffers into (Header, body) pairs."""
    return split_frames(b"".join(bytes(b) for b in buffers))


def headers_of(buffers):
    return [hdr for hdr, _ in frames_of(buffers)]


def kinds(events):
    return [type(e) for e in events]


class Pair:
    """A client and a server core connected back to back."""

    def __init__(self, client_config=None, server_config=None):
        self.client = Connection(client=True, config=client_config)
        self.server = Connection(client=False, config=server_config)
        self.events = {self.client: [], self.server: []}

    def peer(self, conn):
        return self.server if conn is self.client else self.client

    def send(self, conn, max_data=1 << 30):
        """Deliver conn's pending output to its peer; return the frames sent."""
        out = conn.take_output(max_data)
        self.events[conn].extend(conn.take_events())
        if out:
            peer = self.peer(conn)
            self.events[peer].extend(peer.receive_data(b"".join(bytes(b) for b in out)))
        return frames_of(out)

    def pump(self):
        while True:
            sent = self.send(self.client) + self.send(self.server)
            if not sent:
                return

    def take(self, conn):
        events = self.events[conn] + conn.take_events()
        self.events[conn] = []
        return events

    def open_accepted(self):
        st = self.client.open_stream()
        self.pump()
        peer_st = self.server.accept()
        self.pump()
        return st, peer_st


def raw(ftype, flags, sid, length, body=b"", version=0):
    return encode_header(ftype, flags, sid, length, version) + body


def fresh_server(**config):
    return Connection(client=False, config=Config(**config) if config else None)


def assert_protocol_error(conn, events, fragment):
    terminated = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert terminated, events
    assert isinstance(terminated[0].error, ProtocolError)
    assert fragment in str(terminated[0].error)
    assert conn.closed and conn.error is terminated[0].error
    hdrs = headers_of(conn.take_output())
    assert Header(0, TYPE_GO_AWAY, 0, 0, 1) in hdrs  # Go Away(1), best effort


# ---------------------------------------------------------------- ids, open, accept


def test_client_ids_are_odd_server_ids_even():
    client = Connection(client=True)
    server = Connection(client=False)
    assert [client.open_stream().stream_id for _ in range(3)] == [1, 3, 5]
    assert [server.open_stream().stream_id for _ in range(3)] == [2, 4, 6]


def test_open_sends_syn_window_update_with_zero_delta():
    client = Connection(client=True)
    st = client.open_stream()
    assert headers_of(client.take_output()) == [Header(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0)]
    assert st.state == "syn-sent"


def test_larger_window_is_advertised_as_delta_on_syn_and_ack():
    big = 16 * 1024 * KiB
    p = Pair(Config(max_stream_window_size=big), Config(max_stream_window_size=big))
    st = p.client.open_stream()
    (syn, _), = p.send(p.client)
    assert syn == Header(0, TYPE_WINDOW_UPDATE, FLAG_SYN, 1, big - INITIAL_WINDOW)
    assert st.recv_window == big
    peer = p.server.accept()
    assert peer.send_window == big  # the delta was added to the acceptor's send window
    (ack, _), = p.send(p.server)
    assert ack == Header(0, TYPE_WINDOW_UPDATE, FLAG_ACK, 1, big - INITIAL_WINDOW)
    assert peer.recv_window == big and st.send_window == big


def test_acceptor_window_before_ack_is_the_initial_window():
    p = Pair(server_config=Config(max_stream_window_size=1024 * KiB))
    p.client.open_stream()
    p.pump()
    peer = p.server.streams[1]
    assert peer.recv_window == INITIAL_WINDOW  # extra credit only once the ACK goes out
    p.server.accept()
    assert peer.recv_window == 1024 * KiB


def test_accept_sends_ack_and_releases_the_open_slot():
    p = Pair()
    st = p.client.open_stream()
    assert p.client.unacked_opens == 1
    p.pump()
    assert kinds(p.take(p.server)) == [StreamOpened]
    assert p.server.accept_queue_length == 1
    peer = p.server.accept()
    assert peer.stream_id == 1 and p.server.accept() is None
    (ack, _), = p.send(p.server)
    assert ack == Header(0, TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 0)
    assert st.acked and st.state == "established" and p.client.unacked_opens == 0


def test_data_may_flow_before_the_ack():
    p = Pair()
    st = p.client.open_stream()
    p.client.send_data(st, b"early")
    frames = p.send(p.client)
    assert [h.type for h, _ in frames] == [TYPE_WINDOW_UPDATE, TYPE_DATA]  # SYN first, then data
    assert frames[1] == (Header(0, TYPE_DATA, 0, 1, 5), b"early")
    peer = p.server.accept()
    assert p.server.read(peer) == b"early"


def test_syn_carried_on_a_data_frame_is_accepted():
    server = fresh_server()
    events = server.receive_data(raw(TYPE_DATA, FLAG_SYN, 1, 3, b"abc"))
    assert kinds(events) == [StreamOpened, DataReceived]
    assert server.read(server.accept()) == b"abc"


def test_ack_on_established_stream_is_harmless():
    p = Pair()
    st, _ = p.open_accepted()
    events = p.client.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_ACK, 1, 0))
    assert not p.client.closed and events == [] and st.state == "established"


def test_syn_of_a_previously_closed_id_opens_a_new_stream_like_go():
    p = Pair()
    st, peer = p.open_accepted()
    p.client.reset_stream(st)
    p.pump()
    events = p.server.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
    assert kinds(events) == [StreamOpened]


def test_stream_ids_exhausted():
    client = Connection(client=True)
    client._next_id = 0xFFFFFFFF
    assert client.open_stream().stream_id == 0xFFFFFFFF
    with pytest.raises(Exception, match="exhausted"):
        client.open_stream()


# ---------------------------------------------------------------- windows


def test_sender_never_exceeds_the_window_and_frames_fit_in_it():
    p = Pair()
    st, peer = p.open_accepted()
    p.client.send_data(st, b"a" * (600 * KiB))
    frames = p.send(p.client)
    assert sum(len(b) for _, b in frames) == INITIAL_WINDOW
    assert all(h.length <= INITIAL_WINDOW for h, _ in frames)
    assert st.send_window == 0 and st.send_len == 600 * KiB - INITIAL_WINDOW
    assert p.send(p.client) == []  # nothing more until a window update
    assert peer.recv_window == 0


def test_window_update_only_after_half_the_window_is_read():
    p = Pair()
    st, peer = p.open_accepted()
    p.client.send_data(st, b"b" * INITIAL_WINDOW)
    p.send(p.client)
    assert p.server.read(peer, 128 * KiB - 1) == b"b" * (128 * KiB - 1)
    assert p.send(p.server) == []  # below the threshold: no update yet
    p.server.read(peer, 1)
    (wu, _), = p.send(p.server)
    assert wu == Header(0, TYPE_WINDOW_UPDATE, 0, 1, 128 * KiB)
    assert st.send_window == 128 * KiB


def test_window_update_is_driven_by_reads_not_arrival():
    p = Pair()
    st, peer = p.open_accepted()
    p.client.send_data(st, b"c" * INITIAL_WINDOW)
    p.send(p.client)
    assert p.send(p.server) == []
    assert peer.recv_len == INITIAL_WINDOW


def test_data_beyond_the_window_is_a_protocol_error():
    server = fresh_server()
    server.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
    events = server.receive_data(raw(TYPE_DATA, 0, 1, INITIAL_WINDOW + 1) + b"x" * 100)
    assert_protocol_error(server, events, "exceeds the receive window")


def test_window_is_charged_across_frames():
    server = fresh_server()
    server.receive_data(raw(TYPE_DATA, FLAG_SYN, 1, INITIAL_WINDOW - 10, b"z" * (INITIAL_WINDOW - 10)))
    assert not server.closed
    events = server.receive_data(raw(TYPE_DATA, 0, 1, 11, b"z" * 11))
    assert_protocol_error(server, events, "stream 1")


def test_bulk_transfer_exact_accounting_over_many_rounds():
    p = Pair()
    st, peer = p.open_accepted()
    payload = bytes(range(256)) * 8 * KiB  # 2 MiB
    p.client.send_data(st, payload)
    got = []
    for _ in range(100):
        p.pump()
        got.append(p.server.read(peer, 100_000))
        if sum(map(len, got)) == len(payload):
            break
    assert b"".join(got) == payload
    assert not p.client.closed and not p.server.closed


def test_large_max_window_allows_large_frames():
    big = 4 * 1024 * KiB
    p = Pair(server_config=Config(max_stream_window_size=big))
    st, peer = p.open_accepted()
    p.client.send_data(st, b"q" * big)
    frames = p.send(p.client)
    assert sum(len(b) for _, b in frames) == big
    assert max(h.length for h, _ in frames) == MAX_DATA_FRAME


def test_window_update_deltas_add_up():
    p = Pair()
    st, _ = p.open_accepted()
    p.client.receive_data(raw(TYPE_WINDOW_UPDATE, 0, 1, 1000) + raw(TYPE_WINDOW_UPDATE, 0, 1, 24))
    assert st.send_window == INITIAL_WINDOW + 1024


# ---------------------------------------------------------------- half-close, FIN


def test_half_close_both_directions():
    p = Pair()
    st, peer = p.open_accepted()
    p.client.send_data(st, b"request")
    p.client.end_stream(st)
    p.pump()
    assert st.state == "local-close"
    assert p.server.read(peer) == b"request" and peer.remote_fin and peer.at_eof
    p.server.send_data(peer, b"reply")  # the server can still write after the client's FIN
    p.server.end_stream(peer)
    p.pump()
    assert p.client.read(st) == b"reply" and st.at_eof
    assert st.freed and peer.freed
    assert 1 not in p.client.streams and 1 not in p.server.streams
    assert StreamClosed in kinds(p.take(p.client)) and StreamClosed in kinds(p.take(p.server))


def test_fin_is_sent_once_on_a_window_update_after_the_queued_data():
    p = Pair()
    st, _ = p.open_accepted()
    p.client.send_data(st, b"d" * (300 * KiB))
    p.client.end_stream(st)
    p.client.end_stream(st)  # idempotent: never two FINs
    frames = p.send(p.client)
    assert all(not h.flags & FLAG_FIN for h, _ in frames)  # window closed: FIN waits for the data
    p.client.receive_data(raw(TYPE_WINDOW_UPDATE, 0, 1, 100 * KiB))
    frames = p.send(p.client)
    assert frames[-1][0] == Header(0, TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0)
    assert [h.type for h, _ in frames[:-1]] == [TYPE_DATA]
    p.client.end_stream(st)
    assert p.send(p.client) == []


def test_fin_with_nothing_queued_goes_out_at_once():
    p = Pair()
    st, _ = p.open_accepted()
    p.client.end_stream(st)
    assert headers_of(p.client.take_output()) == [Header(0, TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0)]


def test_fin_on_a_data_frame_delivers_data_then_eof():
    p = Pair()
    st, _ = p.open_accepted()
    events = p.client.receive_data(raw(TYPE_DATA, FLAG_FIN, 1, 4, b"tail"))
    assert kinds(events) == [StreamEnded, DataReceived]
    assert not st.at_eof and p.client.read(st) == b"tail" and st.at_eof


def test_second_fin_from_peer_is_a_protocol_error():
    p = Pair()
    st, _ = p.open_accepted()
    p.client.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0))
    events = p.client.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0))
    assert_protocol_error(p.client, events, "FIN received after the peer had already sent FIN")


def test_fin_for_a_fully_closed_stream_is_ignored():
    p = Pair()
    st, peer = p.open_accepted()
    p.client.end_stream(st)
    p.server.end_stream(peer)
    p.pump()
    assert st.freed
    assert p.client.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0)) == []
    assert not p.client.closed


def test_data_after_peer_fin_is_discarded():
    p = Pair()
    st, _ = p.open_accepted()
    p.client.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0))
    p.client.receive_data(raw(TYPE_DATA, 0, 1, 3, b"bad"))
    assert not p.client.closed and st.recv_len == 0


def test_write_after_fin_raises():
    p = Pair()
    st, _ = p.open_accepted()
    p.client.end_stream(st)
    with pytest.raises(StreamClosedError):
        p.client.send_data(st, b"x")


def test_close_stream_drops_data_and_keeps_crediting_the_peer():
    p = Pair()
    st, peer = p.open_accepted()
    p.server.send_data(peer, b"e" * INITIAL_WINDOW)
    p.send(p.server)
    assert st.recv_len == INITIAL_WINDOW
    p.client.close_stream(st)
    assert st.recv_len == 0 and st.read_closed
    hdrs = [h for h, _ in p.send(p.client)]
    assert Header(0, TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0) in hdrs
    assert Header(0, TYPE_WINDOW_UPDATE, 0, 1, INITIAL_WINDOW) in hdrs
    p.server.send_data(peer, b"f" * (3 * INITIAL_WINDOW))  # more than a window: still flows
    p.server.end_stream(peer)
    for _ in range(10):
        p.pump()
    assert peer.freed and st.freed and peer.send_len == 0


# ---------------------------------------------------------------- reset


def test_peer_reset_drops_buffers_and_frees_the_stream():
    p = Pair()
    st, peer = p.open_accepted()
    p.server.send_data(peer, b"lost")
    p.send(p.server)
    p.client.send_data(st, b"unsent" * 100_000)
    events = p.client.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0))
    assert kinds(events) == [StreamReset, StreamClosed]
    assert st.reset and st.reset_by_peer and st.recv_len == 0 and st.send_len == 0 and st.freed
    with pytest.raises(StreamResetError):
        p.client.send_data(st, b"x")


def test_local_reset_sends_rst_and_later_frames_are_discarded():
    p = Pair()
    st, peer = p.open_accepted()
    p.client.reset_stream(st)
    p.client.reset_stream(st)  # once
    assert headers_of(p.client.take_output()) == [Header(0, TYPE_WINDOW_UPDATE, FLAG_RST, 1, 0)]
    assert kinds(p.client.take_events()) == [StreamClosed]
    events = p.client.receive_data(
        raw(TYPE_DATA, 0, 1, 5, b"late!") + raw(TYPE_WINDOW_UPDATE, 0, 1, 100) + raw(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0)
    )
    assert events == [] and not p.client.closed


def test_rst_rides_ahead_of_queued_data():
    p = Pair()
    st, _ = p.open_accepted()
    other = p.client.open_stream()
    p.client.send_data(other, b"x" * 10)
    p.client.reset_stream(st)
    hdrs = headers_of(p.client.take_output())
    assert hdrs[0].type == TYPE_WINDOW_UPDATE and hdrs[-1].type == TYPE_DATA


def test_unknown_stream_frames_are_ignored_and_data_discarded():
    server = fresh_server()
    events = server.receive_data(
        raw(TYPE_DATA, 0, 99, 5, b"hello") + raw(TYPE_WINDOW_UPDATE, 0, 99, 7) + raw(TYPE_WINDOW_UPDATE, FLAG_RST, 99, 0)
        + raw(TYPE_PING, FLAG_SYN, 0, 42)
    )
    assert events == [] and not server.closed
    assert headers_of(server.take_output()) == [Header(0, TYPE_PING, FLAG_ACK, 0, 42)]


# ---------------------------------------------------------------- backlog


def test_full_backlog_answers_rst_and_discards_data():
    server = fresh_server(accept_backlog=2)
    server.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0) + raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0))
    server.take_output()
    events = server.receive_data(raw(TYPE_DATA, FLAG_SYN, 5, 4, b"gone"))
    assert events == [] and not server.closed and 5 not in server.streams
    assert headers_of(server.take_output()) == [Header(0, TYPE_WINDOW_UPDATE, FLAG_RST, 5, 0)]
    server.accept()
    assert kinds(server.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 7, 0))) == [StreamOpened]


def test_unacked_opens_are_limited_and_every_path_returns_the_slot():
    p = Pair(Config(accept_backlog=2), Config(accept_backlog=10))
    a = p.client.open_stream()
    b = p.client.open_stream()
    assert not p.client.can_open()
    with pytest.raises(Exception, match="waiting for the peer's ACK"):
        p.client.open_stream()
    p.pump()
    p.server.accept()  # ACK for a
    p.pump()
    assert p.client.can_open() and OpenSlotAvailable in kinds(p.take(p.client))
    c = p.client.open_stream()
    assert not p.client.can_open()
    p.client.reset_stream(c)  # local reset returns the slot
    assert p.client.can_open()
    d = p.client.open_stream()
    p.pump()
    p.client.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_RST, d.stream_id, 0))  # peer RST returns it
    assert p.client.can_open()
    assert a.acked and not b.acked


# ---------------------------------------------------------------- ping, go away


def test_ping_request_is_answered_ahead_of_data_with_the_same_opaque():
    p = Pair()
    st, _ = p.open_accepted()
    p.client.send_data(st, b"x" * 1000)
    p.client.receive_data(raw(TYPE_PING, FLAG_SYN, 0, 0xDEADBEEF))
    hdrs = headers_of(p.client.take_output())
    assert hdrs[0] == Header(0, TYPE_PING, FLAG_ACK, 0, 0xDEADBEEF)
    assert hdrs[1].type == TYPE_DATA


def test_ping_round_trip_events():
    p = Pair()
    opaque = p.client.ping()
    assert p.client.ping() == opaque + 1
    p.pump()
    acked = [e.opaque for e in p.take(p.client) if isinstance(e, PingAcked)]
    assert acked == [opaque, opaque + 1]


def test_ping_without_flags_counts_as_a_reply():
    client = Connection(client=True)
    assert kinds(client.receive_data(raw(TYPE_PING, 0, 0, 5))) == [PingAcked]


def test_local_go_away_refuses_new_streams_but_keeps_old_ones():
    p = Pair()
    st, peer = p.open_accepted()
    p.server.go_away(0)
    assert headers_of(p.server.take_output()) == [Header(0, TYPE_GO_AWAY, 0, 0, 0)]
    events = p.server.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0))
    assert events == [] and headers_of(p.server.take_output()) == [Header(0, TYPE_WINDOW_UPDATE, FLAG_RST, 3, 0)]
    p.client.send_data(st, b"still fine")
    p.pump()
    assert p.server.read(peer) == b"still fine" and not p.server.closed


def test_remote_go_away_zero_stops_local_opens_only():
    p = Pair()
    st, peer = p.open_accepted()
    events = p.client.receive_data(raw(TYPE_GO_AWAY, 0, 0, 0))
    assert kinds(events) == [GoAwayReceived] and events[0].code == 0
    assert p.client.remote_go_away and not p.client.closed
    with pytest.raises(GoAwayError):
        p.client.open_stream()
    p.server.send_data(peer, b"go on")
    p.pump()
    assert p.client.read(st) == b"go on"


@pytest.mark.parametrize(
    "code, cls, fragment",
    [(1, ProtocolError, "Go Away(1)"), (2, SessionClosedError, "internal error"), (7, SessionClosedError, "code 7")],
)
def test_remote_go_away_error_codes_end_the_session(code, cls, fragment):
    p = Pair()
    st, _ = p.open_accepted()
    events = p.client.receive_data(raw(TYPE_GO_AWAY, 0, 0, code) + raw(TYPE_PING, FLAG_SYN, 0, 1))
    term = events[-1]
    assert isinstance(term, ConnectionTerminated) and type(term.error) is cls and fragment in str(term.error)
    assert term.streams == [st]
    assert p.client.closed
    # we do not answer a Go Away(1) with our own Go Away, and frames after it are not processed
    assert p.client.take_output() == []


def test_local_go_away_with_error_code_ends_the_session():
    p = Pair()
    p.client.go_away(2)
    assert p.client.closed and p.client.error is None
    assert headers_of(p.client.take_output()) == [Header(0, TYPE_GO_AWAY, 0, 0, 2)]


def test_close_sends_go_away_zero_and_terminates():
    p = Pair()
    st, _ = p.open_accepted()
    events = p.client.close()
    assert kinds(events) == [ConnectionTerminated] and events[0].error is None and events[0].streams == [st]
    assert headers_of(p.client.take_output()) == [Header(0, TYPE_GO_AWAY, 0, 0, 0)]
    assert p.client.receive_data(raw(TYPE_PING, FLAG_SYN, 0, 1)) == []
    with pytest.raises(SessionClosedError):
        p.client.open_stream()


def test_begin_close_with_nothing_queued_ends_at_once():
    p = Pair()
    st, _ = p.open_accepted()
    events = p.client.begin_close()
    assert kinds(events) == [ConnectionTerminated] and events[0].error is None and events[0].unsent == 0
    assert p.client.closing and p.client.closed
    assert headers_of(p.client.take_output()) == [Header(0, TYPE_GO_AWAY, 0, 0, 0)]


def test_begin_close_sends_queued_data_and_fin_as_windows_open_then_ends():
    p = Pair()
    st, peer = p.open_accepted()
    idle, _ = p.open_accepted()
    p.client.send_data(st, b"x" * (INITIAL_WINDOW + 100 * KiB))
    p.client.end_stream(st)
    assert p.client.begin_close() == []
    assert p.client.closing and not p.client.closed
    # Go Away(0) first, then what the window allows; no FIN yet
    frames = p.send(p.client)
    assert frames[0][0] == Header(0, TYPE_GO_AWAY, 0, 0, 0)
    assert sum(len(body) for _, body in frames) == INITIAL_WINDOW
    assert not p.client.closed
    # no new streams, no new writes; reads and window updates go on
    with pytest.raises(SessionClosedError, match="closing"):
        p.client.open_stream()
    with pytest.raises(SessionClosedError, match="closing"):
        p.client.send_data(idle, b"late")
    with pytest.raises(SessionClosedError, match="closing"):
        p.client.send_data_now(idle, b"late")
    assert p.client.can_open()  # (the backlog is not what refuses)
    got = p.server.read(peer)
    p.send(p.server)  # the window update
    frames = p.send(p.client)
    assert sum(len(body) for _, body in frames) == 100 * KiB
    assert frames[-1][0] == Header(0, TYPE_WINDOW_UPDATE, FLAG_FIN, st.stream_id, 0)
    events = p.take(p.client)
    terminated = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert len(terminated) == 1 and terminated[0].error is None and terminated[0].unsent == 0
    assert p.client.closed
    got += p.server.read(peer)
    assert len(got) == INITIAL_WINDOW + 100 * KiB and peer.at_eof


def test_while_closing_inbound_syns_are_refused_and_queued_streams_accepted():
    p = Pair()
    st, _ = p.open_accepted()
    p.client.send_data(st, b"y" * (INITIAL_WINDOW + 1))
    p.server.open_stream()  # id 2, waits in the client's accept queue
    p.send(p.server)
    p.client.begin_close()
    p.send(p.client)
    assert p.server.remote_go_away
    queued = p.client.accept()
    assert queued.stream_id == 2
    assert headers_of(p.client.take_output()) == [Header(0, TYPE_WINDOW_UPDATE, FLAG_ACK, 2, 0)]
    events = p.client.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 4, 0))
    assert events == []
    assert headers_of(p.client.take_output()) == [Header(0, TYPE_WINDOW_UPDATE, FLAG_RST, 4, 0)]


def test_a_reset_of_the_last_queued_stream_ends_the_closing_session():
    p = Pair()
    st, peer = p.open_accepted()
    p.client.send_data(st, b"z" * (INITIAL_WINDOW + 5))
    p.client.begin_close()
    p.send(p.client)
    p.server.reset_stream(peer)
    p.send(p.server)  # the RST: nothing is left to send
    terminated = [e for e in p.take(p.client) if isinstance(e, ConnectionTerminated)]
    assert len(terminated) == 1 and terminated[0].error is None and p.client.closed


def test_close_after_begin_close_drops_what_is_left_and_counts_it():
    p = Pair()
    st, _ = p.open_accepted()
    p.client.send_data(st, b"w" * (INITIAL_WINDOW + 300))
    p.client.begin_close()
    p.send(p.client)
    events = p.client.close()  # the bound expired: give up
    assert kinds(events) == [ConnectionTerminated]
    assert events[0].error is None and events[0].unsent == 300 and st.unsent == 300
    assert p.client.take_output() == []  # the Go Away already went out


def test_take_stream_output_cuts_one_stream_within_its_window():
    p = Pair()
    a, _ = p.open_accepted()
    b, _ = p.open_accepted()
    p.client.send_data(b, b"b" * 100)
    p.client.send_data(a, b"a" * (INITIAL_WINDOW + 7))
    p.client.end_stream(a)
    p.client.ping()
    frames = frames_of(p.client.take_stream_output(a))
    assert frames[0][0].type == TYPE_PING  # control frames first
    assert {hdr.stream_id for hdr, _ in frames[1:]} == {a.stream_id}
    assert sum(len(body) for _, body in frames) == INITIAL_WINDOW and a.send_len == 7 and not a.fin_sent
    assert p.client.take_stream_output(a) == []  # no window left
    assert b.send_len == 100 and p.client.has_pending_data  # b was not touched
    p.client.receive_data(raw(TYPE_WINDOW_UPDATE, 0, a.stream_id, 1000))
    frames = frames_of(p.client.take_stream_output(a))
    assert [len(body) for _, body in frames] == [7, 0]
    assert frames[-1][0] == Header(0, TYPE_WINDOW_UPDATE, FLAG_FIN, a.stream_id, 0)
    assert headers_of(p.client.take_output()) == [Header(0, TYPE_DATA, 0, b.stream_id, 100)]


def test_accept_after_the_session_ended_returns_streams_the_peer_opened():
    """The peer opened a stream, wrote, sent FIN and ended the session before
    we accepted: the stream is still handed out (without an ACK), readable to EOF."""
    server = fresh_server()
    server.receive_data(
        raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0) + raw(TYPE_DATA, 0, 1, 3, b"bye") + raw(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0)
    )
    events = server.connection_lost(None)
    assert kinds(events) == [ConnectionTerminated]
    st = server.accept()
    assert st is not None and st.stream_id == 1
    assert server.read(st) == b"bye" and st.at_eof
    assert server.accept() is None
    assert server.take_output() == []  # no ACK after the end


def test_connection_lost_is_an_error_unless_the_peer_said_go_away():
    a = Connection(client=True)
    (term,) = a.connection_lost()
    assert isinstance(term.error, SessionClosedError) and "closed by the peer" in str(term.error)
    b = Connection(client=True)
    b.receive_data(raw(TYPE_GO_AWAY, 0, 0, 0))
    (term,) = b.connection_lost()
    assert term.error is None
    c = Connection(client=True)
    c.receive_data(b"\x00\x00")
    (term,) = c.connection_lost()
    assert "middle of a frame" in str(term.error)


def test_buffered_data_stays_readable_after_the_session_ends():
    p = Pair()
    st, peer = p.open_accepted()
    p.server.send_data(peer, b"last words")
    p.send(p.server)
    p.client.connection_lost()
    assert p.client.read(st) == b"last words"
    assert p.client.take_output() == []  # no window update on a dead session


# ---------------------------------------------------------------- malformed input


@pytest.mark.parametrize(
    "data, fragment",
    [
        (raw(TYPE_PING, FLAG_SYN, 0, 1, version=1), "unsupported protocol version 1"),
        (raw(7, 0, 0, 0), "unknown frame type 7"),
        (raw(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_ACK, 1, 0), "SYN and ACK"),
        (raw(TYPE_PING, FLAG_SYN | FLAG_ACK, 0, 0), "Ping frame with both SYN and ACK"),
        (raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 0, 0), "stream id 0"),
        (raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 2, 0), "wrong id parity"),
        (raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0) * 2, "duplicate SYN for live stream 1"),
        (raw(TYPE_DATA, FLAG_SYN, 1, INITIAL_WINDOW + 1), "exceeds the receive window"),
    ],
)
def test_protocol_errors(data, fragment):
    server = fresh_server()
    events = server.receive_data(data)
    assert_protocol_error(server, events, fragment)


def test_duplicate_syn_for_our_own_live_stream():
    client = Connection(client=True)
    client.open_stream()
    client.take_output()
    # a server opening id 1 (ours) is refused by parity; a SYN on a live id is a duplicate
    events = client.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))
    assert_protocol_error(client, events, "stream 1")


def test_protocol_error_wakes_all_streams_via_terminated_event():
    p = Pair()
    a, _ = p.open_accepted()
    b, _ = p.open_accepted()
    events = p.client.receive_data(raw(9, 0, 0, 0))
    (term,) = [e for e in events if isinstance(e, ConnectionTerminated)]
    assert set(term.streams) == {a, b} and p.client.streams == {}


def test_input_after_termination_is_ignored():
    server = fresh_server()
    server.receive_data(raw(9, 0, 0, 0))
    server.take_output()
    assert server.receive_data(raw(TYPE_PING, FLAG_SYN, 0, 1)) == []
    assert server.take_output() == []


# ---------------------------------------------------------------- parsing


def test_byte_by_byte_feeding_matches_whole_feeding():
    stream = (
        raw(TYPE_DATA, FLAG_SYN, 1, 5, b"hello")
        + raw(TYPE_PING, FLAG_SYN, 0, 77)
        + raw(TYPE_DATA, 0, 1, 6, b" world")
        + raw(TYPE_WINDOW_UPDATE, FLAG_FIN, 1, 0)
    )
    whole = fresh_server()
    whole.receive_data(stream)
    pieces = fresh_server()
    for i in range(len(stream)):
        pieces.receive_data(stream[i : i + 1])
    for conn in (whole, pieces):
        st = conn.accept()
        assert conn.read(st) == b"hello world" and st.at_eof
        assert Header(0, TYPE_PING, FLAG_ACK, 0, 77) in headers_of(conn.take_output())


def test_split_body_is_readable_as_it_arrives():
    server = fresh_server()
    frame = raw(TYPE_DATA, FLAG_SYN, 1, 10, b"0123456789")
    server.receive_data(frame[:15])
    st = server.accept()
    assert server.read(st) == b"012"
    server.receive_data(frame[15:])
    assert server.read(st) == b"3456789"


def test_pinned_chunks_are_compacted_beyond_two_windows():
    server2 = fresh_server()
    s3 = raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 3, 0)
    server2.receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0) + s3)
    for _ in range(12):
        server2.receive_data(raw(TYPE_DATA, 0, 1, 20_000, b"a" * 20_000) + raw(TYPE_DATA, 0, 3, 20_000, b"b" * 20_000))
        server2.read(server2.streams[3])  # stream 3 is read at once, stream 1 is not
    st1 = server2.streams[1]
    held = {id(c.obj if isinstance(c, memoryview) else c): len(c.obj if isinstance(c, memoryview) else c) for c in st1.recv_buf}
    assert sum(held.values()) <= 3 * INITIAL_WINDOW
    assert server2.read(st1) == b"a" * 240_000


def test_small_payloads_do_not_pin_large_chunks():
    server = fresh_server()
    big_frame = raw(TYPE_DATA, FLAG_SYN, 1, 100_000, b"B" * 100_000)
    small = raw(TYPE_DATA, FLAG_SYN, 3, 10, b"s" * 10)
    server.receive_data(small + big_frame)
    st3 = server.streams[3]
    assert type(st3.recv_buf[0]) is bytes  # copied: 10 bytes do not hold 100 KB alive
    st1 = server.streams[1]
    assert type(st1.recv_buf[0]) is memoryview  # most of the chunk: shared, no copy


def test_read_variants():
    p = Pair()
    st, peer = p.open_accepted()
    for piece in (b"abc", b"defg", b"hij"):
        p.server.send_data(peer, piece)
        p.send(p.server)
    assert st.recv_len == 10
    assert p.client.read(st, 2) == b"ab"
    assert p.client.read(st, 5) == b"cdefg"
    assert [bytes(x) for x in p.client.take_received(st, 1)] == [b"h"]
    assert [bytes(x) for x in p.client.take_received(st)] == [b"ij"]
    assert p.client.read(st) == b"" and p.client.take_received(st) == []


def test_round_robin_between_streams_and_budget():
    p = Pair()
    a, _ = p.open_accepted()
    b, _ = p.open_accepted()
    p.client.send_data(a, b"a" * 200 * KiB)
    p.client.send_data(b, b"b" * 200 * KiB)
    out = p.client.take_output(max_data=1)
    hdrs = headers_of(out)
    assert len(hdrs) == 1 and hdrs[0].stream_id == a.stream_id
    hdrs = headers_of(p.client.take_output())
    assert [h.stream_id for h in hdrs] == [b.stream_id]  # b's turn
    assert p.client.take_output(max_data=0) == []


def test_writes_are_coalesced_into_one_frame_and_bytearrays_copied():
    p = Pair()
    st, peer = p.open_accepted()
    buf = bytearray(b"mutable")
    p.client.send_data(st, buf)
    buf[:] = b"CHANGED"
    for i in range(20):
        p.client.send_data(st, b"%02d" % i)
    frames = p.send(p.client)
    assert len(frames) == 1 and frames[0][1] == b"mutable" + b"".join(b"%02d" % i for i in range(20))


def test_memory_stays_within_windows_when_nobody_reads():
    server = fresh_server(accept_backlog=4)
    data = b"".join(raw(TYPE_DATA, FLAG_SYN, sid, INITIAL_WINDOW, b"m" * INITIAL_WINDOW) for sid in (1, 3, 5, 7, 9))
    server.receive_data(data)
    assert not server.closed
    assert server.buffered_bytes() <= 4 * INITIAL_WINDOW and len(server.streams) == 4


# ---------------------------------------------------------------- the I/O layer's entry points


def test_next_read_decides_data_eof_wait_or_error():
    p = Pair()
    st, peer = p.open_accepted()
    assert p.server.next_read(peer) is None  # nothing yet: wait
    p.client.send_data(st, b"hello")
    p.pump()
    assert p.server.next_read(peer, 0) == b""
    assert p.server.next_read(peer, 2) == b"he" and p.server.next_read(peer) == b"llo"
    p.client.end_stream(st)
    p.pump()
    assert p.server.next_read(peer) == b""  # the peer's FIN: EOF
    st2, peer2 = p.open_accepted()
    p.client.reset_stream(st2)
    p.pump()
    with pytest.raises(StreamResetError, match="by the peer"):
        p.server.next_read(peer2)
    with pytest.raises(StreamResetError, match="by us"):
        p.client.next_read(st2)
    st3, peer3 = p.open_accepted()
    p.server.receive_data(raw(TYPE_PING, FLAG_SYN | FLAG_ACK, 0, 1))  # a protocol error ends it
    with pytest.raises(ProtocolError):
        p.server.next_read(peer3)


def test_write_cuts_a_frame_now_only_when_the_transport_is_ready():
    p = Pair()
    st, _ = p.open_accepted()
    assert p.client.write(st, b"later", transport_ready=False) is None
    assert st.send_len == 5 and not p.client.all_sent(st)
    p.client.take_output()
    assert p.client.all_sent(st)
    out = p.client.write(st, b"now", transport_ready=True)
    assert [(hdr.type, body) for hdr, body in frames_of(out)] == [(TYPE_DATA, b"now")]
    p.client.reset_stream(st)
    with pytest.raises(StreamResetError):
        p.client.write(st, b"x", transport_ready=True)
    with pytest.raises(StreamResetError):
        p.client.all_sent(st)


def test_all_sent_raises_once_the_session_dropped_what_was_written():
    p = Pair()
    st, _ = p.open_accepted()
    p.client.send_data(st, b"x" * (INITIAL_WINDOW + 1))
    p.client.take_output()  # the window lets all but one byte out
    p.client.close()
    with pytest.raises(SessionClosedError):
        p.client.all_sent(st)


def test_remote_ended_once_the_fin_and_everything_before_it_were_taken():
    p = Pair()
    st, peer = p.open_accepted()
    p.client.send_data(st, b"tail")
    p.client.end_stream(st)
    p.pump()
    assert peer.remote_fin and not p.server.remote_ended(peer)  # "tail" is still buffered
    p.server.take_received(peer)
    assert p.server.remote_ended(peer)


# ---------------------------------------------------------------- timers, on a virtual clock


def ping_ack(opaque):
    return raw(TYPE_PING, FLAG_ACK, 0, opaque)


def test_keepalive_pings_every_interval_and_a_reply_keeps_it_going():
    conn = Connection(client=True, config=Config(keepalive_interval=30, connection_write_timeout=10))
    assert conn.get_timer() is None  # not started
    conn.start_keepalive(100.0)
    assert conn.get_timer() == 130.0
    assert conn.handle_timer(129.0) == [] and conn.take_output() == []  # early: nothing
    conn.handle_timer(130.0)
    (hdr,) = headers_of(conn.take_output())
    assert (hdr.type, hdr.flags) == (TYPE_PING, FLAG_SYN)
    assert conn.get_timer() == 140.0  # the reply's deadline
    assert kinds(conn.receive_data(ping_ack(hdr.length))) == [PingAcked]  # (re-read get_timer)
    assert conn.get_timer() == 160.0  # the next ping, an interval after this one
    conn.handle_timer(160.0)
    assert [h.type for h in headers_of(conn.take_output())] == [TYPE_PING]
    assert not conn.closed


def test_keepalive_without_reply_or_traffic_ends_the_session_without_go_away():
    conn = Connection(client=True, config=Config(keepalive_interval=30, connection_write_timeout=10))
    conn.start_keepalive(0.0)
    conn.handle_timer(30.0)
    conn.take_output()
    events = conn.handle_timer(40.0)
    assert kinds(events) == [ConnectionTerminated]
    assert isinstance(events[0].error, KeepAliveTimeoutError) and conn.closed
    assert conn.take_output() == []  # like Go: no Go Away
    assert conn.get_timer() is None


def test_keepalive_takes_a_peer_busy_sending_for_alive():
    conn = Connection(client=True, config=Config(keepalive_interval=30, connection_write_timeout=10))
    conn.start_keepalive(0.0)
    conn.handle_timer(30.0)
    conn.take_output()
    conn.receive_data(raw(TYPE_WINDOW_UPDATE, 0, 99, 1))  # traffic, but not the reply
    assert conn.handle_timer(40.0) == [] and not conn.closed
    assert conn.get_timer() == 70.0


def test_keepalive_disabled_runs_no_timer():
    conn = Connection(client=True, config=Config(enable_keepalive=False))
    conn.start_keepalive(0.0)
    assert conn.get_timer() is None


def test_a_ping_times_out_on_its_deadline_and_the_session_goes_on():
    conn = Connection(client=True, config=Config(enable_keepalive=False, connection_write_timeout=10))
    late = conn.ping(5.0)
    answered = conn.ping(6.0)
    assert conn.get_timer() == 15.0
    assert kinds(conn.receive_data(ping_ack(answered))) == [PingAcked]
    assert conn.handle_timer(14.9) == []
    events = conn.handle_timer(15.0)
    assert kinds(events) == [PingTimedOut] and events[0].opaque == late
    assert conn.get_timer() is None and not conn.closed


def test_a_closed_stream_without_the_peers_fin_is_reset_after_stream_close_timeout():
    config = Config(enable_keepalive=False, stream_close_timeout=300)
    p = Pair(config, config)
    st, peer = p.open_accepted()
    p.client.close_stream(st, 1000.0)
    p.pump()
    assert p.client.get_timer() == 1300.0
    events = p.client.handle_timer(1300.0)
    assert kinds(events) == [StreamReset, StreamClosed] and st.reset and st.freed
    assert not st.reset_by_peer
    p.pump()
    assert peer.reset and peer.reset_by_peer  # the RST went out
    assert p.client.get_timer() is None


def test_the_close_timer_ends_with_the_peers_fin():
    config = Config(enable_keepalive=False, stream_close_timeout=300)
    p = Pair(config, config)
    st, peer = p.open_accepted()
    p.client.close_stream(st, 0.0)
    p.server.end_stream(peer)
    p.pump()
    assert st.freed and not st.reset
    assert p.client.get_timer() is None


# ---------------------------------------------------------------- stream phases (hashicorp's states)


def test_stream_phases_follow_hashicorps_state_machine():
    P = StreamPhase
    p = Pair()
    st = p.client.open_stream()
    assert st.phase == P.SYN_SENT
    p.pump()
    peer = p.server.accept()
    assert peer.phase == P.ESTABLISHED  # our ACK is sent on accept
    p.pump()
    assert st.phase == P.ESTABLISHED
    p.client.end_stream(st)
    assert st.phase == P.LOCAL_CLOSE
    p.pump()
    assert peer.phase == P.REMOTE_CLOSE
    p.server.end_stream(peer)
    assert peer.phase == P.CLOSED
    p.pump()
    assert st.phase == P.CLOSED and st.freed and peer.freed
    # a close before the ACK, then the ACK: LOCAL_CLOSE stays (hashicorp's processFlags)
    early = p.client.open_stream()
    p.client.end_stream(early)
    p.pump()
    p.server.accept()
    p.pump()
    assert early.phase == P.LOCAL_CLOSE
    # RST from any phase, nothing after it
    doomed = p.client.open_stream()
    p.client.reset_stream(doomed)
    assert doomed.phase == P.RESET and doomed.state == "reset"
    advance(doomed, REMOTE_FIN)
    assert doomed.phase == P.RESET


def test_stream_phase_names_are_the_readable_states():
    assert StreamPhase.NAMES[StreamPhase.SYN_RECEIVED] == "syn-received"
    st = Connection(client=False).receive_data(raw(TYPE_WINDOW_UPDATE, FLAG_SYN, 1, 0))[0].stream
    assert st.phase == StreamPhase.SYN_RECEIVED and st.state == "syn-received" and not st.acked
