"""kata_grpc.client: an answer the client holds complete is the call's result, whatever
happens after it arrived.

- A server that answers and closes at once (the VM cache's Quit does): the client owes it
  frames after the answer (the SETTINGS ack); sending them to a closed peer fails, and before
  the fix that failure replaced the answer with a TransportError (``factory destroy`` then
  thought no server was there).
- A deadline that passes after the whole answer arrived: the deadline was checked before the
  answer, and the call reported DeadlineExceeded."""

from __future__ import annotations

import socket
import struct
import threading

from kata_grpc.client import Channel

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name: bytes, value: bytes) -> bytes:
    """An HPACK literal header field without indexing, no Huffman (RFC 7541 6.2.2)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def answer_then_close(listener: socket.socket, message: bytes) -> None:
    conn, _ = listener.accept()
    got = b""
    while True:  # the request ends with a DATA frame flagged END_STREAM on stream 1
        chunk = conn.recv(65536)
        if not chunk:
            break
        got += chunk
        if _request_complete(got):
            break
    body = b"\x00" + struct.pack(">I", len(message)) + message
    conn.sendall(frame(4, 0, 0, b"")  # SETTINGS (the client owes an ack)
                 + frame(1, 0x4, 1, literal(b":status", b"200") + literal(b"content-type", b"application/grpc"))
                 + frame(0, 0, 1, body)
                 + frame(1, 0x5, 1, literal(b"grpc-status", b"0")))
    conn.close()


def _request_complete(data: bytes) -> bool:
    if not data.startswith(PREFACE):
        return False
    pos = len(PREFACE)
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        if kind == 0 and flags & 0x1:
            return True
        pos += 9 + length
    return False


def test_an_answer_is_kept_when_the_server_closes_right_after_it(tmp_path):
    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(8)
    try:
        for i in range(20):
            server = threading.Thread(target=answer_then_close, args=(listener, b"answer %d" % i))
            server.start()
            channel = Channel(path)
            try:
                assert bytes(channel.unary("/cache.CacheService/Quit", b"", timeout=5)) == b"answer %d" % i
            finally:
                channel.close()
                server.join(5)
    finally:
        listener.close()


def test_an_answer_in_hand_is_not_lost_to_its_deadline(tmp_path, monkeypatch):
    """The whole answer arrived, then the deadline passed before the client looked at it again:
    the answer stands (the deadline was checked first, and the call reported DeadlineExceeded)."""
    import kata_grpc.client as client

    readings = iter([0.0, 0.0])  # the deadline's start, then its check before the first send

    class Clock:
        @staticmethod
        def monotonic() -> float:
            return next(readings, 10.0)  # from then on: long past the 1 s deadline

    path = str(tmp_path / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    server = threading.Thread(target=answer_then_close, args=(listener, b"in time"))
    server.start()
    channel = Channel(path)
    try:
        channel.connect()
        monkeypatch.setattr(client, "time", Clock)
        assert bytes(channel.unary("/cache.CacheService/Status", b"", timeout=1.0)) == b"in time"
    finally:
        channel.close()
        server.join(5)
        listener.close()
