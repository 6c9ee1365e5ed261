"""yamux frame header: constants and codec (pure, no I/O).

Header (12 bytes, big-endian): version u8, type u8, flags u16, stream id u32,
length u32.  Only Data frames carry a body (``length`` bytes).  For Window
Update the length is a window delta, for Ping an opaque value echoed in the
reply, for Go Away the error code.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

VERSION = 0

TYPE_DATA = 0
TYPE_WINDOW_UPDATE = 1
TYPE_PING = 2
TYPE_GO_AWAY = 3
TYPE_NAMES = {TYPE_DATA: "Data", TYPE_WINDOW_UPDATE: "WindowUpdate", TYPE_PING: "Ping", TYPE_GO_AWAY: "GoAway"}

FLAG_SYN = 0x1
FLAG_ACK = 0x2
FLAG_FIN = 0x4
FLAG_RST = 0x8

GO_AWAY_NORMAL = 0
GO_AWAY_PROTOCOL_ERROR = 1
GO_AWAY_INTERNAL_ERROR = 2

HEADER_SIZE = 12
INITIAL_WINDOW = 256 * 1024
MAX_UINT32 = 0xFFFFFFFF

HEADER = struct.Struct(">BBHII")
pack_header = HEADER.pack
unpack_header_from = HEADER.unpack_from


class Header(NamedTuple):
    version: int
    type: int
    flags: int
    stream_id: int
    length: int

    def __str__(self) -> str:
        return (
            f"{TYPE_NAMES.get(self.type, self.type)}(version={self.version} flags={flag_names(self.flags)} "
            f"stream={self.stream_id} length={self.length})"
        )


def encode_header(frame_type: int, flags: int, stream_id: int, length: int, version: int = VERSION) -> bytes:
    """The 12 header bytes.  Raises ``struct.error`` for out-of-range fields."""
    return pack_header(version, frame_type, flags, stream_id, length)


def decode_header(data, offset: int = 0) -> Header:
    """Parse 12 header bytes at ``offset`` (no validation of the values)."""
    return Header(*unpack_header_from(data, offset))


def flag_names(flags: int) -> str:
    names = [name for bit, name in ((FLAG_SYN, "SYN"), (FLAG_ACK, "ACK"), (FLAG_FIN, "FIN"), (FLAG_RST, "RST")) if flags & bit]
    rest = flags & ~0xF
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


# Ready-made encoders for the frames a session sends.

def data_header(stream_id: int, length: int, flags: int = 0) -> bytes:
    return pack_header(VERSION, TYPE_DATA, flags, stream_id, length)


def window_update(stream_id: int, delta: int, flags: int = 0) -> bytes:
    return pack_header(VERSION, TYPE_WINDOW_UPDATE, flags, stream_id, delta)


def ping(opaque: int, ack: bool = False) -> bytes:
    return pack_header(VERSION, TYPE_PING, FLAG_ACK if ack else FLAG_SYN, 0, opaque)


def go_away(code: int) -> bytes:
    return pack_header(VERSION, TYPE_GO_AWAY, 0, 0, code)
