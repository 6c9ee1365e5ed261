"""Helpers shared by the yamux unit tests (imported by name, as tests/unit is on sys.path)."""

from __future__ import annotations

from yamux.frame import HEADER_SIZE, TYPE_DATA, Header, decode_header


def split_frames(data: bytes) -> list[tuple[Header, bytes]]:
    """Cut a session's output into (Header, body) pairs; it must be whole frames."""
    frames, pos = [], 0
    while pos + HEADER_SIZE <= len(data):
        hdr = decode_header(data, pos)
        pos += HEADER_SIZE
        body = b""
        if hdr.type == TYPE_DATA:
            body = data[pos : pos + hdr.length]
            pos += hdr.length
        frames.append((hdr, body))
    assert pos == len(data), "output must be whole frames"
    return frames
