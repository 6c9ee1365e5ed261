"""The one test support package: what the test tiers, bench/ and `make demo` share.

    tests/support/processes.py    child processes: environment, ready lines, waits, /proc lookups
    tests/support/requirements.py the root/tool skip marker: why a tier or test cannot run here, and skip it
    tests/support/rootfs.py       a busybox container rootfs
    tests/support/oci.py          OCI specs: katapb messages (runtime -> agent) and bundles (caller -> runtime)
    tests/support/proxy.py        the one kata-proxy launcher, and the yamux agent stand-in (tests/peers)
    tests/support/agent.py        the one agent client (grpc.aio), the standalone agent service, and the
                                  runtime-shaped driver of the shim tests (the runtime's own client)
    tests/support/runtime.py      kata-runtime and runc as a caller runs them; leftover checks
    tests/support/containerd.py   a containerd of the test's own, driven with ctr (reaper and CRI tiers)
    tests/support/oci_image.py    the busybox OCI image layout tar it imports; attach.py: ctr run attached
    tests/support/bench.py        smoke runs of bench/ (``--quick``)
    tests/support/fixtures.py     pytest fixtures: the one process sandbox (agent + kata-proxy + client),
                                  short socket directories (short_dir)

Rules: nothing here imports a test tier (``tests.<tier>``) or a test module, and only
``fixtures.py`` (and requirements.requires/skip_items, when called) import pytest, so bench/ and
bench/demo.py import these modules without pulling in a test. The repository root is on
``sys.path`` through the pytest config (``pythonpath = .``) and, for bench/, because it runs as
``python -m bench.<name>`` from the root. Only processes started here are ever signalled (by pid).
"""
