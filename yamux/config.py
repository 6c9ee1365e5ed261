"""Session configuration (hashicorp/yamux names in snake_case, same defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from .frame import INITIAL_WINDOW, MAX_UINT32


@dataclass(frozen=True)
class Config:
    """Tunables of one session.  Validated on construction (``ValueError``).

    accept_backlog: inbound streams waiting for ``accept_stream()``; a SYN beyond
        it is refused with RST.  Also the limit of our own un-ACKed opens.
    enable_keepalive / keepalive_interval: ping the peer every interval seconds;
        a ping unanswered within connection_write_timeout (with no other traffic
        received meanwhile) ends the session.
    connection_write_timeout: seconds; the ping deadline, and how long the
        transport may take to flush after the session ended by itself (the
        peer's EOF, an error) before it is aborted.
    close_timeout: seconds (> 0); the bound of a graceful ``Session.close()``:
        how long it waits for what the streams already wrote (and their FINs)
        to go out as the peer's windows allow, for the transport to flush
        and, on a socket, for the peer's EOF after ours (a lingering close).
        At the deadline what is left is dropped (logged as a warning with the
        byte count), the transport is aborted and ``close()`` returns, so a
        peer that never reads cannot hold it.  The default, 10 s, is
        hashicorp/yamux's ConnectionWriteTimeout, the bound Go puts on each
        frame it sends.  Not an upstream option (Go's Close does not wait).
    max_stream_window_size: this side's receive window per stream (>= 256 KiB);
        the extra above 256 KiB is granted on the SYN/ACK window update.
    stream_write_buffer: bytes a spliced stream (``splice()``) may queue
        beyond what the send window lets out before the socket stops being
        read.  ``Stream.drain()`` does not use it: it waits until nothing is
        queued (every byte handed to the transport).
    stream_close_timeout: after ``Stream.close()``, how long to wait for the
        peer's FIN before resetting the stream and forgetting it (upstream's
        StreamCloseTimeout); 0 waits forever.
    socket_send_buffer: SO_SNDBUF asked for on a socket the session runs over
        and on the socket ``splice()`` copies to (not an upstream option; 0
        leaves the system default, and a larger default is kept).  Linux
        doubles the value for its bookkeeping and caps it at
        net.core.wmem_max.  With the usual 208 KiB default a 256 KiB Data
        frame never fits: every bulk write is split and waits for the reader,
        a wake-up of both processes per piece (measured in bench/RESULTS.md,
        kata-proxy section).
    """

    accept_backlog: int = 256
    enable_keepalive: bool = True
    keepalive_interval: float = 30.0
    connection_write_timeout: float = 10.0
    close_timeout: float = 10.0
    max_stream_window_size: int = INITIAL_WINDOW
    stream_write_buffer: int = 128 * 1024
    stream_close_timeout: float = 300.0
    socket_send_buffer: int = 512 * 1024

    def __post_init__(self) -> None:
        if not isinstance(self.accept_backlog, int) or self.accept_backlog <= 0:
            raise ValueError(f"accept_backlog must be a positive integer, got {self.accept_backlog!r}")
        if not self.keepalive_interval > 0:
            raise ValueError(f"keepalive_interval must be > 0, got {self.keepalive_interval!r}")
        if not self.connection_write_timeout > 0:
            raise ValueError(f"connection_write_timeout must be > 0, got {self.connection_write_timeout!r}")
        if not self.close_timeout > 0:
            raise ValueError(f"close_timeout must be > 0, got {self.close_timeout!r}")
        window = self.max_stream_window_size
        if not isinstance(window, int) or not INITIAL_WINDOW <= window <= MAX_UINT32:
            raise ValueError(
                f"max_stream_window_size must be an integer between {INITIAL_WINDOW} and {MAX_UINT32}, got {window!r}"
            )
        if not self.stream_close_timeout >= 0:
            raise ValueError(f"stream_close_timeout must be >= 0, got {self.stream_close_timeout!r}")
        if not isinstance(self.socket_send_buffer, int) or self.socket_send_buffer < 0:
            raise ValueError(f"socket_send_buffer must be a non-negative integer, got {self.socket_send_buffer!r}")
        if not isinstance(self.stream_write_buffer, int) or self.stream_write_buffer < 0:
            raise ValueError(f"stream_write_buffer must be a non-negative integer, got {self.stream_write_buffer!r}")
