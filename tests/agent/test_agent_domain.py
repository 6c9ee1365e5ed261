"""kata_agent.sandbox with real runc containers and no gRPC at all: the domain driven directly in
a child process (it installs the reaper, which owns waitpid(-1): pytest must not), which then
reports what it saw as JSON, including that grpc was never imported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

from kata_cgroups import remove_cgroup_trees
from tests.support.processes import REPO

pytestmark = pytest.mark.timeout(120)

SCRIPT = r'''
import asyncio, json, os, sys
from kata_agent.config import AgentConfig
from kata_agent.sandbox import Fault, Sandbox, SandboxError, as_sandbox_error
from tests.support.oci import busybox_spec
from tests.support.rootfs import build_busybox_rootfs

d, cgroup_parent = sys.argv[1], sys.argv[2]
out = {}


async def read_all(sb, cid, exec_id="", stderr=False):
    data = b""
    while True:
        try:
            data += await sb.read_output(cid, exec_id, 65536, stderr=stderr)
        except SandboxError as e:
            out.setdefault("ends", []).append(e.fault.name)
            return data.decode()


async def fault_of(coro):
    try:
        await coro
    except Exception as e:
        err = as_sandbox_error(e)
        return err.fault.name if err else repr(e)
    return None


async def main():
    cfg = AgentConfig(state_dir=d + "/state", shared_mount=d + "/shared", manage_system=False,
                      cgroup_parent=cgroup_parent)
    sb = Sandbox(cfg)
    sb.start()
    try:
        await sb.create(hostname="dom", sandbox_id="sb")
        build_busybox_rootfs(d + "/shared/c1/rootfs")
        c = await sb.create_container("c1", busybox_spec("c1", ["sh", "-c", "read x; echo out$x; echo err >&2; exit 3"]))
        out["created"] = str(c.status)
        await sb.start_container("c1")
        out["status"] = str(sb.container("c1").status)
        out["start_twice"] = await fault_of(sb.start_container("c1"))
        assert await sb.write_stdin("c1", "", b"put\n") == 4
        stdout, stderr = await asyncio.gather(read_all(sb, "c1"), read_all(sb, "c1", stderr=True))
        out["stdio"] = [stdout, stderr]
        out["exit"] = await sb.wait_process("c1", "")
        out["exited_status"] = str(sb.container("c1").status)
        out["exec_stopped"] = await fault_of(sb.exec_process("c1", "e1", busybox_spec("c1", ["true"]).Process))
        # A failed create leaves nothing: the id is free, no state dir, no runc container.
        build_busybox_rootfs(d + "/shared/c2/rootfs")
        out["missing_program"] = await fault_of(sb.create_container("c2", busybox_spec("c2", ["/no/such/program"])))
        out["c2_left"] = ["c2" in sb.containers, os.path.exists(cfg.container_state_dir("c2"))]
        await sb.remove_container("c1")
        out["removed"] = await fault_of(sb.wait_process("c1", ""))
    finally:
        await sb.shutdown()
    out["grpc"] = sorted(m for m in sys.modules if m.split(".")[0] == "grpc" or m.endswith("_pb2_grpc"))


asyncio.run(main())
print(json.dumps(out))
'''


def test_a_container_through_the_domain_alone():
    d = tempfile.mkdtemp(prefix="kdom", dir="/tmp")
    cgroup_parent = f"kata-test-{uuid.uuid4().hex[:8]}"
    runc_root = os.path.join(d, "state", "runc")
    try:
        p = subprocess.run([sys.executable, "-c", SCRIPT, d, cgroup_parent], cwd=str(REPO),
                           capture_output=True, text=True, timeout=90)
        assert p.returncode == 0, p.stderr
        out = json.loads(p.stdout.splitlines()[-1])
        left = subprocess.run(["runc", "--root", runc_root, "list", "-q"], capture_output=True, text=True).stdout
    finally:
        for cid in ("c1", "c2"):
            subprocess.run(["runc", "--root", runc_root, "delete", "--force", cid], capture_output=True)
        remove_cgroup_trees(cgroup_parent)
        shutil.rmtree(d, ignore_errors=True)
    assert (out["created"], out["status"], out["start_twice"]) == ("created", "running", "WRONG_STATE")
    assert out["stdio"] == ["output\n", "err\n"] and out["ends"] == ["EOF", "EOF"]
    assert (out["exit"], out["exited_status"], out["exec_stopped"]) == (3, "stopped", "WRONG_STATE")
    assert out["missing_program"] == "INVALID" and out["c2_left"] == [False, False]
    assert out["removed"] == "NOT_FOUND"
    assert left.split() == []
    assert out["grpc"] == []
