"""Smoke run of bench/grpc_bench.py (--quick) so it does not rot; no timing asserts."""

from __future__ import annotations

from tests.support.bench import run_quick


def test_grpc_bench_smoke():
    run = run_quick("grpc_bench", timeout=300)
    assert "kata_grpc" in run.lines[1] and "grpc.aio" in run.lines[1]
    for key in ("check_p50_ours", "check_p50_grpcio", "big_cpu_ours", "wall_median_grpcio"):
        assert float(run.result[key]) >= 0
    assert float(run.result["check_p50_ours"]) > 0 and float(run.result["wall_median_ours"]) > 0
