"""HPACK decoder of kata-shim: RFC 7541 Appendix C examples, Huffman, integers, errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from kata_grpc import hpack
from kata_grpc.hpack import Decoder, HPACKError


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


# RFC 7541 C.3 / C.4: three requests on one connection, without and with Huffman.
REQUESTS = [
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")],
    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com"),
     (b"cache-control", b"no-cache")],
    [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"),
     (b":authority", b"www.example.com"), (b"custom-key", b"custom-value")],
]
C3 = ["8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
      "8286 84be 5808 6e6f 2d63 6163 6865",
      "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"]
C4 = ["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
      "8286 84be 5886 a8eb 1064 9cbf",
      "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"]


@pytest.mark.parametrize("blocks", [C3, C4], ids=["plain", "huffman"])
def test_rfc_requests(blocks):
    d = Decoder()
    for block, expected in zip(blocks, REQUESTS):
        assert d.decode(h(block)) == expected
    assert d.dynamic == [(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"),
                         (b":authority", b"www.example.com")]
    assert d.size == 164


def test_rfc_responses_with_eviction():
    # RFC 7541 C.6: responses, Huffman, a 256-byte table (entries get evicted).
    d = Decoder(256)
    d.max_size = 256
    date1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
    loc = b"https://www.example.com"
    assert d.decode(h("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
                      "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3")) == [
        (b":status", b"302"), (b"cache-control", b"private"), (b"date", date1), (b"location", loc)]
    assert d.size == 222
    assert d.decode(h("4883 640e ff c1 c0 bf")) == [
        (b":status", b"307"), (b"cache-control", b"private"), (b"date", date1), (b"location", loc)]
    assert d.size == 222
    third = d.decode(h("88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
                       "77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
                       "9587 3160 65c0 03ed 4ee5 b106 3d50 07"))
    assert third == [(b":status", b"200"), (b"cache-control", b"private"),
                     (b"date", b"Mon, 21 Oct 2013 20:13:22 GMT"), (b"location", loc),
                     (b"content-encoding", b"gzip"),
                     (b"set-cookie", b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1")]
    assert d.size == 215


def test_huffman_vectors():
    assert hpack.huffman_decode(h("f1e3 c2e5 f23a 6ba0 ab90 f4ff")) == b"www.example.com"
    assert hpack.huffman_encode(b"no-cache") == h("a8eb 1064 9cbf")
    assert hpack.huffman_encode(b"") == b""


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_huffman_round_trip(data):
    assert hpack.huffman_decode(hpack.huffman_encode(data)) == data


@pytest.mark.parametrize("bad", [
    b"\x00",            # 8 bits of padding-like zeros: not a prefix of EOS
    b"\xff\xff\xff\xff",  # EOS (30 ones) inside the string
    h("f1e3 c2e5 f23a 6ba0 ab90 f4ff ff"),  # a full byte of padding
])
def test_huffman_errors(bad):
    with pytest.raises(HPACKError):
        hpack.huffman_decode(bad)


def test_huffman_table_matches_go_when_available():
    # The canonical derivation must give RFC 7541 Appendix B's codes; Go's copy of the table
    # (golang-go) is on most of our machines.
    for path in ("/usr/lib/go/src/vendor/golang.org/x/net/http2/hpack/tables.go",):
        if Path(path).exists():
            src = Path(path).read_text()
            block = src[src.index("var huffmanCodes"):src.index("var huffmanCodeLen")]
            codes = [int(x, 16) for x in re.findall(r"0x[0-9a-f]+", block)]
            assert hpack.huffman_codes()[:256] == codes
            names = re.findall(r'\{Name: "([^"]*)"(?:, Value: "([^"]*)")?\}',
                               src[src.index("var staticTableEntries"):])
            assert [(n.encode(), v.encode()) for n, v in names[:61]] == list(hpack.STATIC_TABLE)
            return
    pytest.skip("no Go hpack tables on this machine")


@pytest.mark.parametrize("value,prefix", [(10, 5), (1337, 5), (42, 8), (0, 4), (15, 4), (2**32, 7)])
def test_integers(value, prefix):
    enc = hpack.encode_int(value, prefix)
    assert hpack.decode_int(enc, 0, prefix) == (value, len(enc))


def test_rfc_integer_examples():
    assert hpack.encode_int(10, 5) == b"\x0a"
    assert hpack.encode_int(1337, 5) == b"\x1f\x9a\x0a"


def test_encode_plain_round_trip():
    hdrs = [(b":path", b"/grpc.AgentService/ReadStdout"), (b"te", b"trailers"), (b"x", b"y" * 300)]
    assert Decoder().decode(hpack.encode_plain(hdrs)) == hdrs


def test_never_indexed_and_size_update():
    d = Decoder()
    block = b"\x3f\xe1\x1f" + b"\x10\x01a\x01b"  # size update to 4096, never-indexed a: b
    assert d.decode(block) == [(b"a", b"b")]
    assert d.dynamic == []
    d.decode(b"\x20")  # size 0 empties the table
    assert d.max_size == 0


@pytest.mark.parametrize("bad", [
    b"\x80",                 # index 0
    b"\xff\x00",             # index 127: beyond the tables
    b"\x3f\xe2\x1f",         # size update above 4096
    b"\x82\x20",             # size update after a field
    b"\x00\x05ab",           # truncated name
    b"\x40\x81",             # truncated Huffman string
    b"\x1f",                 # truncated integer
])
def test_decode_errors(bad):
    with pytest.raises(HPACKError):
        Decoder().decode(bad)


def test_entry_larger_than_table_empties_it():
    d = Decoder(64)
    d.decode(b"\x40\x01a\x01b")
    assert d.dynamic == [(b"a", b"b")]
    d.decode(b"\x40\x01c" + hpack.encode_int(100, 7) + b"x" * 100)
    assert d.dynamic == [] and d.size == 0
