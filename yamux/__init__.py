"""asyncio yamux, wire-compatible with hashicorp/yamux.

``yamux.core`` is the sans-IO protocol engine; ``yamux.aio`` runs it over
asyncio transports.  See the docstrings of :class:`Session`, :class:`Stream`
and :func:`splice`.
"""

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
]
