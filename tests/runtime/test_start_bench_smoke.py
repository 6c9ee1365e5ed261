"""Smoke run of bench/start_bench.py (--quick) so it does not rot; no timing asserts."""

from __future__ import annotations

import pytest

from tests.support.bench import run_quick

pytestmark = pytest.mark.sandbox


def test_start_bench_smoke():
    run = run_quick("start_bench", timeout=600)
    assert run.lines[-1].startswith("RESULT start_ms=")
    for key in ("start_ratio", "delete_ratio", "state_ratio"):
        assert float(run.result[key]) > 0
    assert int(run.result["uss_kib"]) > 0
    assert "create+start -> first byte" in run.stdout
