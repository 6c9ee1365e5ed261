"""Smoke run of bench/agent_bench.py (--quick) so it does not rot; no timing asserts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_agent_bench_smoke():
    r = subprocess.run([sys.executable, "-m", "bench.agent_bench", "--quick"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT stdout_mib_s=")
    fields = dict(kv.split("=", 1) for kv in last.split()[1:])
    for key in ("stdout_mib_s", "stdout_32k_mib_s", "stdin_mib_s", "pipe_mib_s", "ratio"):
        assert float(fields[key]) > 0, key
