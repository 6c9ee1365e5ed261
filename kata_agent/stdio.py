"""Container process stdio: bounded output buffers, stdin writers, ptys.

OutputBuffer reads a pipe (or a pty master) into memory, up to ``limit``
bytes. When the buffer is full it stops watching the fd, so the kernel pipe
fills and the writer blocks: nothing is dropped. ``read(n)`` blocks until data
or EOF; after the writer side is closed, buffered data is still returned, then
EOF (b"").

A pty master reports EIO once every slave fd is closed: that is EOF too.

The end of a stream is the exit of its process, not the last close of the
writing end: a descendant (``sh -c 'sleep 300 & echo started'``) may hold that
end for ever. ``OutputBuffer.process_exited()`` delivers what the process left
in the pipe or pty, then EOF (see there).
"""

from __future__ import annotations

import array
import asyncio
import collections
import errno
import fcntl
import logging
import os
import socket
import struct
import termios

log = logging.getLogger("kata_agent.stdio")

F_SETPIPE_SZ = 1031
# After the process's exit, at most this much is read from its pty at once, past
# the buffer's bound. The kernel holds less than that in a pty (n_tty's 4 KiB
# plus at most 640 KiB of flip buffers, TTYB_DEFAULT_MEM_LIMIT), so it is all
# the process left; it also bounds the read when a descendant writes on.
PTY_EXIT_READ_MAX = 1 << 20


def bytes_in_pipe(fd: int) -> int:
    """Bytes waiting to be read from the pipe ``fd`` (FIONREAD)."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0]


def make_pipe(size: int = 0) -> tuple[int, int]:
    """A close-on-exec pipe; optionally resized with F_SETPIPE_SZ."""
    r, w = os.pipe2(os.O_CLOEXEC)
    if size:
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, size)
        except OSError as e:  # over pipe-max-size for a non-root agent
            log.debug("F_SETPIPE_SZ(%d) failed: %s", size, e)
    return r, w


class OutputBuffer:
    """One output stream of a process: ``fd`` (a pipe's read end or a pty master;
    None: no such stream, EOF at once), buffered up to ``limit`` bytes and read
    from the kernel ``chunk`` bytes at a time. The fd is closed at EOF when
    ``owns_fd`` (a pty master is owned by its Process)."""

    def __init__(self, fd: int | None, limit: int, chunk: int = 65536, *,
                 is_pty: bool = False, owns_fd: bool = True, name: str = "") -> None:
        self.fd = fd
        self.limit = max(1, limit)
        self.chunk = max(1, chunk)
        self.is_pty = is_pty
        self.owns_fd = owns_fd
        self.name = name
        self._chunks: collections.deque[bytes] = collections.deque()
        self._head_off = 0
        self._size = 0
        self._eof = fd is None
        self._watching = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event = asyncio.Event()
        if self._eof:
            self._event.set()
        self.total_read = 0
        # Once the process has exited: bytes of its output still in the pipe.
        self._owed: int | None = None

    @property
    def eof(self) -> bool:
        """True once the writer side is closed (there may still be buffered data)."""
        return self._eof

    @property
    def drained(self) -> bool:
        """EOF seen and every byte handed out."""
        return self._eof and self._size == 0

    @property
    def buffered(self) -> int:
        return self._size

    def start(self) -> None:
        if self._eof or self._closed:
            return
        self._loop = asyncio.get_running_loop()
        os.set_blocking(self.fd, False)
        self._watch()

    def _watch(self) -> None:
        if not self._watching and not self._eof and not self._closed and self._loop is not None:
            self._loop.add_reader(self.fd, self._on_readable)
            self._watching = True

    def _unwatch(self) -> None:
        if self._watching:
            self._loop.remove_reader(self.fd)
            self._watching = False

    def _on_readable(self) -> None:
        space = self.limit - self._size
        if space <= 0:
            self._unwatch()
            return
        want = min(self.chunk, space) if self._owed is None else min(self.chunk, space, self._owed)
        try:
            data = self._read_fd(want)
        except BlockingIOError:
            return
        if not data:
            self._set_eof()
            return
        self._append(data)
        if self._owed is not None:
            self._owed -= len(data)
            if self._owed <= 0:
                self._set_eof()
                return
        if self._size >= self.limit:
            self._unwatch()

    def _read_fd(self, n: int) -> bytes:
        """One read(2) of up to n bytes; b"" at the end of the stream (EOF, or EIO
        from a pty whose slave is closed). BlockingIOError when nothing is there."""
        try:
            return os.read(self.fd, n)
        except BlockingIOError:
            raise
        except OSError as e:
            if not (self.is_pty and e.errno == errno.EIO):
                log.warning("%s: read error %s; treating as EOF", self.name, e)
            return b""

    def _append(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        self.total_read += len(data)
        self._event.set()

    def process_exited(self) -> None:
        """The process writing this stream has exited: deliver what it left, then EOF.

        Its last writes are all in the pipe or pty by the time its exit is seen,
        but a descendant may still hold the writing end, so EOF would never come
        by itself. Output written after this point is the descendant's, not the
        process's, and is never delivered.

        * Pipe: the bytes the pipe holds now (FIONREAD) are still read, under the
          buffer's bound, as the reader makes room; then EOF, and the read end is
          closed, so a later writer gets EPIPE/SIGPIPE instead of blocking.
        * Pty: read at once, past the bound, until nothing is left (EAGAIN; EIO
          when no slave is open), at most PTY_EXIT_READ_MAX bytes; then EOF (the
          Process closes the master). A read also runs the kernel's pending
          flip-buffer work, so output still in flight is included.

        The Kata 1.x agent ends a terminal's reads when its process exits (its
        reaper wakes the terminal's reader, for a terminal inherited by
        children); this does it for pipes too. Idempotent; a no-op after EOF.
        """
        if self._eof or self._closed:
            return
        if self.is_pty:
            self._read_pty_tail()
            self._set_eof()
            return
        try:
            self._owed = bytes_in_pipe(self.fd)
        except OSError as e:  # not a pipe after all: end it here rather than never
            log.warning("%s: FIONREAD failed (%s); ending the stream at the exit", self.name, e)
            self._owed = 0
        if self._owed <= 0:
            self._set_eof()
        elif self._size < self.limit:
            self._watch()

    def _read_pty_tail(self) -> None:
        """Read what the pty holds now (at most PTY_EXIT_READ_MAX bytes), ignoring the bound."""
        left = PTY_EXIT_READ_MAX
        while left > 0:
            try:
                data = self._read_fd(min(self.chunk, left))
            except BlockingIOError:
                return
            if not data:
                return
            self._append(data)
            left -= len(data)

    def _set_eof(self) -> None:
        self._eof = True
        self._unwatch()
        self._close_fd()
        self._event.set()

    def _close_fd(self) -> None:
        if self.fd is not None and self.owns_fd and not self._closed:
            try:
                os.close(self.fd)
            except OSError:
                pass
        self._closed = True

    async def read(self, n: int) -> bytes:
        """Up to n bytes; waits for data. b"" means EOF (writer closed, all drained)."""
        while True:
            if self._size:
                return self._take(n)
            if self._eof:
                return b""
            self._event.clear()
            await self._event.wait()

    def _take(self, n: int) -> bytes:
        # The head chunk is consumed through an offset, so a small read of a
        # big chunk copies only what it returns.
        out = []
        got = 0
        chunks = self._chunks
        while chunks and got < n:
            c = chunks[0]
            avail = len(c) - self._head_off
            want = n - got
            if avail <= want:
                out.append(c if not self._head_off else c[self._head_off:])
                chunks.popleft()
                self._head_off = 0
                got += avail
            else:
                out.append(c[self._head_off:self._head_off + want])
                self._head_off += want
                got += want
        self._size -= got
        # Resume reading at half the bound, not at every byte taken: small
        # reads of a full buffer would otherwise churn the loop's watchers.
        if self._size <= self.limit // 2 and not self._eof:
            self._watch()
        if not self._size and not self._eof:
            self._event.clear()
        return out[0] if len(out) == 1 else b"".join(out)

    def close(self) -> None:
        """Stop reading, drop buffered data and wake readers (they see EOF)."""
        self._unwatch()
        self._close_fd()
        self._chunks.clear()
        self._head_off = 0
        self._size = 0
        self._eof = True
        self._event.set()


class StdinWriter:
    """Writes to a process's stdin pipe (or pty master) without blocking the loop."""

    def __init__(self, fd: int, *, is_pty: bool = False, owns_fd: bool = True) -> None:
        self.fd = fd
        self.is_pty = is_pty
        self.owns_fd = owns_fd
        self.closed = False
        self._lock = asyncio.Lock()
        # While a write waits for room: (its loop, the event that wakes it).
        self._waiting: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        os.set_blocking(fd, False)

    async def write(self, data: bytes) -> int:
        """Write all of data (waiting while the pipe is full); returns len(data).

        Raises BrokenPipeError when the reader is gone, ValueError when closed
        (before or during the write)."""
        async with self._lock:
            if self.closed:
                raise ValueError("stdin is closed")
            view = memoryview(data)
            while view:
                if self.closed:
                    raise ValueError("stdin was closed during the write")
                try:
                    n = os.write(self.fd, view)
                    view = view[n:]
                    continue
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError as e:
                    if e.errno in (errno.EPIPE, errno.EIO):
                        raise BrokenPipeError(e.errno, "the process no longer reads its stdin") from e
                    raise
                await self._writable()
            return len(data)

    async def _writable(self) -> None:
        """Wait until the fd takes data again, or abort() is called."""
        loop = asyncio.get_running_loop()
        ev = asyncio.Event()
        self._waiting = (loop, ev)
        loop.add_writer(self.fd, ev.set)
        try:
            await ev.wait()
        finally:
            self._stop_waiting()

    def _stop_waiting(self) -> None:
        """Remove the fd's writer watch (before the fd is closed) and wake the write."""
        if self._waiting is not None:
            loop, ev = self._waiting
            self._waiting = None
            loop.remove_writer(self.fd)
            ev.set()

    async def close(self) -> None:
        """End of input: close the pipe, or send VEOF on a terminal."""
        async with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.is_pty:
                try:
                    veof = termios.tcgetattr(self.fd)[6][termios.VEOF]
                    if isinstance(veof, int):
                        veof = bytes([veof])
                    os.write(self.fd, veof or b"\x04")
                except OSError:
                    pass
            elif self.owns_fd:
                os.close(self.fd)

    def abort(self) -> None:
        """Closed at once (the process is gone): a write in progress raises ValueError."""
        if not self.closed:
            self.closed = True
            self._stop_waiting()
            if self.owns_fd and not self.is_pty:
                try:
                    os.close(self.fd)
                except OSError:
                    pass


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def set_onlcr(fd: int) -> None:
    """Output CR-LF translation on, like the original agent does for consoles."""
    attrs = termios.tcgetattr(fd)
    attrs[1] |= termios.ONLCR
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


class ConsoleSocket:
    """A listening unix socket for runc's --console-socket; yields the pty master."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(path)
        self.sock.listen(1)
        self.sock.setblocking(False)

    async def receive_master(self) -> int:
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(self.sock)
        try:
            conn.setblocking(False)
            ev = asyncio.Event()
            while True:
                try:
                    fds = array.array("i")
                    msg, ancdata, flags, _ = conn.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize * 4))
                except (BlockingIOError, InterruptedError):
                    ev.clear()
                    loop.add_reader(conn.fileno(), ev.set)
                    try:
                        await ev.wait()
                    finally:
                        loop.remove_reader(conn.fileno())
                    continue
                got = []
                for level, typ, data in ancdata:
                    if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                        a = array.array("i")
                        a.frombytes(data[: len(data) - (len(data) % a.itemsize)])
                        got.extend(a)
                if got:
                    for extra in got[1:]:
                        os.close(extra)
                    os.set_inheritable(got[0], False)
                    return got[0]
                if not msg:
                    raise ConnectionError("runc closed the console socket without sending a terminal")
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
