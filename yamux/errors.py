"""Exceptions raised by the yamux package.

Hierarchy::

    YamuxError
    ├── SessionClosedError (also a ConnectionError)   the session has ended
    │   ├── ProtocolError                            ... because the peer broke the protocol
    │   ├── KeepAliveTimeoutError                    ... because a keepalive ping got no reply
    │   └── GoAwayError                              the peer refuses new streams (Go Away 0)
    ├── StreamResetError (also a ConnectionResetError) the stream was reset (RST)
    ├── StreamClosedError                            write after write_eof()/close()
    └── YamuxTimeoutError (also a TimeoutError)      a ping got no reply in time
"""

from __future__ import annotations


class YamuxError(Exception):
    """Base class of every error raised by this package."""


class SessionClosedError(YamuxError, ConnectionError):
    """The session has ended (closed locally, by the peer, or after an error).

    Raised by stream reads that find no FIN, by writes, opens, accepts and
    pings once the session is over.  Distinct from a clean stream EOF, which
    ``Stream.read`` reports as ``b''``.
    """


class ProtocolError(SessionClosedError):
    """The peer violated the yamux protocol; the session was ended.

    The message says what was wrong (bad version or type, window overrun,
    duplicate SYN, a second FIN, ...).
    """


class KeepAliveTimeoutError(SessionClosedError):
    """The session was ended because a keepalive ping got no reply within
    ``connection_write_timeout`` while nothing else arrived from the peer
    (hashicorp/yamux's ``ErrKeepAliveTimeout``, session.go ``keepalive``)."""


class GoAwayError(SessionClosedError):
    """The peer sent Go Away: it accepts no new streams (existing ones go on)."""


class StreamResetError(YamuxError, ConnectionResetError):
    """The stream was reset (RST), by the peer or locally."""


class StreamClosedError(YamuxError):
    """A write on a stream whose write side was already closed (FIN queued)."""


class YamuxTimeoutError(YamuxError, TimeoutError):
    """A ping reply (or another bounded wait) did not arrive in time."""


def copy_error(error: BaseException) -> BaseException:
    """A fresh exception of the same class and message, chained to ``error``.

    One stored error is raised in many tasks; raising copies keeps each
    traceback separate.
    """
    try:
        fresh = type(error)(*error.args)
    except Exception:  # pragma: no cover - exotic exception classes
        fresh = SessionClosedError(str(error))
    fresh.__cause__ = error
    return fresh
