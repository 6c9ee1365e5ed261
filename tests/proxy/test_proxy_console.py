"""Unit tests: splitting and cleaning guest console lines."""

from kata_proxy.console import LineSplitter, clean_line


def test_split_lines_across_reads():
    sp = LineSplitter(max_line=8)
    assert sp.feed(b"abc") == []
    assert sp.feed(b"de\nfg\n\nh") == [b"abcde", b"fg", b""]
    assert sp.feed(b"0123456789") == [b"h0123456"]
    assert sp.flush() == [b"789"]


def test_long_line_is_cut():
    sp = LineSplitter(max_line=4)
    assert sp.feed(b"abcdefghij\n") == [b"abcd", b"efgh", b"ij"]


def test_clean_line():
    assert clean_line(b"boot ok\r") == "boot ok"
    assert clean_line(b"\x1b[0mcolour\xff") == "[0mcolour\ufffd"
    assert clean_line(b"tab\there") == "tab\there"
