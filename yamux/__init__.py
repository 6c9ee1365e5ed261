"""asyncio yamux, wire-compatible with hashicorp/yamux.

``yamux.core`` is the sans-IO protocol engine (frames, stream phases,
windows, timers); the asyncio skin runs it: ``yamux.session``
(:class:`Session`), ``yamux.stream`` (:class:`Stream`), ``yamux.transport``
(the transport adapters) and ``yamux.splice`` (:func:`splice`, the fast
path to a socket); ``yamux.aio`` gathers the three public names.

:func:`tune_malloc` tunes glibc's malloc for bulk transfers (once per
process, see ``yamux._malloc``; ``YAMUX_MALLOC_TUNING=0`` prevents it).  A
library does not change its process's allocator: the programs call it at
their entry points (kata-proxy, kata-agent, the benchmarks).
"""

from ._malloc import tune_malloc
from .session import Session
from .splice import splice
from .stream import Stream
from .config import Config
from .core import Connection
from .errors import (
    GoAwayError,
    KeepAliveTimeoutError,
    ProtocolError,
    SessionClosedError,
    StreamClosedError,
    StreamResetError,
    YamuxError,
    YamuxTimeoutError,
)

__all__ = [
    "Config",
    "Connection",
    "GoAwayError",
    "KeepAliveTimeoutError",
    "ProtocolError",
    "Session",
    "SessionClosedError",
    "Stream",
    "StreamClosedError",
    "StreamResetError",
    "YamuxError",
    "YamuxTimeoutError",
    "splice",
    "tune_malloc",
]
