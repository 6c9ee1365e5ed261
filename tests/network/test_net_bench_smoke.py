"""Smoke run of bench/net_bench.py (runc and the process sandbox on a pod network, --quick) so it
does not rot; figures are printed, never asserted."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.network.conftest import REPO


@pytest.mark.skipif(shutil.which("runc") is None or shutil.which("busybox") is None, reason="needs runc, busybox")
def test_net_bench_smoke():
    p = subprocess.run([sys.executable, "-m", "bench.net_bench", "--quick"], cwd=str(REPO), capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    result = p.stdout.strip().splitlines()[-1]
    assert result.startswith("RESULT runc_mibs=") and "kata-process_rtt_ms=" in result, p.stdout
    print(p.stdout)
