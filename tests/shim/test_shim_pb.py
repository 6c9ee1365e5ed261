"""The shim's hand-written protobuf codec equals katapb (the generated agent API) byte for byte."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from katapb import agent_pb2
from kata_shim import pb

ids = st.text(min_size=0, max_size=80)
u32 = st.integers(min_value=0, max_value=2**32 - 1)


@settings(max_examples=200, deadline=None)
@given(cid=ids, eid=ids, data=st.binary(max_size=3000))
def test_write_stream_request(cid, eid, data):
    ours = pb.write_stream_request(pb.process_prefix(cid, eid), data)
    assert ours == agent_pb2.WriteStreamRequest(container_id=cid, exec_id=eid, data=data).SerializeToString()


@settings(max_examples=200, deadline=None)
@given(cid=ids, eid=ids, n=u32)
def test_read_stream_and_signal_requests(cid, eid, n):
    prefix = pb.process_prefix(cid, eid)
    assert pb.read_stream_request(prefix, n) == agent_pb2.ReadStreamRequest(
        container_id=cid, exec_id=eid, len=n).SerializeToString()
    assert pb.signal_request(prefix, n) == agent_pb2.SignalProcessRequest(
        container_id=cid, exec_id=eid, signal=n).SerializeToString()
    assert prefix == agent_pb2.WaitProcessRequest(container_id=cid, exec_id=eid).SerializeToString()
    assert prefix == agent_pb2.CloseStdinRequest(container_id=cid, exec_id=eid).SerializeToString()


@settings(max_examples=200, deadline=None)
@given(cid=ids, eid=ids, rows=u32, cols=u32)
def test_winsize_request(cid, eid, rows, cols):
    assert pb.winsize_request(pb.process_prefix(cid, eid), rows, cols) == agent_pb2.TtyWinResizeRequest(
        container_id=cid, exec_id=eid, row=rows, column=cols).SerializeToString()


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=5000), n=u32, status=st.integers(min_value=-2**31, max_value=2**31 - 1))
def test_responses(data, n, status):
    assert bytes(pb.read_stream_response(agent_pb2.ReadStreamResponse(data=data).SerializeToString())) == data
    assert pb.write_stream_response(agent_pb2.WriteStreamResponse(len=n).SerializeToString()) == n
    assert pb.wait_process_response(agent_pb2.WaitProcessResponse(status=status).SerializeToString()) == status


def test_unknown_fields_are_skipped():
    # field 9 varint, field 10 fixed64, field 11 bytes, field 12 fixed32, then data
    extra = b"\x48\x05" + b"\x51" + b"\x00" * 8 + b"\x5a\x02hi" + b"\x65" + b"\x00" * 4
    msg = extra + agent_pb2.ReadStreamResponse(data=b"xyz").SerializeToString()
    assert bytes(pb.read_stream_response(msg)) == b"xyz"
    assert bytes(pb.read_stream_response(b"")) == b""
    assert pb.wait_process_response(b"") == 0


@pytest.mark.parametrize("bad", [b"\x0a\x05ab", b"\x08", b"\x0b", b"\x00\x01", b"\x09\x00"])
def test_malformed(bad):
    with pytest.raises(pb.DecodeError):
        pb.read_stream_response(bad)


def test_wrong_wire_type():
    with pytest.raises(pb.DecodeError):
        pb.read_stream_response(b"\x08\x01")  # field 1 as a varint


def test_the_shim_loads_no_protobuf_enum_or_socket_module():
    """kata-shim starts for every container process, on the path to its first output byte: what
    its relay imports stays small (no protobuf: its requests are encoded by hand; no enum: the
    signal and socket modules' Python layers are replaced by their C modules)."""
    from tests.support.processes import python_prints

    code = ("import sys; before = set(sys.modules); import kata_shim.cli, kata_shim.shim, kata_shim.sentinel; "
            "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in "
            "('google', 'katapb', 'grpc', 'enum', 'signal', 'socket', 'selectors', 'threading', 'asyncio')))")
    assert python_prints(code) == "[]"
