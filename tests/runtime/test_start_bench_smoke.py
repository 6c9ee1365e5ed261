"""Smoke run of bench/start_bench.py (--quick) so it does not rot; no timing asserts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.bench import REPO, run_quick

pytestmark = pytest.mark.sandbox


def test_start_bench_smoke():
    run = run_quick("start_bench", timeout=600)
    assert run.lines[-1].startswith("RESULT start_ms=")
    for key in ("start_ratio", "delete_ratio", "state_ratio"):
        assert float(run.result[key]) > 0
    assert int(run.result["uss_kib"]) > 0
    # the floor ran its own chain of interpreters and runc to the first byte
    assert float(run.result["floor_start_ratio"]) > 0
    assert run.result["floor_imports"] == "asyncio,katapb.agent_pb2"
    assert float(run.result["floor_state_ratio"]) > 0
    assert "kata-runtime/floor" in run.stdout
    assert "create+start -> first byte" in run.stdout
    # the agent and kata-proxy live until the delete, so their CPU by the first byte is read
    cpu = run.stdout.split("CPU of the sandbox's processes by the first byte", 1)[1].splitlines()[1]
    assert "kata-runtime" in cpu and "agent " in cpu and "proxy " in cpu, run.stdout


@pytest.mark.parametrize("imports", ["", "asyncio,", "asyncio; import os"])
def test_floor_imports_must_be_module_names(imports):
    proc = subprocess.run([sys.executable, "-m", "bench.start_bench", "--floor-imports", imports], cwd=str(REPO),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "--floor-imports: not a comma-separated list of modules" in proc.stderr
