"""Smoke run of bench/vm_bench.py (--quick: ONE boot, 1 MiB of stdout, 50 Checks) on the session's
guest image, so the benchmark does not rot; no timing asserts."""

from __future__ import annotations

import os

import pytest

from tests.support.bench import run_quick
from tests.support.guest import missing_requirements

pytestmark = pytest.mark.vm


@pytest.fixture(autouse=True)
def _vm_requirements():
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)


def test_vm_bench_smoke(image_cache_dir, guest_image, figures):
    run = run_quick("vm_bench", timeout=900, env={**os.environ, "KATA_PY_IMAGE_CACHE": image_cache_dir})
    result = run.result
    assert result["accel"] in ("kvm", "tcg")
    assert result["exit_status"] == "0"
    for key in ("agent_ready_s", "first_output_s", "check_p50_ms", "stdout_mib_s"):
        assert float(result[key]) > 0, key
    for name in ("qemu", "proxy", "shim"):
        assert int(result[f"{name}_rss_kib"]) > 0 and int(result[f"{name}_uss_kib"]) > 0, name
    assert "| agent ready: QEMU start -> Check answered (s) |" in run.stdout
    figures.append("vm_bench --quick: " + " ".join(f"{k}={v}" for k, v in result.items()))
