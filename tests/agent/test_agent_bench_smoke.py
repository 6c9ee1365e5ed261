"""Smoke run of bench/agent_bench.py (--quick) so it does not rot; no timing asserts."""

from __future__ import annotations

from tests.support.bench import run_quick


def test_agent_bench_smoke():
    run = run_quick("agent_bench", timeout=300)
    assert run.lines[-1].startswith("RESULT stdout_mib_s=")
    for key in ("stdout_mib_s", "stdout_32k_mib_s", "stdin_mib_s", "pipe_mib_s", "ratio"):
        assert float(run.result[key]) > 0, key
