"""Protobuf wire format of the few agent messages the shim uses.

The shim encodes its requests and decodes the replies by hand (kata_grpc.pb) instead of
importing the generated ``katapb`` modules: the protobuf runtime would cost every shim
private memory and start-up (bench/RESULTS.md, "kata-shim"), and these messages are
tiny.  The field numbers are those of proto/katapb/agent.proto (Kata 1.x):

  WriteStreamRequest   container_id=1 exec_id=2 data=3     -> WriteStreamResponse len=1 (uint32)
  ReadStreamRequest    container_id=1 exec_id=2 len=3      -> ReadStreamResponse data=1 (bytes)
  CloseStdinRequest    container_id=1 exec_id=2            -> Empty
  SignalProcessRequest container_id=1 exec_id=2 signal=3   -> Empty
  WaitProcessRequest   container_id=1 exec_id=2            -> WaitProcessResponse status=1 (int32)
  TtyWinResizeRequest  container_id=1 exec_id=2 row=3 column=4 -> Empty

Encoding follows proto3 (fields in number order, zero values omitted), so the
bytes equal ``katapb``'s ``SerializeToString()``; tests/shim/test_shim_pb.py checks it.
Decoding skips unknown fields, as protobuf does.
"""

from __future__ import annotations

from kata_grpc.pb import DecodeError, field, field_bytes, field_varint, fields, varint

__all__ = ["DecodeError", "fields", "varint", "process_prefix", "write_stream_request", "write_stream_header",
           "read_stream_request", "signal_request", "winsize_request", "read_stream_response",
           "write_stream_response", "wait_process_response"]


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


def read_stream_response(buf) -> memoryview:
    """ReadStreamResponse.data (a view into ``buf``; empty when absent)."""
    return field(buf, 1, 2, memoryview(b""))


def write_stream_response(buf) -> int:
    return field(buf, 1, 0, 0) & 0xFFFFFFFF


def wait_process_response(buf) -> int:
    value = field(buf, 1, 0, 0) & 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
