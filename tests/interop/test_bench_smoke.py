"""Smoke run of the yamux benchmark so it does not rot. Never asserts timings."""

from __future__ import annotations

import re
import shutil

import pytest

from tests.support.bench import run_quick


@pytest.mark.timeout(120)
def test_yamux_bench_smoke():
    run = run_quick("yamux_bench", timeout=110)
    table = run.table
    for row in ("(a) raw unix socket", "(b) yamux py client <-> py server",
                "(c) yamux py client <-> go server", "(d) yamux go client <-> go server"):
        assert row in table, table
    figures = r"\s+\d+\s+\d+\s+[\d.]+\s+[\d.]+\s+[\d.]+$"
    assert re.search(r"^\(a\) raw unix socket.*" + figures, table, re.M), table
    assert re.search(r"^\(b\) yamux py client <-> py server" + figures, table, re.M), table
    if shutil.which("go"):
        assert re.search(r"^\(c\) yamux py client <-> go server" + figures, table, re.M), table
        assert re.search(r"^\(d\) yamux go client <-> go server" + figures, table, re.M), table
    assert re.fullmatch(
        r"RESULT bulk1_vs_go=(\S+) bulk8_vs_go=(\S+) rtt_p50_vs_go=(\S+)", run.lines[-1]
    ), run.lines[-1]
