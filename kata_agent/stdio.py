"""Container process stdio: bounded output buffers, stdin writers, ptys.

OutputBuffer reads a pipe (or a pty master) into memory, up to ``limit``
bytes. When the buffer is full it stops watching the fd, so the kernel pipe
fills and the writer blocks: nothing is dropped. ``read(n)`` blocks until data
or EOF; after the writer side is closed (process exit), buffered data is still
returned, then EOF (b"").

A pty master reports EIO once every slave fd is closed: that is EOF too.
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
import termios

log = logging.getLogger("kata_agent.stdio")

F_SETPIPE_SZ = 1031


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
        if not self._watching and not self._eof and not self._closed:
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
        try:
            data = os.read(self.fd, min(self.chunk, space))
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            if not (self.is_pty and e.errno == errno.EIO):
                log.warning("%s: read error %s; treating as EOF", self.name, e)
            data = b""
        if not data:
            self._set_eof()
            return
        self._chunks.append(data)
        self._size += len(data)
        self.total_read += len(data)
        self._event.set()
        if self._size >= self.limit:
            self._unwatch()

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
        os.set_blocking(fd, False)

    async def write(self, data: bytes) -> int:
        """Write all of data (waiting while the pipe is full); returns len(data).

        Raises BrokenPipeError when the reader is gone, ValueError when closed."""
        async with self._lock:
            if self.closed:
                raise ValueError("stdin is closed")
            loop = asyncio.get_running_loop()
            view = memoryview(data)
            ev = asyncio.Event()
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
                ev.clear()
                loop.add_writer(self.fd, ev.set)
                try:
                    await ev.wait()
                finally:
                    loop.remove_writer(self.fd)
            return len(data)

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
        if not self.closed:
            self.closed = True
            if self.owns_fd and not self.is_pty:
                try:
                    os.close(self.fd)
                except OSError:
                    pass


def set_winsize(fd: int, rows: int, cols: int) -> None:
    import struct
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
