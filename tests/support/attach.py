"""A ``ctr`` process the test stays attached to: piped, or inside a pty the test opens.

    a = Attached.spawn(argv)            # stdout/stderr drained by threads into bytearrays
    a.close_stdin(); rc = a.wait(30)    # TimeoutError (ctr killed) when it does not exit in time
    t = PtyAttached.spawn(argv, rows=33, cols=101)
    t.expect(b"ready", 10); t.write(b"hello\\r"); t.wait(10)

Every wait is bounded; on timeout the ctr process (only it: we started it, we know its pid) is
killed and TimeoutError is raised with what it printed so far.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import termios
import threading
import time


def _drain(stream, sink: bytearray) -> None:
    for chunk in iter(lambda: stream.read1(1 << 16), b""):
        sink.extend(chunk)


class Attached:
    """``ctr run``/``ctr task exec`` with pipes; ``out``/``err`` grow while it runs."""

    def __init__(self, popen: subprocess.Popen):
        self.popen = popen
        self.out, self.err = bytearray(), bytearray()
        self._threads = [threading.Thread(target=_drain, args=(s, b), daemon=True)
                         for s, b in ((popen.stdout, self.out), (popen.stderr, self.err))]
        for t in self._threads:
            t.start()

    @classmethod
    def spawn(cls, argv: list[str], *, stdin: bool = True, env: dict | None = None) -> "Attached":
        """Start ``argv`` with stdout/stderr piped; stdin piped (``stdin``) or /dev/null."""
        return cls(subprocess.Popen(argv, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))

    def write(self, data: bytes) -> None:
        self.popen.stdin.write(data)
        self.popen.stdin.flush()

    def close_stdin(self) -> None:
        if self.popen.stdin and not self.popen.stdin.closed:
            self.popen.stdin.close()

    def wait_output(self, needle: bytes, timeout: float) -> None:
        """Until ``needle`` appears in stdout; TimeoutError (ctr killed) otherwise."""
        deadline = time.monotonic() + timeout
        while needle not in self.out:
            if time.monotonic() > deadline or self.popen.poll() is not None and needle not in self.out:
                self.kill()
                raise TimeoutError(f"{needle!r} not in output: {bytes(self.out[-500:])!r} {bytes(self.err)!r}")
            time.sleep(0.02)

    def wait(self, timeout: float) -> int:
        """ctr's exit code, once stdout and stderr are drained; TimeoutError (ctr killed) otherwise."""
        try:
            rc = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise TimeoutError(f"ctr still running after {timeout}s: out={bytes(self.out[-500:])!r} "
                               f"err={bytes(self.err[-2000:])!r}") from None
        for t in self._threads:
            t.join(timeout)
        self.close_stdin()
        return rc

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self.close_stdin()


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyAttached:
    """ctr with its stdin/stdout/stderr on a new pty's slave (its controlling terminal); the test
    holds the master: what it writes is typed, what it reads is the screen."""

    def __init__(self, popen: subprocess.Popen, master: int):
        self.popen, self.master = popen, master
        self.screen = bytearray()

    @classmethod
    def spawn(cls, argv: list[str], *, rows: int = 24, cols: int = 80) -> "PtyAttached":
        """Open a pty of ``rows`` x ``cols`` and start ``argv`` in a new session on it."""
        master, slave = os.openpty()
        set_winsize(slave, rows, cols)

        def make_controlling() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        try:
            popen = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=make_controlling)
        finally:
            os.close(slave)
        return cls(popen, master)

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def _read_some(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: every slave end closed
            return False
        self.screen.extend(chunk)
        return bool(chunk)

    def expect(self, needle: bytes, timeout: float) -> None:
        """Read the screen until ``needle`` shows; TimeoutError (ctr killed) otherwise."""
        deadline = time.monotonic() + timeout
        while needle not in self.screen:
            left = deadline - time.monotonic()
            if left <= 0 or not self._read_some(min(left, 0.2)):
                if needle in self.screen:
                    return
                self.kill()
                raise TimeoutError(f"{needle!r} not on screen: {bytes(self.screen[-1000:])!r}")

    def wait(self, timeout: float) -> int:
        """ctr's exit code (the screen read to the end); TimeoutError (ctr killed) otherwise."""
        deadline = time.monotonic() + timeout
        while self.popen.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"ctr --tty still running: {bytes(self.screen[-1000:])!r}")
            self._read_some(0.05)
        while self._read_some(0.05) and select.select([self.master], [], [], 0)[0]:
            pass
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def close(self) -> None:
        self.kill()
        try:
            os.close(self.master)
        except OSError:
            pass
