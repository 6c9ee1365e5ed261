"""kata_grpc.aio starts each call at once, in the loop iteration that received its request: a
handler that does not wait is answered there (no task), one that waits continues as a task from
where it waited, with its values, its exceptions, its deadline and its cancellation intact.

The connection's pieces are driven by hand here (kata_grpc.h2's client core on one side,
kata_grpc.aio's per-connection state on the other, bytes carried between them) so that "without
a loop iteration" is what the test observes: nothing here awaits between the request and its
answer unless the test says so."""

from __future__ import annotations

import asyncio

import pytest

from kata_grpc import h2, hpack
from kata_grpc.aio import _Served
from kata_grpc.protocol import DEADLINE_EXCEEDED, UNKNOWN, RpcError


class Writer:
    """What the connection writes, kept."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.writes = 0

    def write(self, data) -> None:
        self.data += data
        self.writes += 1

    def writelines(self, segments) -> None:
        for segment in segments:
            self.data += segment
        self.writes += 1

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    def take(self) -> bytes:
        data, self.data = bytes(self.data), bytearray()
        return data


class Link:
    """Our client core and one served connection, bytes moved between them by ``deliver``."""

    def __init__(self, handlers: dict) -> None:
        self.client = h2.Connection()
        self.writer = Writer()
        self.served = _Served(self.writer, handlers, 1 << 20)

    def call(self, path: str, message: bytes = b"", timeout: bytes | None = None) -> h2.Call:
        block = h2.request_headers(path.encode())
        if timeout is not None:
            block += hpack.encode_plain(((b"grpc-timeout", timeout),))
        return self.client.request(block, message)

    def deliver(self) -> None:
        """The client's bytes to the server (whose calls start right there), then the server's
        answers back to the client."""
        self.served.handle(self.served.conn.receive(b"".join(self.client.output())))
        self.served.flush()
        self.client.receive(self.writer.take())


def hanging():
    """A handler that waits until cancelled, and the list its cancellations are recorded in."""
    cancelled = []

    async def hang(request: bytes) -> bytes:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return b""

    return cancelled, hang


async def test_handlers_that_do_not_wait_are_answered_at_once_in_one_write():
    async def check(request: bytes) -> bytes:
        return b"SERVING:" + request

    link = Link({"/grpc.Health/Check": check})
    calls = [link.call("/grpc.Health/Check", bytes([i])) for i in range(3)]
    link.deliver()
    assert [bytes(c.result()) for c in calls] == [b"SERVING:\x00", b"SERVING:\x01", b"SERVING:\x02"]
    assert not link.served.tasks and not link.served.deadlines
    assert link.writer.writes == 1  # SETTINGS and the three answers went out together


async def test_a_waiting_handler_continues_as_a_task_with_what_it_waited_for():
    late: asyncio.Future = asyncio.get_running_loop().create_future()
    failing: asyncio.Future = asyncio.get_running_loop().create_future()
    steps = []

    async def waits(request: bytes) -> bytes:
        steps.append("first step")
        value = await late
        await asyncio.sleep(0)  # a bare yield too
        return value + request

    async def fails(request: bytes) -> bytes:
        await failing
        return b"never"

    link = Link({"/x/Waits": waits, "/x/Fails": fails})
    waiting, failed = link.call("/x/Waits", b"!"), link.call("/x/Fails")
    link.deliver()
    assert steps == ["first step"] and len(link.served.tasks) == 2 and not waiting.done
    late.set_result(b"late")
    failing.set_exception(OSError("gone"))
    for _ in range(5):
        await asyncio.sleep(0)
    link.client.receive(link.writer.take())
    assert bytes(waiting.result()) == b"late!"
    with pytest.raises(RpcError) as e:
        failed.result()
    assert (e.value.code, e.value.message) == (UNKNOWN, "gone")
    assert not link.served.tasks


async def test_the_deadline_of_a_waiting_call_answers_deadline_exceeded():
    cancelled, hang = hanging()

    link = Link({"/x/Hang": hang})
    call = link.call("/x/Hang", timeout=b"20m")
    link.deliver()
    assert len(link.served.deadlines) == 1
    await asyncio.sleep(0.2)
    link.client.receive(link.writer.take())
    with pytest.raises(RpcError) as e:
        call.result()
    assert e.value.code == DEADLINE_EXCEEDED and cancelled == [True]
    assert not link.served.tasks and not link.served.deadlines and not link.served.expired


@pytest.mark.parametrize("after_first_task_step", [False, True])
async def test_stopping_cancels_a_waiting_call_before_or_after_its_task_ran(after_first_task_step):
    cancelled, hang = hanging()

    link = Link({"/x/Hang": hang})
    link.call("/x/Hang", timeout=b"10S")
    link.deliver()
    if after_first_task_step:
        await asyncio.sleep(0)
    await link.served.stop()
    assert cancelled == [True]
    assert not link.served.tasks and not link.served.deadlines  # the deadline timer went with it
