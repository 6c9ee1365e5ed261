"""gRPC over HTTP/2, the gRPC level (gRPC PROTOCOL-HTTP2.md): status codes, message framing,
grpc-message percent-encoding, grpc-timeout.

Shared by the client core (:mod:`kata_grpc.h2`) and the server core (:mod:`kata_grpc.server`);
no I/O, nothing beyond the language.
"""

from __future__ import annotations

# gRPC status codes (grpc/doc/statuscodes.md)
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15
UNAUTHENTICATED = 16

STATUS_NAMES = {
    0: "OK", 1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED",
    5: "NOT_FOUND", 6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
    13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}

#: the 5-byte prefix of a length-prefixed message: compressed flag (1 byte), length (4, big-endian)
PREFIX_LEN = 5


class RpcError(Exception):
    """A call finished (client side) or must finish (server side) with a non-OK gRPC status.

    ``code``: a status code above (int); ``message``: text for grpc-message (str).
    A server handler raises it to answer with that status."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    @property
    def name(self) -> str:
        """The status code's name ("NOT_FOUND"), or its number when unknown."""
        return STATUS_NAMES.get(self.code, str(self.code))

    def __str__(self) -> str:
        return f"{self.name}: {self.message}" if self.message else self.name


def grpc_message(payload) -> bytes:
    """``payload`` (bytes-like) as one length-prefixed, uncompressed gRPC message
    (PROTOCOL-HTTP2.md "Length-Prefixed-Message")."""
    return b"".join((b"\x00", len(payload).to_bytes(4, "big"), payload))


def message_length(prefix) -> int:
    """The message length announced by a 5-byte prefix; ValueError when the compressed flag
    is set (we never negotiate grpc-encoding) or the prefix is short."""
    if len(prefix) < PREFIX_LEN:
        raise ValueError("short gRPC message prefix")
    if prefix[0] != 0:
        raise ValueError("compressed gRPC message (no grpc-encoding was negotiated)")
    return int.from_bytes(prefix[1:5], "big")


# grpc-message: percent-encode every byte outside 0x20..0x7E, and '%' itself (PROTOCOL-HTTP2.md).
_PLAIN = frozenset(range(0x20, 0x7F)) - {0x25}


def percent_encode(text: str) -> bytes:
    """grpc-message value of ``text``: UTF-8, then percent-encoded."""
    raw = text.encode("utf-8", "replace")
    if all(b in _PLAIN for b in raw):
        return raw
    return b"".join(bytes((b,)) if b in _PLAIN else b"%%%02X" % b for b in raw)


def percent_decode(text: bytes) -> str:
    """The text of a grpc-message value; a '%' not followed by two hex digits is kept as is
    (PROTOCOL-HTTP2.md: decoding must not fail)."""
    if b"%" not in text:
        return text.decode("utf-8", "replace")
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        hexpair = text[i + 1:i + 3]
        if ch == 0x25 and len(hexpair) == 2:
            if all(c in b"0123456789abcdefABCDEF" for c in hexpair):
                out.append(int(hexpair, 16))
                i += 3
                continue
        out.append(ch)
        i += 1
    return out.decode("utf-8", "replace")


_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6,
                  ord("n"): 1e-9}


def parse_timeout(value: bytes) -> float:
    """Seconds of a grpc-timeout value (``TimeoutValue TimeoutUnit``: 1 to 8 ASCII digits, then
    one of H M S m u n; PROTOCOL-HTTP2.md).  ValueError when malformed."""
    digits, unit = value[:-1], value[-1:]
    if not 1 <= len(digits) <= 8 or not digits.isdigit() or not unit or unit[0] not in _TIMEOUT_UNITS:
        raise ValueError(f"bad grpc-timeout {bytes(value)!r}")
    return int(digits) * _TIMEOUT_UNITS[unit[0]]


def format_timeout(seconds: float) -> bytes:
    """grpc-timeout value for ``seconds`` (> 0): the finest unit whose value fits 8 digits."""
    if seconds <= 0:
        raise ValueError("timeout must be positive")
    for unit, scale in ((b"n", 1e9), (b"u", 1e6), (b"m", 1e3), (b"S", 1.0), (b"M", 1 / 60), (b"H", 1 / 3600)):
        n = int(seconds * scale + 0.5)
        if n < 100_000_000:
            return b"%d" % max(n, 1) + unit
    return b"99999999H"
