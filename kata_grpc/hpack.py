"""HPACK (RFC 7541) for the gRPC client of kata-shim and kata-runtime: a full decoder, a tiny encoder.

The decoder handles everything a server may send: indexed fields, literals with
and without indexing, never-indexed literals, dynamic table size updates, and
Huffman-coded strings.  The encoder only writes "literal without indexing"
fields with plain (non-Huffman) strings: a client's request headers are fixed,
so it encodes each method's header block once and reuses the bytes.

No I/O, no imports beyond the language: bytes in, header lists out.
"""

from __future__ import annotations


class HPACKError(Exception):
    """The peer sent a header block we cannot decode (a connection error)."""


# RFC 7541 Appendix A: the static table (index 1..61).
STATIC_TABLE = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)

# RFC 7541 Appendix B: the bit length of each symbol's Huffman code (symbols
# 0..255, then 256 = EOS).  The code is canonical: sorting symbols by (length,
# symbol) and counting up gives every code, so the lengths are all we store.
HUFFMAN_LENGTHS = (
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28,
    28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
    6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6,
    5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
    13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
    15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5,
    6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
    20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23,
    24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
    22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23,
    21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
    26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25,
    19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
    20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23,
    26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
    30,
)

EOS = 256


def huffman_codes() -> list[int]:
    """The code of every symbol (index = symbol), derived canonically from the lengths."""
    order = sorted(range(len(HUFFMAN_LENGTHS)), key=lambda s: (HUFFMAN_LENGTHS[s], s))
    codes = [0] * len(HUFFMAN_LENGTHS)
    code = 0
    prev = HUFFMAN_LENGTHS[order[0]]
    for i, sym in enumerate(order):
        if i:
            code = (code + 1) << (HUFFMAN_LENGTHS[sym] - prev)
            prev = HUFFMAN_LENGTHS[sym]
        codes[sym] = code
    return codes


_decode_table: dict[int, int] | None = None


def _table() -> dict[int, int]:
    # Key: the code with a leading 1 bit (so lengths are part of the key).
    global _decode_table
    if _decode_table is None:
        _decode_table = {
            (1 << length) | code: sym
            for sym, (code, length) in enumerate(zip(huffman_codes(), HUFFMAN_LENGTHS))
        }
    return _decode_table


def huffman_decode(data) -> bytes:
    table = _table()
    out = bytearray()
    cur = 1
    nbits = 0
    for byte in data:
        for shift in (7, 6, 5, 4, 3, 2, 1, 0):
            cur = (cur << 1) | ((byte >> shift) & 1)
            nbits += 1
            sym = table.get(cur)
            if sym is not None:
                if sym == EOS:
                    raise HPACKError("Huffman string contains EOS")
                out.append(sym)
                cur = 1
                nbits = 0
            elif nbits > 30:
                raise HPACKError("invalid Huffman code")
    # Padding: fewer than 8 bits, all ones (the most significant bits of EOS).
    if nbits > 7 or cur != (1 << (nbits + 1)) - 1:
        raise HPACKError("invalid Huffman padding")
    return bytes(out)


def huffman_encode(data: bytes) -> bytes:
    """Huffman-code ``data`` (tests and completeness; the shim sends plain strings)."""
    codes = huffman_codes()
    acc = 0
    nbits = 0
    for byte in data:
        acc = (acc << HUFFMAN_LENGTHS[byte]) | codes[byte]
        nbits += HUFFMAN_LENGTHS[byte]
    pad = -nbits % 8
    acc = (acc << pad) | ((1 << pad) - 1)
    return acc.to_bytes((nbits + pad) // 8, "big")


def decode_int(data, pos: int, prefix_bits: int) -> tuple[int, int]:
    """Integer with an N-bit prefix starting at data[pos]; returns (value, next pos)."""
    mask = (1 << prefix_bits) - 1
    try:
        value = data[pos] & mask
        pos += 1
        if value < mask:
            return value, pos
        shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, pos
            if shift > 63:
                raise HPACKError("integer too large")
    except IndexError:
        raise HPACKError("truncated integer") from None


def encode_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """``value`` with an N-bit prefix; ``first`` holds the representation's high bits."""
    mask = (1 << prefix_bits) - 1
    if value < mask:
        return bytes((first | value,))
    out = bytearray((first | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _decode_string(data, pos: int) -> tuple[bytes, int]:
    if pos >= len(data):
        raise HPACKError("truncated string")
    huffman = data[pos] & 0x80
    length, pos = decode_int(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise HPACKError("truncated string")
    raw = bytes(data[pos:end])
    return (huffman_decode(raw) if huffman else raw), end


_STATIC_SIZE = len(STATIC_TABLE)


class Decoder:
    """Decodes header blocks; keeps the dynamic table between blocks of one connection.

    A gRPC client repeats its request headers call after call as the same few indexed fields
    (grpcio: nine bytes for a Check), and our answers' blocks are plain literals: a block that
    left the dynamic table as it was is remembered, and the same bytes against the same table
    give the same list without decoding again."""

    def __init__(self, max_table_size: int = 4096, max_list_size: int | None = None) -> None:
        """``max_table_size``: what we advertised (SETTINGS_HEADER_TABLE_SIZE), bytes;
        ``max_list_size``: the largest decoded header list (RFC 9113 section 6.5.2
        SETTINGS_MAX_HEADER_LIST_SIZE: names + values + 32 per field) before HPACKError
        (None: no limit)."""
        self.max_list_size = max_list_size
        self.max_allowed = max_table_size
        self.max_size = max_table_size     # current limit (the encoder may lower it)
        self.size = 0
        self.dynamic: list[tuple[bytes, bytes]] = []  # newest first
        self.generation = 0  # counts the changes to the dynamic table and its size
        self._last: tuple[bytes, int, int | None, list] | None = None  # block, generation, limit, headers

    def _lookup(self, index: int) -> tuple[bytes, bytes]:
        entry = index - _STATIC_SIZE - 1  # the dynamic table's entry, newest first
        if entry >= 0:  # first: a gRPC client's repeated request headers are dynamic entries
            if entry >= len(self.dynamic):
                raise HPACKError("header index out of range")
            return self.dynamic[entry]
        if index <= 0:
            raise HPACKError("header index 0")
        return STATIC_TABLE[index - 1]

    def _evict(self) -> None:
        while self.size > self.max_size and self.dynamic:
            name, value = self.dynamic.pop()
            self.size -= 32 + len(name) + len(value)

    def _add(self, name: bytes, value: bytes) -> None:
        self.generation += 1
        self.dynamic.insert(0, (name, value))
        self.size += 32 + len(name) + len(value)
        self._evict()  # an entry larger than the table empties it (RFC 7541 4.4)

    def _literal(self, block, pos: int, prefix: int) -> tuple[bytes, bytes, int]:
        """A literal field at ``pos``: its name (indexed, or a literal string), its value, and
        the position after it."""
        index, pos = decode_int(block, pos, prefix)
        if index:
            name = self._lookup(index)[0]
        else:
            name, pos = _decode_string(block, pos)
        value, pos = _decode_string(block, pos)
        return name, value, pos

    def decode(self, block) -> list[tuple[bytes, bytes]]:
        """The (name, value) list of one header block; HPACKError when it is malformed or
        decodes to more than ``max_list_size``."""
        last = self._last
        if (last is not None and last[1] == self.generation and last[2] == self.max_list_size
                and last[0] == block):
            return list(last[3])
        generation = self.generation
        headers = self._decode(block)
        if self.generation == generation:
            self._last = (bytes(block), generation, self.max_list_size, headers)
            return list(headers)
        return headers

    def _decode(self, block) -> list[tuple[bytes, bytes]]:
        headers = []
        pos = 0
        n = len(block)
        seen_field = False
        limit = self.max_list_size
        list_size = 0
        while pos < n:
            if limit is not None and headers:  # the field decoded last time round
                list_size += 32 + len(headers[-1][0]) + len(headers[-1][1])
                if list_size > limit:
                    raise HPACKError(f"header list larger than {limit} bytes")
            byte = block[pos]
            if byte & 0x80:  # indexed field
                if byte != 0xFF:  # the index fits the 7-bit prefix: no continuation bytes
                    index = byte & 0x7F
                    pos += 1
                else:
                    index, pos = decode_int(block, pos, 7)
                headers.append(self._lookup(index))
                seen_field = True
            elif byte & 0x40:  # literal with incremental indexing
                name, value, pos = self._literal(block, pos, 6)
                self._add(name, value)
                headers.append((name, value))
                seen_field = True
            elif byte & 0x20:  # dynamic table size update
                if seen_field:
                    raise HPACKError("table size update after a header field")
                size, pos = decode_int(block, pos, 5)
                if size > self.max_allowed:
                    raise HPACKError("table size update above the advertised limit")
                self.generation += 1
                self.max_size = size
                self._evict()
            else:  # literal without indexing (0000) or never indexed (0001)
                name, value, pos = self._literal(block, pos, 4)
                headers.append((name, value))
                seen_field = True
        if limit is not None and headers:
            list_size += 32 + len(headers[-1][0]) + len(headers[-1][1])
            if list_size > limit:
                raise HPACKError(f"header list larger than {limit} bytes")
        return headers


def encode_plain(headers) -> bytes:
    """Header block of "literal without indexing, new name" fields, plain strings."""
    out = bytearray()
    for name, value in headers:
        out.append(0)
        out += encode_int(len(name), 7)
        out += name
        out += encode_int(len(value), 7)
        out += value
    return bytes(out)
