"""Protobuf wire format by hand: what the small agent messages of kata-shim and kata-runtime need.

Encoding follows proto3 (fields in number order, zero values omitted), so a message
built from these helpers, field by field in number order, equals the generated
module's ``SerializeToString()`` (kata_oci.encode_message builds the OCI messages on them). Decoding skips unknown fields, as protobuf does.
No imports: the protobuf runtime costs megabytes of memory and tens of milliseconds
of start-up, which a short-lived command or a per-process relay should not pay for
a message of two strings.
"""

from __future__ import annotations


class DecodeError(Exception):
    pass


def varint(value: int) -> bytes:
    if value < 0:
        value &= (1 << 64) - 1  # negative int32/int64: ten bytes, two's complement
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(field: int, wire_type: int) -> bytes:
    """A field's key: its number and wire type (0 varint, 2 length-delimited)."""
    return varint((field << 3) | wire_type)


def length_delimited(field: int, value) -> bytes:
    """A length-delimited field written even when empty: a repeated element, a map entry's
    key or value, or a sub-message that is present (``value``: its encoding)."""
    return key(field, 2) + varint(len(value)) + bytes(value)


def field_bytes(field: int, value) -> bytes:
    """A length-delimited field (omitted when empty, as proto3 does)."""
    if not value:
        return b""
    return length_delimited(field, value)


def field_str(field: int, value: str) -> bytes:
    """A string field (UTF-8; omitted when empty)."""
    return field_bytes(field, value.encode())


def field_strs(field: int, values) -> bytes:
    """A repeated string field: one entry per value, empty ones included (protobuf keeps them)."""
    return b"".join(length_delimited(field, v.encode()) for v in values)


def field_varint(field: int, value: int) -> bytes:
    if not value:
        return b""
    return key(field, 0) + varint(value)


def _read_varint(buf, pos: int) -> tuple[int, int]:
    value = 0
    shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise DecodeError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint too long")


def fields(buf):
    """Yield (field number, wire type, value) of a message; values of type 2 are memoryviews."""
    view = memoryview(buf)
    pos = 0
    n = len(view)
    while pos < n:
        key, pos = _read_varint(view, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, pos = _read_varint(view, pos)
        elif wire_type == 2:
            length, pos = _read_varint(view, pos)
            if pos + length > n:
                raise DecodeError("truncated field")
            value = view[pos:pos + length]
            pos += length
        elif wire_type == 1:
            if pos + 8 > n:
                raise DecodeError("truncated field")
            value = int.from_bytes(view[pos:pos + 8], "little")
            pos += 8
        elif wire_type == 5:
            if pos + 4 > n:
                raise DecodeError("truncated field")
            value = int.from_bytes(view[pos:pos + 4], "little")
            pos += 4
        else:
            raise DecodeError(f"unsupported wire type {wire_type}")
        if number == 0:
            raise DecodeError("field number 0")
        yield number, wire_type, value


def field(buf, number: int, wire_type: int, default):
    """The value of field ``number`` of the message in ``buf`` (the last one wins, as in
    protobuf), or ``default`` when absent; DecodeError if it has another wire type."""
    result = default
    for num, wt, value in fields(buf):
        if num == number:
            if wt != wire_type:
                raise DecodeError(f"field {number} has wire type {wt}")
            result = value
    return result
