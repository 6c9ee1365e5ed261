"""Smoke run of bench/containerd_bench.py (--quick) so it does not rot; no timing asserts."""

from __future__ import annotations

from tests.support.bench import run_quick
from tests.support.containerd import kata_runtime_missing


def test_containerd_bench_smoke():
    run = run_quick("containerd_bench", timeout=600)
    assert float(run.result["runc_ms"]) > 0 and float(run.result["runc_par_s"]) > 0
    if kata_runtime_missing() is None:
        assert float(run.result["kata_ratio"]) > 0 and float(run.result["kata_par_ratio"]) > 0
    assert "median ms" in run.stdout
