"""The stdio pumps of kata-shim, independent of the transport (they take callables).

* :func:`pump_output` copies a process output stream (ReadStdout/ReadStderr) to
  one of the shim's own fds.  It asks for the next chunk only once the previous
  one is fully written, so a slow reader of the shim slows the container down
  (the agent's bounded buffer fills, then the container's pipe): nothing is
  dropped and the shim holds at most one chunk.  If the reader disappears
  (EPIPE) the stream is still drained, and discarded, so the process never
  blocks on a pipe nobody will read.
* :func:`pump_stdin` copies the shim's stdin to WriteStdin, sending again
  whatever part of a chunk the agent did not accept, and calls CloseStdin at
  EOF.
"""

from __future__ import annotations

import errno
import os
import select
import time


def write_all(fd: int, data) -> bool:
    """Write every byte of ``data`` to ``fd`` (blocking).  False when the reader is gone."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:  # somebody made the pipe non-blocking: wait for room
            select.select((), (fd,), ())
            continue
        except BrokenPipeError:
            return False
        except OSError as e:
            if e.errno in (errno.EIO, errno.EBADF, errno.EINVAL):
                return False  # hung-up terminal, closed or unusable fd: nobody to deliver to
            raise
        view = view[n:]
    return True


def pump_output(read, fd: int, chunk: int, *, log=None, name: str = "", progress=None) -> int:
    """Copy ``read(chunk)`` results to ``fd`` until ``read`` returns None (EOF).

    Returns the number of bytes relayed.  ``progress``, when given, is a
    one-element list incremented with each chunk (for benchmarks and tests).
    """
    total = 0
    deliver = True
    empty = 0
    while True:
        data = read(chunk)
        if data is None:
            return total
        if not len(data):
            # The Kata 1.x agents never answer OK with no data; never spin if one does.
            empty += 1
            time.sleep(min(0.001 * empty, 0.05))
            continue
        empty = 0
        if deliver and not write_all(fd, data):
            deliver = False
            if log is not None:
                log.warning("output reader is gone; draining and discarding the rest", stream=name)
        total += len(data)
        if progress is not None:
            progress[0] += len(data)


def pump_stdin(fd: int, write, close, chunk: int, *, headroom: int = 0, log=None) -> int:
    """Copy ``fd`` to the process's stdin until EOF, then ``close()``.

    Input is read into one reusable buffer, after ``headroom`` spare bytes, and handed
    over as ``write(buf, start, end) -> accepted``: send ``buf[start:end]``, with
    ``buf[:start]`` free for the transport's own headers (so nothing is copied).  A short
    acceptance is sent again from where the agent stopped; an acceptance of 0 bytes is
    retried with a growing pause (bounded at 100 ms).  Returns the bytes delivered.
    """
    buf = bytearray(headroom + chunk)
    space = [memoryview(buf)[headroom:]]
    total = 0
    while True:
        try:
            n = os.readv(fd, space)
        except BlockingIOError:
            select.select((fd,), (), ())
            continue
        except OSError as e:
            # EIO: the terminal hung up; EBADF: no stdin at all.  Both mean "no more input".
            if log is not None:
                log.debug("stdin read failed; treating it as EOF", error=e.strerror or str(e))
            n = 0
        if not n:
            close()
            return total
        start, end = headroom, headroom + n
        stalls = 0
        while start < end:
            accepted = write(buf, start, end)
            if accepted <= 0:
                stalls += 1
                time.sleep(min(0.001 * (1 << min(stalls, 7)), 0.1))
                continue
            stalls = 0
            accepted = min(accepted, end - start)
            total += accepted
            start += accepted
