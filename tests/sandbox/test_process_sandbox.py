"""Process tier: kata-agent in a ProcessSandbox, driven through the real kata-proxy.

    grpc.aio client -> proxy.sock -> kata-proxy (yamux client) -> kata.sock
        -> kata-agent (yamux server, bridge) -> private gRPC socket -> AgentService -> runc
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest

from katapb import agent_pb2, health_pb2
from kata_runtime.hypervisor import ProcessSandbox
from kata_cgroups import cgroup_paths
from tests.support.oci import busybox_spec, shared_storage
from tests.support.rootfs import build_busybox_rootfs

pytestmark = pytest.mark.sandbox

NAMESPACES = ("mnt", "pid", "uts", "ipc")


# ------------------------------------------------------------------ helpers


def is_eof(exc: grpc.aio.AioRpcError) -> bool:
    """The agent's end of a stream: OUT_OF_RANGE "EOF" (kata_agent.service.EOF_DETAILS)."""
    return exc.code() == grpc.StatusCode.OUT_OF_RANGE and exc.details() == "EOF"


async def read_stream(call, cid: str, exec_id: str, *, chunk: int = 32 << 10) -> bytes:
    """ReadStdout/ReadStderr until EOF, as kata-shim does (32 KiB per call)."""
    out = bytearray()
    while True:
        try:
            resp = await call(agent_pb2.ReadStreamRequest(container_id=cid, exec_id=exec_id, len=chunk))
        except grpc.aio.AioRpcError as exc:
            if is_eof(exc):
                return bytes(out)
            raise
        if not resp.data:
            return bytes(out)
        out += resp.data


async def create_sandbox(client, sb: ProcessSandbox) -> None:
    await client.agent.CreateSandbox(agent_pb2.CreateSandboxRequest(
        hostname="kata-sb", storages=[shared_storage()], sandbox_id=sb.sandbox_id), timeout=30)


async def create_container(client, sb: ProcessSandbox, cid: str, args, **spec_kw) -> None:
    # The runtime's job: the bundle rootfs goes to <sandbox>/shared/<cid>/rootfs.
    build_busybox_rootfs(Path(sb.shared_dir) / cid / "rootfs")
    await client.agent.CreateContainer(agent_pb2.CreateContainerRequest(
        container_id=cid, exec_id=cid, OCI=busybox_spec(cid, args, **spec_kw)), timeout=30)


def unique(prefix: str) -> str:
    """Container ids are global on the host (runc cgroups): keep parallel runs apart."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def host_mounts() -> str:
    return Path("/proc/self/mountinfo").read_text()


def ns_ids(pid) -> dict[str, str]:
    return {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in (*NAMESPACES, "net")}


def pids_in_pid_namespace(ns_link: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == ns_link:
                    found.append(int(entry))
            except OSError:
                pass
    return found


# -------------------------------------------------------------------- tests


async def test_health_check_and_version_through_proxy(client):
    resp = await client.health.Check(health_pb2.CheckRequest(), timeout=30)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    version = await client.health.Version(health_pb2.CheckRequest(), timeout=10)
    assert version.agent_version
    assert version.grpc_version


async def test_agent_runs_in_its_own_namespaces(sandbox, client):
    await client.health.Check(health_pb2.CheckRequest(), timeout=30)
    agent = sandbox.agent_pid()
    assert agent is not None
    mine, its = ns_ids("self"), ns_ids(agent)
    for ns in NAMESPACES:
        assert its[ns] != mine[ns], f"agent shares the test's {ns} namespace"
    assert its["net"] == mine["net"]  # documented: no network namespace
    status = Path(f"/proc/{agent}/status").read_text()
    assert re.search(rf"^NSpid:\s+{agent}\s+1$", status, re.M), "the agent is PID 1 of its pid namespace"
    assert "python" in Path(f"/proc/{agent}/cmdline").read_bytes().decode(errors="replace")
    # The private tmpfs on /run/kata-containers and the shared-dir bind mount are not on the host.
    await create_sandbox(client, sandbox)
    agent_mounts = Path(f"/proc/{agent}/mountinfo").read_text()
    assert " /run/kata-containers " in agent_mounts
    assert "/run/kata-containers/shared/containers" in agent_mounts
    assert "/run/kata-containers" not in host_mounts()


async def test_container_create_start_wait(sandbox, client):
    await create_sandbox(client, sandbox)
    cid = unique("c-echo")
    await create_container(client, sandbox, cid, ["sh", "-c", "echo hello from $(hostname); exit 3"])
    await client.agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=30)
    out = await read_stream(client.agent.ReadStdout, cid, cid)
    status = await client.agent.WaitProcess(agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid), timeout=30)
    assert out == b"hello from container\n"
    assert status.status == 3
    await client.agent.RemoveContainer(agent_pb2.RemoveContainerRequest(container_id=cid), timeout=30)


async def test_stdin_64mib_through_cat_byte_exact(sandbox, client):
    await create_sandbox(client, sandbox)
    cid = unique("c-cat")
    await create_container(client, sandbox, cid, ["cat"])
    await client.agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=30)

    total, block = 64 << 20, 256 << 10
    seed = hashlib.sha256(b"kata-py stdin").digest()
    pattern = (seed * (block // len(seed) + 1))[:block]
    want = hashlib.sha256()

    async def writer():
        sent = 0
        i = 0
        while sent < total:
            data = bytes([i & 0xFF]) + pattern[1:]
            i += 1
            want.update(data)
            view = memoryview(data)
            while view:
                resp = await client.agent.WriteStdin(
                    agent_pb2.WriteStreamRequest(container_id=cid, exec_id=cid, data=bytes(view)), timeout=60)
                assert resp.len > 0
                view = view[resp.len:]
            sent += len(data)
        await client.agent.CloseStdin(agent_pb2.CloseStdinRequest(container_id=cid, exec_id=cid), timeout=30)

    async def reader():
        got = hashlib.sha256()
        n = 0
        while True:
            try:
                resp = await client.agent.ReadStdout(
                    agent_pb2.ReadStreamRequest(container_id=cid, exec_id=cid, len=1 << 20), timeout=60)
            except grpc.aio.AioRpcError as exc:
                if is_eof(exc):
                    return n, got.hexdigest()
                raise
            if not resp.data:
                return n, got.hexdigest()
            got.update(resp.data)
            n += len(resp.data)

    t0 = time.monotonic()
    _, (n, digest) = await asyncio.gather(writer(), reader())
    elapsed = time.monotonic() - t0
    status = await client.agent.WaitProcess(agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid), timeout=30)
    assert n == total
    assert digest == want.hexdigest()
    assert status.status == 0
    print(f"64 MiB stdin->cat->stdout round trip: {elapsed:.2f}s ({2 * 64 / elapsed:.1f} MiB/s both ways)")


async def test_stop_leaves_nothing_behind(sandbox, client):
    await create_sandbox(client, sandbox)
    cid = unique("c-sleep")
    await create_container(client, sandbox, cid, ["sleep", "1000"])
    await client.agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=30)
    agent = sandbox.agent_pid()
    unshare = sandbox.pid
    pid_ns = os.readlink(f"/proc/{agent}/ns/pid")
    # the container's processes live in a pid namespace nested in the agent's
    # `runc start` returns when the container's init was told to exec, maybe before it did
    deadline = time.monotonic() + 10
    while True:
        sleepers = [p for p in map(int, filter(str.isdigit, os.listdir("/proc")))
                    if _cmdline(p) == ["sleep", "1000"] and _descends_from(p, agent)]
        if sleepers or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.02)
    assert sleepers, "the container's sleep is not running"
    assert len(pids_in_pid_namespace(pid_ns)) >= 1

    t0 = time.monotonic()
    await sandbox.stop()
    print(f"stop took {time.monotonic() - t0:.2f}s")

    for pid in (agent, unshare, *sleepers):
        assert not _alive(pid), f"pid {pid} survived the sandbox"
    assert pids_in_pid_namespace(pid_ns) == []
    assert not os.path.exists(sandbox.channel_socket_path)
    assert not os.path.exists(sandbox.pid_file)
    assert sandbox.pid is None
    assert os.path.exists(sandbox.console_log_path)  # kept, like a VM console log
    assert sandbox.sandbox_dir not in host_mounts()
    assert sandbox_cgroups(sandbox) == []
    # stop() is idempotent, also from a fresh driver object
    await sandbox.stop()
    await ProcessSandbox(sandbox.sandbox_dir, sandbox.sandbox_id).stop()


async def test_stop_from_another_driver_object(sandbox, client):
    """kata-runtime is short-lived: `delete` builds a new driver for the same directory."""
    await client.health.Check(health_pb2.CheckRequest(), timeout=30)
    other = ProcessSandbox(sandbox.sandbox_dir, sandbox.sandbox_id)
    assert other.pid == sandbox.pid
    agent = other.agent_pid()
    await other.stop()
    assert not _alive(agent)
    assert not os.path.exists(sandbox.channel_socket_path)


async def test_channel_close_makes_agent_exit(sandbox, proxy, client):
    await client.health.Check(health_pb2.CheckRequest(), timeout=30)
    agent = sandbox.agent_pid()
    proxy.stop()  # the proxy goes away: the host end of the channel is closed
    deadline = time.monotonic() + 15
    while _alive(agent) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not _alive(agent), "the agent did not exit when its channel closed"
    console = Path(sandbox.console_log_path).read_text()
    exits = [line for line in console.splitlines() if "channel closed" in line]
    assert len(exits) == 1, console
    assert "exiting" in exits[0]
    assert sandbox.pid is None


async def test_second_proxy_is_refused_while_first_is_connected(sandbox, proxy, client):
    """One client, like QEMU's chardev server: a second connect is refused at once."""
    import socket

    await client.health.Check(health_pb2.CheckRequest(), timeout=30)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError):
        s.connect(sandbox.channel_socket_path)
    s.close()
    # and the first connection still works
    await client.health.Check(health_pb2.CheckRequest(), timeout=10)


async def test_start_fails_clearly_when_the_agent_cannot_run(sandbox_dir):
    sb = ProcessSandbox(sandbox_dir, "sb-bad", python="/bin/false")
    with pytest.raises(Exception, match="at start"):
        await sb.start()
    assert sb.pid is None
    assert not os.path.exists(sb.channel_socket_path)


# ----------------------------------------------------------------- helpers


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:stat.rfind(b")") + 3] not in (b"Z", b"X")


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(re.search(r"^PPid:\s+(\d+)$", status, re.M).group(1))
    return False


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def sandbox_cgroups(sandbox) -> list[str]:
    """Every cgroup directory of this sandbox left on the host, in any hierarchy."""
    found = []
    for base in cgroup_paths(os.getpid()).values():
        top = os.path.join(base, sandbox.cgroup_parent)
        found += [d for d, _, _ in os.walk(top)]
    return found


async def test_stop_kills_an_agent_that_ignores_sigterm(sandbox, client):
    """A stopped (SIGSTOP) agent cannot act on SIGTERM: stop() escalates to SIGKILL,
    and the cgroups of its container (which it could not remove) are removed too."""
    import signal

    await create_sandbox(client, sandbox)
    cid = unique("c-killed")
    await create_container(client, sandbox, cid, ["sleep", "1000"])
    await client.agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=30)
    assert any(d.endswith(cid) for d in sandbox_cgroups(sandbox)), "the container has no cgroup of its own"
    agent, unshare = sandbox.agent_pid(), sandbox.pid
    os.kill(agent, signal.SIGSTOP)
    t0 = time.monotonic()
    await sandbox.stop(timeout=0.5)
    assert time.monotonic() - t0 < 5
    assert not _alive(agent) and not _alive(unshare)
    assert not os.path.exists(sandbox.channel_socket_path)
    assert sandbox_cgroups(sandbox) == []


def test_agent_program_is_the_installed_script_unless_a_python_is_configured(sandbox_dir):
    """Unconfigured, the agent is the kata-agent script beside this interpreter (make venv's
    launcher: no site, no runpy), as kata-proxy and kata-shim are; [hypervisor.process] path
    names a Python that runs ``-m kata_agent``."""
    script = os.path.join(os.path.dirname(sys.executable), "kata-agent")
    expected = [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "kata_agent"]
    assert ProcessSandbox(sandbox_dir, "sb-cmd").agent_command() == expected
    assert ProcessSandbox(sandbox_dir, "sb-cmd", python="/opt/py").agent_command() == ["/opt/py", "-m", "kata_agent"]


async def test_the_running_agent_is_recognised_by_its_pid_file(sandbox, client):
    """The pid-reuse guard knows the agent however it was run (here: agent_command's program)."""
    await client.health.Check(health_pb2.CheckRequest(), timeout=30)
    assert ProcessSandbox(sandbox.sandbox_dir, sandbox.sandbox_id).pid == sandbox.pid


async def test_pid_file_of_another_process_is_not_trusted(sandbox_dir):
    sb = ProcessSandbox(sandbox_dir, "sb-stale")
    Path(sb.pid_file).write_text(f"{os.getpid()}\n")  # a live process, but not this sandbox's
    assert sb.pid is None
    await sb.stop()  # must not signal the test process
    assert not os.path.exists(sb.pid_file)


async def test_start_twice_is_refused(sandbox):
    from kata_runtime.hypervisor import HypervisorError

    with pytest.raises(HypervisorError, match="already running"):
        await sandbox.start()
    with pytest.raises(HypervisorError, match="already running"):
        await ProcessSandbox(sandbox.sandbox_dir, sandbox.sandbox_id).start()
