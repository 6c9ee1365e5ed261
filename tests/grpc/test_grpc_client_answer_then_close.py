"""kata_grpc.client: a server that answers and closes at once (the VM cache's Quit does) must
not turn the answer into an error. The client owes the server frames after the answer (the
SETTINGS ack); sending them to a closed peer fails, and before the fix that failure replaced
the answer with a TransportError (``factory destroy`` then thought no server was there)."""

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
