"""asyncio yamux, wire-compatible with hashicorp/yamux.

``yamux.core`` is the sans-IO protocol engine; ``yamux.aio`` runs it over
asyncio transports.  See the docstrings of :class:`Session`, :class:`Stream`
and :func:`splice`.

The first Session tunes glibc's malloc for bulk transfers (once per process,
see ``yamux._malloc``); set ``YAMUX_MALLOC_TUNING=0`` to prevent it.
"""

from ._malloc import tune_malloc
from .aio import Session, Stream, splice
from .config import Config
from .core import Connection
from .errors import (
    GoAwayError,
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
