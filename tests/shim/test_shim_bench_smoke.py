"""Smoke run of bench/shim_bench.py (--quick) so it does not rot; no timing asserts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.sandbox


def test_shim_bench_smoke():
    r = subprocess.run([sys.executable, "-m", "bench.shim_bench", "--quick"], cwd=REPO,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT stdout_mib_s=")
    fields = dict(kv.split("=", 1) for kv in last.split()[1:])
    assert float(fields["stdout_mib_s"]) > 0 and int(fields["uss1_kib"]) > 0
    assert "grpcio client" in r.stdout
