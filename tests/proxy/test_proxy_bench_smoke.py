"""Smoke run of the kata-proxy benchmark so it does not rot.  Never asserts timings."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.peers.proxy_harness import REPO, child_env


@pytest.mark.timeout(300)
def test_proxy_bench_smoke():
    proc = subprocess.run([sys.executable, "-m", "bench.proxy_bench", "--quick"], cwd=str(REPO),
                          capture_output=True, text=True, timeout=280, env=child_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    table = "\n".join(lines)
    for row in ("(direct) unix socket to the gRPC server", "(proxy)  through kata-proxy + yamux",
                "(yamux)  yamux client straight to the peer", "100 client connections open",
                "(2 relays) two plain relays, no yamux"):
        assert row in table, table
    assert "(live streams: 100)" in table, table
    assert re.fullmatch(r"RESULT unary_p50_ratio=\S+ unary_p99_ratio=\S+ relays_p50_ratio=\S+ bulk_up_ratio=\S+ "
                        r"bulk_down_ratio=\S+ rss_idle_kb=\d+ rss_100_kb=\d+", lines[-1]), lines[-1]
