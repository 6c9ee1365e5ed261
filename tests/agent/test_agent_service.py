"""kata_agent's gRPC service with real runc containers (process tier, no proxy)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal

import grpc
import pytest

from katapb import agent_pb2, health_pb2, oci_pb2
from tests.support.agent import AgentClient
from tests.support.oci import busybox_spec

pytestmark = pytest.mark.timeout(120)

Code = grpc.StatusCode


async def expect_error(code, coro):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await coro
    assert info.value.code() == code, f"{info.value.code()} {info.value.details()}"
    assert info.value.details(), "an error must say what is wrong"
    return info.value.details()


async def test_echo(agent: AgentClient):
    out, err, status = await agent.run(["echo", "hello from busybox"])
    assert (out, err, status) == (b"hello from busybox\n", b"", 0)


@pytest.mark.parametrize("code", [0, 3])
async def test_exit_codes(agent: AgentClient, code):
    out, err, status = await agent.run(["sh", "-c", f"echo bye; exit {code}"])
    assert out == b"bye\n"
    assert status == code


async def test_sigkill_is_137(agent: AgentClient):
    cid = await agent.create(["sleep", "1000"], start=True)
    await agent.signal(cid, signal.SIGKILL)
    assert await agent.wait(cid) == 128 + signal.SIGKILL
    assert await agent.read_all(cid) == b""
    # A late signal to a dead process is discarded, not an error.
    await agent.signal(cid, signal.SIGTERM)


async def test_wait_then_read_after_exit(agent: AgentClient):
    """Output written just before exit is all there when read after WaitProcess."""
    n = 1_500_000
    cid = await agent.create(["sh", "-c", f"head -c {n} /dev/zero; echo done >&2"], start=True)
    assert await agent.wait(cid) == 0
    assert await agent.read_all(cid, stderr=True) == b"done\n"
    data = await agent.read_all(cid, n=65536)
    assert len(data) == n and data.count(0) == n


async def test_stdin_roundtrip_64mib(agent: AgentClient):
    payload = os.urandom(64 << 20)
    cid = await agent.create(["cat"], start=True)

    async def feed():
        chunk = 1 << 20
        for off in range(0, len(payload), chunk):
            assert await agent.write(cid, payload[off:off + chunk]) == min(chunk, len(payload) - off)
        await agent.close_stdin(cid)

    h = hashlib.sha256()
    _, count = await asyncio.gather(feed(), agent.read_all(cid, sink=h.update))
    assert count == len(payload)
    assert h.digest() == hashlib.sha256(payload).digest()
    assert await agent.wait(cid) == 0


async def test_stdout_100mib_before_exit(agent: AgentClient):
    """100 MiB written right before exit: every byte arrives, in order."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+\n"  # 64 bytes
    total = 100 << 20
    cid = await agent.create(["sh", "-c", f"yes {line[:-1].decode()} | head -c {total}; exit 0"],
                             start=True)
    expected_chunk = line * 16384  # 1 MiB
    got = bytearray()
    mismatches = 0
    seen = 0

    def sink(data):
        nonlocal seen, mismatches
        got.extend(data)
        while len(got) >= len(expected_chunk):
            if got[:len(expected_chunk)] != expected_chunk:
                mismatches += 1
            del got[:len(expected_chunk)]
            seen += len(expected_chunk)

    count = await agent.read_all(cid, sink=sink)
    assert count == total
    assert mismatches == 0 and not got and seen == total
    assert await agent.wait(cid) == 0


async def test_stdout_stderr_kept_apart(agent: AgentClient):
    script = "i=0; while [ $i -lt 3000 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done"
    out, err, status = await agent.run(["sh", "-c", script])
    assert status == 0
    assert out.decode().split() == [f"out{i}" for i in range(3000)]
    assert err.decode().split() == [f"err{i}" for i in range(3000)]


async def test_exec_into_running_container(agent: AgentClient):
    cid = await agent.create(["sleep", "1000"], start=True)
    eid = await agent.exec(cid, ["sh", "-c", "echo exec-ok; echo on-err >&2; hostname; exit 5"])
    out, err = await asyncio.gather(agent.read_all(cid, eid), agent.read_all(cid, eid, stderr=True))
    assert out == b"exec-ok\ncontainer\n"
    assert err == b"on-err\n"
    assert await agent.wait(cid, eid) == 5
    # Waited for and drained: the exec is forgotten.
    await expect_error(Code.NOT_FOUND, agent.wait(cid, eid))
    # An exec with stdin.
    eid2 = await agent.exec(cid, ["cat"])
    assert await agent.write(cid, b"ping\n", eid2) == 5
    await agent.close_stdin(cid, eid2)
    assert await agent.read_all(cid, eid2) == b"ping\n"
    assert await agent.wait(cid, eid2) == 0
    # Killing an exec'd process leaves the init alone.
    eid3 = await agent.exec(cid, ["sleep", "1000"])
    await agent.signal(cid, signal.SIGKILL, eid3)
    assert await agent.wait(cid, eid3) == 137
    await expect_error(Code.ALREADY_EXISTS, agent.exec(cid, ["true"], exec_id=cid))
    await agent.signal(cid, signal.SIGKILL)
    assert await agent.wait(cid) == 137
    await expect_error(Code.FAILED_PRECONDITION, agent.exec(cid, ["true"]))


async def test_signals_delivered(agent: AgentClient):
    script = 'trap "echo got TERM; exit 7" TERM; echo ready; while true; do sleep 0.05; done'
    cid = await agent.create(["sh", "-c", script], start=True)
    assert await agent.read(cid) == b"ready\n"
    await agent.signal(cid, signal.SIGTERM)
    assert await agent.read_all(cid) == b"got TERM\n"
    assert await agent.wait(cid) == 7
    # exec_id "" signals every process of the container.
    cid2 = await agent.create(["sleep", "1000"], start=True)
    await agent.signal(cid2, signal.SIGKILL, exec_id="")
    assert await agent.wait(cid2) == 137


async def test_pause_resume(agent: AgentClient):
    cid = await agent.create(["sh", "-c", "while true; do echo tick; sleep 0.02; done"], start=True)
    assert (await agent.read(cid)).startswith(b"tick")
    await agent.stub.PauseContainer(agent_pb2.PauseContainerRequest(container_id=cid))
    await expect_error(Code.FAILED_PRECONDITION,
                       agent.stub.PauseContainer(agent_pb2.PauseContainerRequest(container_id=cid)))
    # Drain what was written before the freeze, then nothing more may come.
    while True:
        try:
            await agent.read(cid, timeout=0.3)
        except grpc.aio.AioRpcError as e:
            assert e.code() == Code.DEADLINE_EXCEEDED
            break
    await expect_error(Code.DEADLINE_EXCEEDED, agent.read(cid, timeout=0.5))
    await agent.stub.ResumeContainer(agent_pb2.ResumeContainerRequest(container_id=cid))
    assert b"tick" in await agent.read(cid, timeout=5)
    await expect_error(Code.FAILED_PRECONDITION,
                       agent.stub.ResumeContainer(agent_pb2.ResumeContainerRequest(container_id=cid)))
    # SIGKILL to a paused container's init kills it (the agent thaws it).
    await agent.stub.PauseContainer(agent_pb2.PauseContainerRequest(container_id=cid))
    await agent.signal(cid, signal.SIGKILL)
    assert await agent.wait(cid, timeout=10) == 137


async def test_stats_update_and_list(agent: AgentClient):
    cid = await agent.create(["sh", "-c", "echo up; sleep 1000 & wait"], start=True)
    assert await agent.read(cid) == b"up\n"
    # "up" is printed before sh forks sleep: wait until both are in the container.
    for _ in range(200):
        st = (await agent.stub.StatsContainer(agent_pb2.StatsContainerRequest(container_id=cid))).cgroup_stats
        if st.pids_stats.current >= 2:
            break
        await asyncio.sleep(0.02)
    assert st.memory_stats.usage.usage > 0
    assert st.pids_stats.current >= 2  # sh and sleep
    assert st.cpu_stats.cpu_usage.total_usage > 0
    assert len(st.memory_stats.stats) > 0
    # UpdateContainer: a memory and pids limit, visible in the stats.
    limit = 256 << 20
    await agent.stub.UpdateContainer(agent_pb2.UpdateContainerRequest(
        container_id=cid, resources=oci_pb2.LinuxResources(
            Memory=oci_pb2.LinuxMemory(Limit=limit), Pids=oci_pb2.LinuxPids(Limit=123))))
    st = (await agent.stub.StatsContainer(agent_pb2.StatsContainerRequest(container_id=cid))).cgroup_stats
    assert st.memory_stats.usage.limit == limit
    assert st.pids_stats.limit == 123
    # ListProcesses: JSON pids and a ps table limited to the container.
    r = await agent.stub.ListProcesses(agent_pb2.ListProcessesRequest(container_id=cid, format="json"))
    pids = json.loads(r.process_list)
    assert len(pids) == 2
    r = await agent.stub.ListProcesses(agent_pb2.ListProcessesRequest(container_id=cid, format="table"))
    table = r.process_list.decode().splitlines()
    assert "PID" in table[0].split() and len(table) == 3
    assert any("sleep 1000" in line for line in table[1:])
    await expect_error(Code.INVALID_ARGUMENT, agent.stub.ListProcesses(
        agent_pb2.ListProcessesRequest(container_id=cid, format="yaml")))


async def test_tty_size_from_winresize(agent: AgentClient):
    cid = await agent.create(["sh", "-c", "stty size; read x; stty size"], terminal=True)
    await agent.stub.TtyWinResize(agent_pb2.TtyWinResizeRequest(
        container_id=cid, exec_id=cid, row=37, column=91))
    await agent.start(cid)
    got = b""
    while b"37 91" not in got:
        got += await agent.read(cid)
    await agent.stub.TtyWinResize(agent_pb2.TtyWinResizeRequest(
        container_id=cid, exec_id=cid, row=50, column=120))
    await agent.write(cid, b"go\n")
    got += await agent.read_all(cid)
    assert got.replace(b"\r", b"").split(b"\n")[0] == b"37 91"
    assert b"50 120\r\n" in got  # the tty maps \n to \r\n
    assert await agent.wait(cid) == 0
    # A terminal has no separate stderr.
    assert await agent.read(cid, stderr=True) == b""


async def test_tty_exec_and_close_stdin(agent: AgentClient):
    cid = await agent.create(["sleep", "1000"], start=True)
    eid = await agent.exec(cid, ["sh", "-c", "cat; echo after-eof"], terminal=True)
    await agent.write(cid, b"typed\n", eid)
    await agent.close_stdin(cid, eid)  # VEOF on the terminal
    out = await agent.read_all(cid, eid)
    assert b"after-eof" in out and b"typed" in out
    assert await agent.wait(cid, eid) == 0
    await expect_error(Code.FAILED_PRECONDITION, agent.stub.TtyWinResize(
        agent_pb2.TtyWinResizeRequest(container_id=cid, exec_id=cid, row=1, column=1)))


async def test_absent_linux_resources(agent: AgentClient):
    # busybox_spec has Linux without Resources; also try a spec with no Linux at all.
    cid = "nolinux-" + os.urandom(4).hex()
    spec = busybox_spec(cid, ["echo", "no linux section"])
    spec.ClearField("Linux")
    assert not spec.HasField("Linux")
    await agent.create(None, cid=cid, spec=spec, start=True)
    assert await agent.read_all(cid) == b"no linux section\n"
    assert await agent.wait(cid) == 0


async def test_readonly_rootfs_gets_mountpoints(agent: AgentClient):
    cid = "ro-" + os.urandom(4).hex()
    spec = busybox_spec(cid, ["sh", "-c", "ls -d /newmnt && touch /x 2>/dev/null || echo ro"],
                        readonly=True)
    spec.Mounts.append(oci_pb2.Mount(destination="/newmnt", source="tmpfs", type="tmpfs"))
    keep = [m for m in spec.Mounts if m.destination != "/dev"]  # the agent adds a /dev tmpfs
    del spec.Mounts[:]
    spec.Mounts.extend(keep)
    await agent.create(None, cid=cid, spec=spec, start=True)
    assert await agent.read_all(cid) == b"/newmnt\nro\n"
    assert await agent.wait(cid) == 0


async def test_malformed_requests(agent: AgentClient):
    s = agent.stub
    cid = "m-" + os.urandom(4).hex()
    await expect_error(Code.INVALID_ARGUMENT, s.CreateContainer(
        agent_pb2.CreateContainerRequest(container_id=cid)))  # no OCI spec
    await expect_error(Code.INVALID_ARGUMENT, s.CreateContainer(
        agent_pb2.CreateContainerRequest(container_id="", OCI=busybox_spec("x", ["true"]))))
    await expect_error(Code.INVALID_ARGUMENT, s.CreateContainer(
        agent_pb2.CreateContainerRequest(container_id="../escape", OCI=busybox_spec("x", ["true"]))))
    await expect_error(Code.INVALID_ARGUMENT, s.CreateContainer(
        agent_pb2.CreateContainerRequest(container_id=cid, OCI=busybox_spec(cid, []))))  # no args
    bad_ns = busybox_spec(cid, ["true"])
    bad_ns.Linux.Namespaces.add(Type="bogus")
    await expect_error(Code.INVALID_ARGUMENT, s.CreateContainer(
        agent_pb2.CreateContainerRequest(container_id=cid, OCI=bad_ns)))
    # No rootfs shared for this id.
    await expect_error(Code.FAILED_PRECONDITION, s.CreateContainer(
        agent_pb2.CreateContainerRequest(container_id=cid, OCI=busybox_spec(cid, ["true"]))))
    # A program that does not exist.
    missing = await expect_error(Code.INVALID_ARGUMENT, agent.create(["/no/such/program"]))
    assert "no/such/program" in missing
    await expect_error(Code.NOT_FOUND, s.StartContainer(
        agent_pb2.StartContainerRequest(container_id="nope")))
    await expect_error(Code.NOT_FOUND, s.ReadStdout(
        agent_pb2.ReadStreamRequest(container_id="nope", exec_id="x", len=10)))
    await expect_error(Code.INVALID_ARGUMENT, s.WaitProcess(agent_pb2.WaitProcessRequest()))
    live = await agent.create(["sleep", "1000"])
    await expect_error(Code.ALREADY_EXISTS, s.CreateContainer(
        agent_pb2.CreateContainerRequest(container_id=live, OCI=busybox_spec(live, ["true"]))))
    await expect_error(Code.NOT_FOUND, s.ReadStdout(
        agent_pb2.ReadStreamRequest(container_id=live, exec_id="no-such-exec", len=10)))
    await expect_error(Code.INVALID_ARGUMENT, s.ReadStdout(
        agent_pb2.ReadStreamRequest(container_id=live, exec_id=live, len=0)))
    await expect_error(Code.INVALID_ARGUMENT, s.ExecProcess(
        agent_pb2.ExecProcessRequest(container_id=live, exec_id="e1")))  # no process
    await expect_error(Code.INVALID_ARGUMENT, s.SignalProcess(
        agent_pb2.SignalProcessRequest(container_id=live, exec_id=live, signal=1000)))
    await expect_error(Code.INVALID_ARGUMENT, s.UpdateContainer(
        agent_pb2.UpdateContainerRequest(container_id=live)))
    await agent.start(live)
    await expect_error(Code.FAILED_PRECONDITION, agent.start(live))
    await expect_error(Code.ALREADY_EXISTS, s.CreateSandbox(agent_pb2.CreateSandboxRequest()))
    details = await expect_error(Code.UNIMPLEMENTED, s.CopyFile(agent_pb2.CopyFileRequest()))
    assert "CopyFile" in details
    await expect_error(Code.UNIMPLEMENTED, s.StartTracing(agent_pb2.StartTracingRequest()))  # ListRoutes: issue 15
    # Bytes that are not a protobuf message at all.
    raw = agent.channel.unary_unary("/grpc.AgentService/StartContainer")
    with pytest.raises(grpc.aio.AioRpcError):
        await raw(b"\xff\xff\xff\xff")
    # ...and the agent keeps serving.
    r = await agent.health.Check(health_pb2.CheckRequest())
    assert r.status == health_pb2.HealthCheckResponse.SERVING
    v = await agent.health.Version(health_pb2.CheckRequest())
    assert v.agent_version and v.grpc_version
    out, _, status = await agent.run(["echo", "still serving"])
    assert (out, status) == (b"still serving\n", 0)


async def test_guest_details_and_noops(agent: AgentClient):
    r = await agent.stub.GetGuestDetails(agent_pb2.GuestDetailsRequest(mem_block_size=True))
    assert r.agent_details.version
    # The standalone agent is not a VM: these change nothing on the host.
    await agent.stub.OnlineCPUMem(agent_pb2.OnlineCPUMemRequest(nb_cpus=1))
    await agent.stub.SetGuestDateTime(agent_pb2.SetGuestDateTimeRequest(Sec=1, Usec=0))
    import time
    assert time.time() > 1_600_000_000


async def test_remove_kills_and_wakes_waiters(agent: AgentClient):
    cid = await agent.create(["sleep", "1000"], start=True)
    waiter = asyncio.ensure_future(agent.wait(cid))
    reader = asyncio.ensure_future(agent.read_all(cid))
    await asyncio.sleep(0.1)
    await agent.stub.RemoveContainer(agent_pb2.RemoveContainerRequest(container_id=cid, timeout=10))
    assert await waiter == 137
    assert await reader == b""
    assert cid not in agent.server.leftover_containers()
    await expect_error(Code.NOT_FOUND, agent.wait(cid))


# -- a process's output ends at its exit (issue 11, item 2) -------------------


async def read_out_and_err(agent: AgentClient, cid: str, eid: str, timeout: float = 10):
    """Both streams of a process to EOF, which must come within ``timeout`` seconds."""
    return await asyncio.wait_for(
        asyncio.gather(agent.read_all(cid, eid), agent.read_all(cid, eid, stderr=True)), timeout)


async def test_exec_leaving_a_background_child_ends(agent: AgentClient):
    cid = await agent.create(["sleep", "300"], start=True)
    eid = await agent.exec(cid, ["sh", "-c", "sleep 300 & echo started"])
    out, err = await read_out_and_err(agent, cid, eid)
    assert (out, err) == (b"started\n", b"")
    assert await agent.wait(cid, eid) == 0
    await expect_error(Code.NOT_FOUND, agent.wait(cid, eid))  # waited and drained: forgotten


async def test_tty_exec_of_a_shell_leaving_a_background_job_ends(agent: AgentClient):
    cid = await agent.create(["sleep", "300"], start=True)
    eid = await agent.exec(cid, ["sh", "-i"], terminal=True)
    for line in (b"sleep 300 &\n", b"echo job-$((6*7))\n", b"exit\n"):
        await agent.write(cid, line, eid)
    out = await asyncio.wait_for(agent.read_all(cid, eid), 10)
    assert b"job-42" in out
    # The terminal closed with the exit: no resize, no input any more.
    details = await expect_error(Code.FAILED_PRECONDITION, agent.stub.TtyWinResize(
        agent_pb2.TtyWinResizeRequest(container_id=cid, exec_id=eid, row=1, column=1)))
    assert "exited" in details
    details = await expect_error(Code.FAILED_PRECONDITION, agent.write(cid, b"ls\n", eid))
    assert "exited" in details
    assert await agent.wait(cid, eid) == 0


async def test_init_leaving_a_background_child_ends(agent: AgentClient):
    """(The kernel kills the rest of init's pid namespace when init exits, so this
    passed before too; it guards the init path of the same rule.)"""
    cid = await agent.create(["sh", "-c", "sleep 300 & echo init-started"], start=True)
    out, err = await read_out_and_err(agent, cid, cid)
    assert (out, err) == (b"init-started\n", b"")
    assert await agent.wait(cid) == 0


async def test_8mib_written_just_before_exit_with_a_background_child(agent: AgentClient):
    """Slowly read: all 8 MiB arrive in order, then EOF, though `sleep` holds the pipe."""
    line = b"0123456789abcdef0123456789abcde\n"  # 32 bytes
    n = 8 << 20
    cid = await agent.create(["sleep", "300"], start=True)
    eid = await agent.exec(cid, ["sh", "-c", f"sleep 300 & yes {line[:-1].decode()} | head -c {n}"])
    got = bytearray()

    async def slow_reader():
        reads = 0
        while data := await agent.read(cid, eid, n=16384):
            got.extend(data)
            reads += 1
            if reads % 16 == 0:
                await asyncio.sleep(0.005)

    await asyncio.wait_for(slow_reader(), 60)
    assert len(got) == n and got == line * (n // len(line))
    assert await agent.wait(cid, eid) == 0


# -- each runc call reports its own errors (issue 11, item 3) -----------------


async def test_failed_execs_each_name_only_their_own_cause(agent: AgentClient):
    cid = await agent.create(["sleep", "300"], start=True)
    causes = {"nosuchcmd": "not found", "/no/such/binary": "no such file or directory",
              "/etc/passwd": "permission denied"}
    for program, cause in causes.items():
        details = await expect_error(Code.INVALID_ARGUMENT, agent.exec(cid, [program]))
        assert program in details and cause in details.lower(), details
        others = [p for p in causes if p != program]
        assert not any(p in details for p in others), f"{program}: {details}"
    # Each call's error channel is gone with the call: no runc log is left anywhere.
    left = [os.path.join(d, f) for d, _, files in os.walk(agent.server.state_dir)
            for f in files if f.endswith(".log")]
    assert left == []
