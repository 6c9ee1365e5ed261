"""kata-shim's pump logic without any agent: partial acceptance, EOF, EPIPE, back-pressure."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given, settings, strategies as st

from kata_shim import pumps


class FakeStdin:
    """WriteStdin that accepts a scripted number of bytes per call."""

    headroom = 0

    def __init__(self, accept, headroom=0):
        self.headroom = headroom
        self.accept = accept  # callable(len) -> accepted count
        self.received = bytearray()
        self.calls = 0
        self.closed = False

    def write(self, buf, start, end):
        assert not self.closed
        assert start >= self.headroom
        buf[:start] = b"\xee" * start  # the transport may scribble in front of the data
        self.calls += 1
        n = self.accept(end - start)
        self.received += bytes(buf[start:start + max(0, min(n, end - start))])
        return n

    def close(self):
        self.closed = True


def feed(data: bytes):
    r, w = os.pipe()

    def writer():
        with os.fdopen(w, "wb") as f:
            f.write(data)

    t = threading.Thread(target=writer)
    t.start()
    return r, t


@settings(max_examples=60, deadline=None)
@given(data=st.binary(min_size=0, max_size=200_000), seed=st.integers(0, 2**32))
def test_partial_acceptance_is_resent(data, seed):
    import random
    rnd = random.Random(seed)
    fake = FakeStdin(lambda n: rnd.randint(0, n), headroom=17)  # sometimes 0, sometimes everything
    r, t = feed(data)
    try:
        assert pumps.pump_stdin(r, fake.write, fake.close, 4096, headroom=17) == len(data)
    finally:
        t.join()
        os.close(r)
    assert fake.received == data and fake.closed


def test_one_byte_at_a_time():
    fake = FakeStdin(lambda n: 1)
    r, t = feed(b"abcdef" * 100)
    pumps.pump_stdin(r, fake.write, fake.close, 64)
    t.join()
    os.close(r)
    assert fake.received == b"abcdef" * 100 and fake.calls == 600


def test_over_acceptance_is_clamped():
    fake = FakeStdin(lambda n: n + 10)
    r, t = feed(b"x" * 10000)
    assert pumps.pump_stdin(r, fake.write, fake.close, 4096) == 10000
    t.join()
    os.close(r)


def test_zero_acceptance_backs_off_instead_of_spinning():
    answers = iter([0] * 8 + [10**9] * 100)
    fake = FakeStdin(lambda n: next(answers))
    r, t = feed(b"hello")
    t0 = time.monotonic()
    pumps.pump_stdin(r, fake.write, fake.close, 64)
    t.join()
    os.close(r)
    assert fake.received == b"hello" and fake.calls == 9
    assert time.monotonic() - t0 > 0.1  # 8 pauses of 2..128 ms


def test_eof_closes_stdin_and_bad_fd_counts_as_eof():
    fake = FakeStdin(lambda n: n)
    r, w = os.pipe()
    os.close(w)
    pumps.pump_stdin(r, fake.write, fake.close, 64)
    os.close(r)
    assert fake.closed and fake.calls == 0
    fake = FakeStdin(lambda n: n)
    pumps.pump_stdin(r, fake.write, fake.close, 64)  # r is closed now: EBADF
    assert fake.closed


def test_write_errors_propagate():
    def write(buf, start, end):
        raise RuntimeError("agent said no")

    r, t = feed(b"data")
    with pytest.raises(RuntimeError):
        pumps.pump_stdin(r, write, lambda: None, 64)
    t.join()
    os.close(r)


def chunks_reader(chunks):
    it = iter(chunks)
    calls = []

    def read(n):
        calls.append(n)
        return next(it, None)

    return read, calls


def test_output_copies_until_eof_and_skips_empty_replies():
    read, calls = chunks_reader([b"ab", b"", memoryview(b"cd"), b"e"])
    r, w = os.pipe()
    progress = [0]
    assert pumps.pump_output(read, w, 1 << 20, progress=progress) == 5
    os.close(w)
    assert os.read(r, 100) == b"abcde" and progress == [5]
    assert calls == [1 << 20] * 5
    os.close(r)


def test_output_keeps_draining_after_epipe():
    read, calls = chunks_reader([b"x" * 100] * 50)
    r, w = os.pipe()
    os.close(r)

    class Log:
        warnings = []

        def warning(self, msg, **kw):
            self.warnings.append(msg)

    log = Log()
    assert pumps.pump_output(read, w, 100, log=log, name="stdout") == 5000
    os.close(w)
    assert len(calls) == 51 and len(log.warnings) == 1


def test_output_back_pressure_one_chunk_at_a_time():
    """The next read is asked for only once the previous chunk is written: a blocked
    reader of the shim stops the reads (nothing is buffered beyond one chunk)."""
    chunk = b"z" * (256 << 10)  # bigger than a pipe buffer
    calls = []

    def read(n):
        calls.append(time.monotonic())
        return chunk if len(calls) <= 8 else None

    r, w = os.pipe()
    t = threading.Thread(target=pumps.pump_output, args=(read, w, len(chunk)))
    t.start()
    time.sleep(0.3)
    assert len(calls) == 1  # blocked writing the first chunk: no second read
    got = 0
    while got < len(chunk) * 8:
        got += len(os.read(r, 1 << 20))
    t.join(5)
    assert not t.is_alive() and len(calls) == 9
    os.close(r)
    os.close(w)


def test_write_all_handles_nonblocking_fds():
    r, w = os.pipe()
    os.set_blocking(w, False)
    data = os.urandom(1 << 20)
    out = bytearray()

    def reader():
        while len(out) < len(data):
            out.extend(os.read(r, 65536))
            time.sleep(0.001)

    t = threading.Thread(target=reader)
    t.start()
    assert pumps.write_all(w, data)
    t.join()
    assert out == data
    os.close(r)
    os.close(w)
