"""The byte pattern both interop peers send and verify."""

from __future__ import annotations

MiB = 1 << 20

# Same generator as goyamux/main.go: xorshift32 bytes with a period of
# 1 MiB + 13 (does not line up with windows or write sizes); stream i starts at
# offset i * 7919. Doubled so any slice of up to PAT_LEN bytes is contiguous.
PAT_LEN = (1 << 20) + 13
_pattern: bytes | None = None


def pattern() -> bytes:
    global _pattern
    if _pattern is None:
        x = 0x9E3779B9
        out = bytearray(PAT_LEN)
        for i in range(PAT_LEN):
            x ^= (x << 13) & 0xFFFFFFFF
            x ^= x >> 17
            x ^= (x << 5) & 0xFFFFFFFF
            out[i] = x >> 24
        _pattern = bytes(out) * 2
    return _pattern


def pattern_at(i: int, off: int, n: int) -> bytes:
    assert n <= PAT_LEN
    start = (off + i * 7919) % PAT_LEN
    return pattern()[start:start + n]


