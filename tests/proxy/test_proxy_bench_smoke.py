"""Smoke run of the kata-proxy benchmark so it does not rot.  Never asserts timings."""

from __future__ import annotations

import re

import pytest

from tests.support.bench import run_quick
from tests.support.processes import child_env


@pytest.mark.timeout(300)
def test_proxy_bench_smoke():
    run = run_quick("proxy_bench", timeout=280, env=child_env())
    table = run.table
    for row in ("(direct) unix socket to the gRPC server", "(proxy)  through kata-proxy + yamux",
                "(yamux)  yamux client straight to the peer", "100 client connections open",
                "(2 relays) two plain relays, no yamux"):
        assert row in table, table
    assert "(live streams: 100)" in table, table
    assert re.fullmatch(r"RESULT unary_p50_ratio=\S+ unary_p99_ratio=\S+ relays_p50_ratio=\S+ bulk_up_ratio=\S+ "
                        r"bulk_down_ratio=\S+ rss_idle_kb=\d+ rss_100_kb=\d+", run.lines[-1]), run.lines[-1]
