"""Signal and size arguments as runc parses them."""

from __future__ import annotations

import re
import signal

from kata_runtime.errors import InvalidArgument


def parse_signal(text: str) -> int:
    """``9``, ``KILL``, ``SIGKILL``, ``kill`` -> 9 (runc's parseSignal: a number, else a name
    with or without SIG, any case). InvalidArgument for anything else."""
    text = text.strip()
    if text.isdigit():
        number = int(text)
        if not 0 < number < 65:
            raise InvalidArgument(f"invalid signal number {number}")
        return number
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    member = getattr(signal.Signals, name, None) if name.isidentifier() else None
    if not isinstance(member, signal.Signals):
        raise InvalidArgument(f"unknown signal {text!r}")
    return int(member)


_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_bytes(text: str) -> int:
    """``64m``, ``64MB``, ``1g``, ``1024`` -> bytes (binary units, as runc's units.RAMInBytes);
    ``-1`` is unlimited. InvalidArgument otherwise."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*([kmgtpKMGTP]?)[iI]?[bB]?\s*", text)
    if not m:
        raise InvalidArgument(f"invalid size {text!r} (e.g. 512m, 1g, 1048576)")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    return int(value)
