"""yamux frame header codec."""

import struct

import pytest

from yamux import frame
from yamux.frame import (
    FLAG_ACK,
    FLAG_FIN,
    FLAG_RST,
    FLAG_SYN,
    HEADER_SIZE,
    TYPE_DATA,
    TYPE_GO_AWAY,
    TYPE_PING,
    TYPE_WINDOW_UPDATE,
    Header,
    decode_header,
    encode_header,
)


def test_constants_match_the_spec():
    assert (TYPE_DATA, TYPE_WINDOW_UPDATE, TYPE_PING, TYPE_GO_AWAY) == (0, 1, 2, 3)
    assert (FLAG_SYN, FLAG_ACK, FLAG_FIN, FLAG_RST) == (1, 2, 4, 8)
    assert (frame.GO_AWAY_NORMAL, frame.GO_AWAY_PROTOCOL_ERROR, frame.GO_AWAY_INTERNAL_ERROR) == (0, 1, 2)
    assert HEADER_SIZE == 12
    assert frame.INITIAL_WINDOW == 262144
    assert frame.VERSION == 0


def test_header_layout_is_big_endian():
    raw = encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_ACK, 0x01020304, 0x0A0B0C0D)
    assert raw == bytes([0, 1, 0, 3, 1, 2, 3, 4, 10, 11, 12, 13])
    assert len(raw) == HEADER_SIZE


def test_round_trip():
    raw = encode_header(TYPE_DATA, FLAG_FIN, 7, 65536)
    assert decode_header(raw) == Header(0, TYPE_DATA, FLAG_FIN, 7, 65536)


def test_decode_at_offset():
    raw = b"xx" + encode_header(TYPE_PING, FLAG_ACK, 0, 0xDEADBEEF)
    hdr = decode_header(raw, 2)
    assert hdr.type == TYPE_PING and hdr.flags == FLAG_ACK and hdr.length == 0xDEADBEEF


def test_decode_keeps_invalid_values_for_the_caller_to_judge():
    raw = bytes([1, 7, 0xFF, 0xFF]) + b"\xff" * 8
    hdr = decode_header(raw)
    assert hdr.version == 1 and hdr.type == 7 and hdr.flags == 0xFFFF
    assert hdr.stream_id == 0xFFFFFFFF and hdr.length == 0xFFFFFFFF


def test_decode_short_buffer_raises():
    with pytest.raises(struct.error):
        decode_header(b"\x00" * 11)


def test_encode_rejects_out_of_range():
    with pytest.raises(struct.error):
        encode_header(TYPE_DATA, 0, 1 << 32, 0)
    with pytest.raises(struct.error):
        encode_header(TYPE_DATA, 0, 1, -1)


def test_helpers():
    assert frame.data_header(3, 5) == encode_header(TYPE_DATA, 0, 3, 5)
    assert frame.window_update(3, 100, FLAG_FIN) == encode_header(TYPE_WINDOW_UPDATE, FLAG_FIN, 3, 100)
    assert frame.ping(9) == encode_header(TYPE_PING, FLAG_SYN, 0, 9)
    assert frame.ping(9, ack=True) == encode_header(TYPE_PING, FLAG_ACK, 0, 9)
    assert frame.go_away(2) == encode_header(TYPE_GO_AWAY, 0, 0, 2)


def test_str_names_type_and_flags():
    text = str(decode_header(encode_header(TYPE_WINDOW_UPDATE, FLAG_SYN | FLAG_RST | 0x40, 5, 0)))
    assert "WindowUpdate" in text and "SYN|RST|0x40" in text and "stream=5" in text
    assert frame.flag_names(0) == "0"
