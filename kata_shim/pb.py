"""Protobuf wire format of the few agent messages the shim uses.

The shim encodes its requests and decodes the replies by hand instead of
importing the generated ``katapb`` modules: the protobuf runtime costs about
6 MiB of private memory and 20 ms of start-up per shim, and these messages are
tiny.  The field numbers are those of proto/katapb/agent.proto (Kata 1.x):

  WriteStreamRequest   container_id=1 exec_id=2 data=3     -> WriteStreamResponse len=1 (uint32)
  ReadStreamRequest    container_id=1 exec_id=2 len=3      -> ReadStreamResponse data=1 (bytes)
  CloseStdinRequest    container_id=1 exec_id=2            -> Empty
  SignalProcessRequest container_id=1 exec_id=2 signal=3   -> Empty
  WaitProcessRequest   container_id=1 exec_id=2            -> WaitProcessResponse status=1 (int32)
  TtyWinResizeRequest  container_id=1 exec_id=2 row=3 column=4 -> Empty

Encoding follows proto3 (fields in number order, zero values omitted), so the
bytes equal ``katapb``'s ``SerializeToString()``; tests/shim/test_pb.py checks it.
Decoding skips unknown fields, as protobuf does.
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


def _key(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def field_bytes(field: int, value) -> bytes:
    """A length-delimited field (omitted when empty, as proto3 does)."""
    if not value:
        return b""
    return _key(field, 2) + varint(len(value)) + bytes(value)


def field_varint(field: int, value: int) -> bytes:
    if not value:
        return b""
    return _key(field, 0) + varint(value)


def process_prefix(container_id: str, exec_id: str) -> bytes:
    """Fields 1 and 2 shared by every request about one process."""
    return field_bytes(1, container_id.encode()) + field_bytes(2, exec_id.encode())


def write_stream_request(prefix: bytes, data) -> bytes:
    if not len(data):
        return prefix
    return b"".join((prefix, b"\x1a", varint(len(data)), data))


def write_stream_header(prefix: bytes, length: int) -> bytes:
    """A WriteStreamRequest up to (not including) its ``length`` data bytes."""
    if not length:
        return prefix
    return b"".join((prefix, b"\x1a", varint(length)))


def read_stream_request(prefix: bytes, length: int) -> bytes:
    return prefix + field_varint(3, length)


def signal_request(prefix: bytes, signum: int) -> bytes:
    return prefix + field_varint(3, signum)


def winsize_request(prefix: bytes, rows: int, columns: int) -> bytes:
    return prefix + field_varint(3, rows) + field_varint(4, columns)


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


def _field(buf, number: int, wire_type: int, default):
    result = default
    for num, wt, value in fields(buf):
        if num == number:
            if wt != wire_type:
                raise DecodeError(f"field {number} has wire type {wt}")
            result = value  # last one wins, as in protobuf
    return result


def read_stream_response(buf) -> memoryview:
    """ReadStreamResponse.data (a view into ``buf``; empty when absent)."""
    return _field(buf, 1, 2, memoryview(b""))


def write_stream_response(buf) -> int:
    return _field(buf, 1, 0, 0) & 0xFFFFFFFF


def wait_process_response(buf) -> int:
    value = _field(buf, 1, 0, 0) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
