"""kata_agent.sandbox (the domain) and kata_agent.service (protobuf <-> domain) without grpc and
without containers: ids, lookups, the sandbox's own state, the fault vocabulary and its gRPC
statuses, the sysfs helpers. Needs neither root nor runc."""

from __future__ import annotations

import os

import pytest

from kata_agent.config import AgentConfig
from kata_agent.mount import MountError, StorageError
from kata_agent.network import NetworkError
from kata_agent.runc import RuncError
from kata_agent.sandbox import (ContainerStatus, Fault, Sandbox, SandboxError, _ps_table, as_sandbox_error,
                                online, runc_fault, use_sandbox_dns)
from kata_agent.service import handlers, status_of
from kata_grpc import protocol as status
from kata_grpc.protocol import RpcError
from kata_agent.spec import SpecError
from katapb import agent_pb2, health_pb2
from tests.support.processes import python_prints


@pytest.fixture
def sandbox(tmp_path):
    """A Sandbox touching nothing machine-wide (not started: no reaper, no runc)."""
    return Sandbox(AgentConfig(state_dir=str(tmp_path / "state"), shared_mount=str(tmp_path / "shared"),
                               manage_system=False))


def raises_fault(fault: Fault, fn, *args, **kwargs) -> str:
    with pytest.raises(SandboxError) as info:
        fn(*args, **kwargs)
    assert info.value.fault is fault, info.value.message
    return info.value.message


async def araises_fault(fault: Fault, coro) -> str:
    with pytest.raises(SandboxError) as info:
        await coro
    assert info.value.fault is fault, info.value.message
    return info.value.message


def test_the_domain_loads_without_grpc():
    code = ("import sys, kata_agent.sandbox, kata_agent.container\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'grpc' or m.endswith('_pb2_grpc')))")
    assert python_prints(code) == "[]"


def test_container_status_reads_as_runc_says_it():
    assert [f"{s}" for s in ContainerStatus] == ["creating", "created", "running", "paused", "stopped"]
    assert f"container is {ContainerStatus.PAUSED}" == "container is paused"


async def test_nothing_before_create_sandbox(sandbox):
    assert "CreateSandbox first" in raises_fault(Fault.WRONG_STATE, sandbox.container, "c1")
    raises_fault(Fault.INVALID, sandbox.container, "")
    # The id is checked before anything else.
    await araises_fault(Fault.INVALID, sandbox.create_container("../escape", None))
    await araises_fault(Fault.INVALID, sandbox.create_container("", None))
    await araises_fault(Fault.WRONG_STATE, sandbox.create_container("c1", None))


async def test_create_sandbox_once_then_destroy(sandbox, tmp_path):
    await sandbox.create(hostname="h1", sandbox_id="", dns=["nameserver 10.0.0.1"])
    assert (sandbox.created, sandbox.sandbox_id, sandbox.hostname) == (True, "h1", "h1")
    assert os.path.isdir(tmp_path / "shared")
    with open(sandbox.resolv_conf) as f:
        assert "nameserver 10.0.0.1" in f.read()
    assert os.stat(sandbox.resolv_conf).st_mode & 0o777 == 0o644
    await araises_fault(Fault.EXISTS, sandbox.create(hostname="h2", sandbox_id="sb2"))
    await araises_fault(Fault.INVALID, sandbox.create_container("c1", None))  # the spec is missing
    raises_fault(Fault.NOT_FOUND, sandbox.container, "c1")
    await sandbox.destroy()
    assert (sandbox.created, sandbox.sandbox_id, sandbox.resolv_conf) == (False, "", None)
    await sandbox.destroy()  # a sandbox not created: no error
    await sandbox.create(hostname="h2", sandbox_id="sb2")
    assert sandbox.sandbox_id == "sb2"


def test_resolv_conf_mount_gets_the_sandbox_copy():
    spec = {"mounts": [{"destination": "/etc/resolv.conf", "source": "/host/resolv.conf", "type": "bind",
                        "options": ["rbind", "rw"]},
                       {"destination": "/data", "source": "/host/data", "type": "bind", "options": ["rw"]}]}
    use_sandbox_dns(spec, "/run/sb/resolv.conf")
    assert spec["mounts"][0] == {"destination": "/etc/resolv.conf", "source": "/run/sb/resolv.conf",
                                 "type": "bind", "options": ["bind", "rbind", "ro"]}
    assert spec["mounts"][1]["options"] == ["rw"]


@pytest.mark.parametrize("message, fault", [
    ("container with id exists: c1 already exists", Fault.EXISTS),
    ("container \"c1\" does not exist", Fault.NOT_FOUND),
    ("exec: \"nosuchcmd\": executable file not found in $PATH", Fault.INVALID),
    ("open /no/such: no such file or directory", Fault.INVALID),
    ("cgroup: device or resource busy", Fault.INTERNAL),
])
def test_runc_errors_are_classified_by_their_message(message, fault):
    assert runc_fault(RuncError("exec", 1, message)) is fault


def test_domain_errors_as_sandbox_errors():
    assert as_sandbox_error(SpecError("bad")).fault is Fault.INVALID
    assert as_sandbox_error(StorageError("bad")).fault is Fault.INVALID
    assert as_sandbox_error(MountError(1, "mount failed")).fault is Fault.INTERNAL
    assert as_sandbox_error(NetworkError("NOT_FOUND", "no link")).fault is Fault.NOT_FOUND
    assert as_sandbox_error(NetworkError("INVALID_ARGUMENT", "bad mac")).fault is Fault.INVALID
    assert as_sandbox_error(ZeroDivisionError("a bug")) is None


def test_faults_as_grpc_statuses():
    expected = {Fault.NOT_FOUND: 5, Fault.INVALID: 3, Fault.EXISTS: 6, Fault.WRONG_STATE: 9,
                Fault.TIMED_OUT: 4, Fault.UNAVAILABLE: 14, Fault.INTERNAL: 13}
    for fault, code in expected.items():
        s = status_of("M", SandboxError(fault, "why"))
        assert (s.code, s.message) == (code, "why")
    eof = status_of("ReadStdout", SandboxError(Fault.EOF, "EOF"))
    assert (eof.code, eof.message) == (status.OUT_OF_RANGE, "EOF")
    bug = status_of("StartContainer", KeyError("x"))
    assert bug.code == status.INTERNAL and bug.message == "StartContainer: KeyError: 'x'"


async def call(table, path: str, message=b"") -> bytes:
    data = message if isinstance(message, bytes) else message.SerializeToString()
    return await table[path](data)


async def test_handlers_translate_requests_and_statuses(sandbox):
    table = handlers(sandbox)
    r = health_pb2.HealthCheckResponse.FromString(await call(table, "/grpc.Health/Check"))
    assert r.status == health_pb2.HealthCheckResponse.SERVING
    v = health_pb2.VersionCheckResponse.FromString(await call(table, "/grpc.Health/Version"))
    assert v.agent_version == sandbox.config.agent_version and v.grpc_version
    with pytest.raises(RpcError) as info:
        await call(table, "/grpc.AgentService/CopyFile", agent_pb2.CopyFileRequest())
    assert info.value.code == status.UNIMPLEMENTED and "CopyFile" in info.value.message
    with pytest.raises(RpcError) as info:
        await call(table, "/grpc.AgentService/ReadStdout",
                   agent_pb2.ReadStreamRequest(container_id="c1", exec_id="c1", len=10))
    assert info.value.code == status.FAILED_PRECONDITION
    with pytest.raises(RpcError) as info:
        await call(table, "/grpc.AgentService/StartContainer", b"\xff\xff\xff\xff")
    assert info.value.code == status.INTERNAL and "StartContainer" in info.value.message
    await call(table, "/grpc.AgentService/CreateSandbox", agent_pb2.CreateSandboxRequest(hostname="h"))
    assert sandbox.created and sandbox.hostname == "h"
    with pytest.raises(RpcError) as info:
        await call(table, "/grpc.AgentService/CreateSandbox", agent_pb2.CreateSandboxRequest())
    assert info.value.code == status.ALREADY_EXISTS


def test_guest_operations_outside_a_vm_touch_nothing(sandbox):
    assert not sandbox.config.machine_managed
    sandbox.set_guest_time(-1, 5_000_000)  # ignored before it is read: this agent shares the clock
    assert sandbox.online_cpu_mem(1) == 0
    d = sandbox.guest_details(mem_block_size=False)
    assert d.mem_block_size_bytes == 0 and d.version == sandbox.config.agent_version and "9p" in d.storage_handlers


def test_guest_time_out_of_range(tmp_path):
    vm = Sandbox(AgentConfig(state_dir=str(tmp_path), manage_system=True))
    assert vm.config.machine_managed
    raises_fault(Fault.INVALID, vm.set_guest_time, 1, 1_000_000)
    raises_fault(Fault.INVALID, vm.set_guest_time, -1, 0)


def test_online_writes_1_only_to_an_offline_file(tmp_path):
    off, on = tmp_path / "off", tmp_path / "on"
    off.write_text("0\n")
    on.write_text("1\n")
    assert online(str(off)) and off.read_text() == "1"
    assert not online(str(on)) and on.read_text() == "1\n"
    assert not online(str(tmp_path / "missing"))


def test_ps_table_keeps_the_header_and_the_containers_pids():
    out = b"UID PID PPID CMD\nroot 1 0 init\nroot 42 1 sleep 5\nroot 43 1 other\n"
    assert _ps_table(out, ["-ef"], [42]) == b"UID PID PPID CMD\nroot 42 1 sleep 5\n"
    raises_fault(Fault.INVALID, _ps_table, b"USER COMMAND\nroot sh\n", ["-o", "user,comm"], [1])
    raises_fault(Fault.INTERNAL, _ps_table, b"", ["-ef"], [1])
