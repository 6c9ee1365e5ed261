"""HTTP/2 frames read back from bytes a core wrote, for the tests of kata_grpc's cores."""

from __future__ import annotations

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of every frame of ``data`` (after the client's
    connection preface, if it starts with one). RFC 9113 section 4.1: a 9-byte header."""
    if data.startswith(PREFACE):
        data = data[len(PREFACE):]
    out = []
    while data:
        n = int.from_bytes(data[:3], "big")
        out.append((data[3], data[4], int.from_bytes(data[5:9], "big"), data[9:9 + n]))
        data = data[9 + n:]
    return out
