"""asyncio layer: :class:`Session`, :class:`Stream` and :func:`splice`.

Kept as the one import for the asyncio side; each idea lives in its own
module: ``yamux.session`` (the session over the sans-IO core),
``yamux.stream`` (a stream), ``yamux.transport`` (the transport adapters
and the lingering close) and ``yamux.splice`` (the splice fast path).
"""

from __future__ import annotations

from .session import Session
from .splice import splice
from .stream import Stream

__all__ = ["Session", "Stream", "splice"]
