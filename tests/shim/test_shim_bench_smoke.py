"""Smoke run of bench/shim_bench.py (--quick) so it does not rot; no timing asserts."""

from __future__ import annotations

import pytest

from tests.support.bench import run_quick

pytestmark = pytest.mark.sandbox


def test_shim_bench_smoke():
    run = run_quick("shim_bench", timeout=600)
    assert run.lines[-1].startswith("RESULT stdout_mib_s=")
    assert float(run.result["stdout_mib_s"]) > 0 and int(run.result["uss1_kib"]) > 0
    assert "grpcio client" in run.stdout
