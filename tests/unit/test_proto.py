"""Wire-compatibility guard for the agent API (proto/katapb).

The numbers below are those of the Kata Containers 1.x agent
(protocols/grpc/{agent,oci,health}.proto, pkg/types/types.proto). A change to
a .proto that renames a service or method, changes a request/response type or
renumbers a field fails here.
"""

import pytest
from google.protobuf.descriptor import FieldDescriptor as FD

from katapb import agent_pb2, agent_pb2_grpc, cache_pb2, health_pb2, health_pb2_grpc, oci_pb2, types_pb2

EMPTY = "google.protobuf.Empty"

AGENT_METHODS = {
    "CreateContainer": ("grpc.CreateContainerRequest", EMPTY),
    "StartContainer": ("grpc.StartContainerRequest", EMPTY),
    "RemoveContainer": ("grpc.RemoveContainerRequest", EMPTY),
    "ExecProcess": ("grpc.ExecProcessRequest", EMPTY),
    "SignalProcess": ("grpc.SignalProcessRequest", EMPTY),
    "WaitProcess": ("grpc.WaitProcessRequest", "grpc.WaitProcessResponse"),
    "ListProcesses": ("grpc.ListProcessesRequest", "grpc.ListProcessesResponse"),
    "UpdateContainer": ("grpc.UpdateContainerRequest", EMPTY),
    "StatsContainer": ("grpc.StatsContainerRequest", "grpc.StatsContainerResponse"),
    "PauseContainer": ("grpc.PauseContainerRequest", EMPTY),
    "ResumeContainer": ("grpc.ResumeContainerRequest", EMPTY),
    "WriteStdin": ("grpc.WriteStreamRequest", "grpc.WriteStreamResponse"),
    "ReadStdout": ("grpc.ReadStreamRequest", "grpc.ReadStreamResponse"),
    "ReadStderr": ("grpc.ReadStreamRequest", "grpc.ReadStreamResponse"),
    "CloseStdin": ("grpc.CloseStdinRequest", EMPTY),
    "TtyWinResize": ("grpc.TtyWinResizeRequest", EMPTY),
    "UpdateInterface": ("grpc.UpdateInterfaceRequest", "types.Interface"),
    "UpdateRoutes": ("grpc.UpdateRoutesRequest", "grpc.Routes"),
    "ListInterfaces": ("grpc.ListInterfacesRequest", "grpc.Interfaces"),
    "ListRoutes": ("grpc.ListRoutesRequest", "grpc.Routes"),
    "AddARPNeighbors": ("grpc.AddARPNeighborsRequest", EMPTY),
    "StartTracing": ("grpc.StartTracingRequest", EMPTY),
    "StopTracing": ("grpc.StopTracingRequest", EMPTY),
    "CreateSandbox": ("grpc.CreateSandboxRequest", EMPTY),
    "DestroySandbox": ("grpc.DestroySandboxRequest", EMPTY),
    "OnlineCPUMem": ("grpc.OnlineCPUMemRequest", EMPTY),
    "ReseedRandomDev": ("grpc.ReseedRandomDevRequest", EMPTY),
    "GetGuestDetails": ("grpc.GuestDetailsRequest", "grpc.GuestDetailsResponse"),
    "MemHotplugByProbe": ("grpc.MemHotplugByProbeRequest", EMPTY),
    "SetGuestDateTime": ("grpc.SetGuestDateTimeRequest", EMPTY),
    "CopyFile": ("grpc.CopyFileRequest", EMPTY),
    "GetOOMEvent": ("grpc.GetOOMEventRequest", "grpc.OOMEvent"),
}

HEALTH_METHODS = {
    "Check": ("grpc.CheckRequest", "grpc.HealthCheckResponse"),
    "Version": ("grpc.CheckRequest", "grpc.VersionCheckResponse"),
}

S, B, U32, I32, I64, U64, BOOL, MSG, ENUM = (
    FD.TYPE_STRING, FD.TYPE_BYTES, FD.TYPE_UINT32, FD.TYPE_INT32, FD.TYPE_INT64,
    FD.TYPE_UINT64, FD.TYPE_BOOL, FD.TYPE_MESSAGE, FD.TYPE_ENUM,
)

# message full name -> {field name: (number, wire type[, message/enum type full name])}
FIELDS = {
    "grpc.CreateContainerRequest": {
        "container_id": (1, S), "exec_id": (2, S), "string_user": (3, MSG, "grpc.StringUser"),
        "devices": (4, MSG, "grpc.Device"), "storages": (5, MSG, "grpc.Storage"),
        "OCI": (6, MSG, "grpc.Spec"), "sandbox_pidns": (7, BOOL), "agent_pidns": (8, BOOL),
    },
    "grpc.StartContainerRequest": {"container_id": (1, S)},
    "grpc.RemoveContainerRequest": {"container_id": (1, S), "timeout": (2, U32)},
    "grpc.ExecProcessRequest": {
        "container_id": (1, S), "exec_id": (2, S), "string_user": (3, MSG, "grpc.StringUser"),
        "process": (4, MSG, "grpc.Process"),
    },
    "grpc.SignalProcessRequest": {"container_id": (1, S), "exec_id": (2, S), "signal": (3, U32)},
    "grpc.WaitProcessRequest": {"container_id": (1, S), "exec_id": (2, S)},
    "grpc.WaitProcessResponse": {"status": (1, I32)},
    "grpc.ListProcessesRequest": {"container_id": (1, S), "format": (2, S), "args": (3, S)},
    "grpc.ListProcessesResponse": {"process_list": (1, B)},
    "grpc.UpdateContainerRequest": {
        "container_id": (1, S), "resources": (2, MSG, "grpc.LinuxResources"),
    },
    "grpc.WriteStreamRequest": {"container_id": (1, S), "exec_id": (2, S), "data": (3, B)},
    "grpc.WriteStreamResponse": {"len": (1, U32)},
    "grpc.ReadStreamRequest": {"container_id": (1, S), "exec_id": (2, S), "len": (3, U32)},
    "grpc.ReadStreamResponse": {"data": (1, B)},
    "grpc.CloseStdinRequest": {"container_id": (1, S), "exec_id": (2, S)},
    "grpc.TtyWinResizeRequest": {
        "container_id": (1, S), "exec_id": (2, S), "row": (3, U32), "column": (4, U32),
    },
    "grpc.CreateSandboxRequest": {
        "hostname": (1, S), "dns": (2, S), "storages": (3, MSG, "grpc.Storage"),
        "sandbox_pidns": (4, BOOL), "sandbox_id": (5, S), "guest_hook_path": (6, S),
        "kernel_modules": (7, MSG, "grpc.KernelModule"),
    },
    "grpc.DestroySandboxRequest": {},
    "grpc.Storage": {
        "driver": (1, S), "driver_options": (2, S), "source": (3, S), "fstype": (4, S),
        "options": (5, S), "mount_point": (6, S),
    },
    "grpc.Device": {
        "id": (1, S), "type": (2, S), "vm_path": (3, S), "container_path": (4, S),
        "options": (5, S),
    },
    "grpc.StringUser": {"uid": (1, S), "gid": (2, S), "additionalGids": (3, S)},
    "grpc.GuestDetailsRequest": {"mem_block_size": (1, BOOL), "mem_hotplug_probe": (2, BOOL)},
    "grpc.SetGuestDateTimeRequest": {"Sec": (1, I64), "Usec": (2, I64)},
    "grpc.OnlineCPUMemRequest": {"wait": (1, BOOL), "nb_cpus": (2, U32), "cpu_only": (3, BOOL)},
    "grpc.ReseedRandomDevRequest": {"data": (2, B)},
    "grpc.StatsContainerResponse": {
        "cgroup_stats": (1, MSG, "grpc.CgroupStats"),
        "network_stats": (2, MSG, "grpc.NetworkStats"),
    },
    "grpc.OOMEvent": {"container_id": (1, S)},
    "grpc.CheckRequest": {"service": (1, S)},
    "grpc.HealthCheckResponse": {
        "status": (1, ENUM, "grpc.HealthCheckResponse.ServingStatus"),
    },
    "grpc.VersionCheckResponse": {"grpc_version": (1, S), "agent_version": (2, S)},
    # oci.proto
    "grpc.Spec": {
        "Version": (1, S), "Process": (2, MSG, "grpc.Process"), "Root": (3, MSG, "grpc.Root"),
        "Hostname": (4, S), "Mounts": (5, MSG, "grpc.Mount"), "Hooks": (6, MSG, "grpc.Hooks"),
        "Annotations": (7, MSG), "Linux": (8, MSG, "grpc.Linux"),
        "Solaris": (9, MSG, "grpc.Solaris"), "Windows": (10, MSG, "grpc.Windows"),
    },
    "grpc.Process": {
        "Terminal": (1, BOOL), "ConsoleSize": (2, MSG, "grpc.Box"),
        "User": (3, MSG, "grpc.User"), "Args": (4, S), "Env": (5, S), "Cwd": (6, S),
        "Capabilities": (7, MSG, "grpc.LinuxCapabilities"),
        "Rlimits": (8, MSG, "grpc.POSIXRlimit"), "NoNewPrivileges": (9, BOOL),
        "ApparmorProfile": (10, S), "OOMScoreAdj": (11, U32), "SelinuxLabel": (12, S),
    },
    "grpc.Box": {"Height": (1, U32), "Width": (2, U32)},
    "grpc.User": {"UID": (1, U32), "GID": (2, U32), "AdditionalGids": (3, U32), "Username": (4, S)},
    "grpc.Root": {"Path": (1, S), "Readonly": (2, BOOL)},
    "grpc.Mount": {"destination": (1, S), "source": (2, S), "type": (3, S), "options": (4, S)},
    "grpc.Linux": {
        "UIDMappings": (1, MSG, "grpc.LinuxIDMapping"),
        "GIDMappings": (2, MSG, "grpc.LinuxIDMapping"), "Sysctl": (3, MSG),
        "Resources": (4, MSG, "grpc.LinuxResources"), "CgroupsPath": (5, S),
        "Namespaces": (6, MSG, "grpc.LinuxNamespace"), "Devices": (7, MSG, "grpc.LinuxDevice"),
        "Seccomp": (8, MSG, "grpc.LinuxSeccomp"), "RootfsPropagation": (9, S),
        "MaskedPaths": (10, S), "ReadonlyPaths": (11, S), "MountLabel": (12, S),
        "IntelRdt": (13, MSG, "grpc.LinuxIntelRdt"),
    },
    "grpc.LinuxNamespace": {"Type": (1, S), "Path": (2, S)},
    "grpc.LinuxResources": {
        "Devices": (1, MSG, "grpc.LinuxDeviceCgroup"), "Memory": (2, MSG, "grpc.LinuxMemory"),
        "CPU": (3, MSG, "grpc.LinuxCPU"), "Pids": (4, MSG, "grpc.LinuxPids"),
        "BlockIO": (5, MSG, "grpc.LinuxBlockIO"),
        "HugepageLimits": (6, MSG, "grpc.LinuxHugepageLimit"),
        "Network": (7, MSG, "grpc.LinuxNetwork"),
    },
    "grpc.LinuxMemory": {
        "Limit": (1, I64), "Reservation": (2, I64), "Swap": (3, I64), "Kernel": (4, I64),
        "KernelTCP": (5, I64), "Swappiness": (6, U64), "DisableOOMKiller": (7, BOOL),
    },
    "grpc.LinuxCPU": {
        "Shares": (1, U64), "Quota": (2, I64), "Period": (3, U64), "RealtimeRuntime": (4, I64),
        "RealtimePeriod": (5, U64), "Cpus": (6, S), "Mems": (7, S),
    },
    # types.proto
    "types.Interface": {
        "device": (1, S), "name": (2, S), "IPAddresses": (3, MSG, "types.IPAddress"),
        "mtu": (4, U64), "hwAddr": (5, S), "pciAddr": (6, S), "type": (7, S),
        "raw_flags": (8, U32),
    },
    "types.Route": {
        "dest": (1, S), "gateway": (2, S), "device": (3, S), "source": (4, S), "scope": (5, U32),
    },
    # cache.proto (Kata 1.x's VMCache, protocols/cache/cache.proto)
    "cache.GrpcVMConfig": {"Data": (1, B), "AgentConfig": (2, B)},
    "cache.GrpcVM": {
        "id": (1, S), "hypervisor": (2, B), "proxyPid": (3, I64), "proxyURL": (4, S), "cpu": (5, U32),
        "memory": (6, U32), "cpuDelta": (7, U32),
    },
    "cache.GrpcVMStatus": {"pid": (1, I64), "cpu": (2, U32), "memory": (3, U32)},
    "cache.GrpcStatus": {"pid": (1, I64), "vmStatus": (2, MSG, "cache.GrpcVMStatus")},
}

POOL = agent_pb2.DESCRIPTOR.pool


def test_service_full_names():
    assert agent_pb2.DESCRIPTOR.package == "grpc"
    assert health_pb2.DESCRIPTOR.package == "grpc"
    assert oci_pb2.DESCRIPTOR.package == "grpc"
    assert types_pb2.DESCRIPTOR.package == "types"
    assert agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name == "grpc.AgentService"
    assert health_pb2.DESCRIPTOR.services_by_name["Health"].full_name == "grpc.Health"


@pytest.mark.parametrize(
    ("service", "methods"),
    [("grpc.AgentService", AGENT_METHODS), ("grpc.Health", HEALTH_METHODS)],
)
def test_methods(service, methods):
    svc = POOL.FindServiceByName(service)
    got = {
        m.name: (m.input_type.full_name, m.output_type.full_name) for m in svc.methods
    }
    assert got == methods
    for m in svc.methods:
        assert not m.client_streaming and not m.server_streaming, m.name


def test_the_vm_cache_service_has_kata_1x_names():
    svc = cache_pb2.DESCRIPTOR.services_by_name["CacheService"]
    assert svc.full_name == "cache.CacheService"
    got = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in svc.methods}
    empty = "google.protobuf.Empty"
    assert got == {"Config": (empty, "cache.GrpcVMConfig"), "GetBaseVM": (empty, "cache.GrpcVM"),
                   "Status": (empty, "cache.GrpcStatus"), "Quit": (empty, empty)}


def test_stubs_and_servicers_exist():
    for name in AGENT_METHODS:
        assert hasattr(agent_pb2_grpc.AgentServiceServicer, name)
    for name in HEALTH_METHODS:
        assert hasattr(health_pb2_grpc.HealthServicer, name)
    assert callable(agent_pb2_grpc.AgentServiceStub)
    assert callable(agent_pb2_grpc.add_AgentServiceServicer_to_server)
    assert callable(health_pb2_grpc.HealthStub)
    assert callable(health_pb2_grpc.add_HealthServicer_to_server)


@pytest.mark.parametrize("message", sorted(FIELDS))
def test_field_numbers(message):
    desc = POOL.FindMessageTypeByName(message)
    expected = FIELDS[message]
    assert set(desc.fields_by_name) == set(expected), "fields added or removed"
    for name, spec in expected.items():
        field = desc.fields_by_name[name]
        assert field.number == spec[0], f"{message}.{name} number"
        assert field.type == spec[1], f"{message}.{name} type"
        if len(spec) > 2:
            sub = field.message_type or field.enum_type
            assert sub.full_name == spec[2], f"{message}.{name} type name"


def test_health_enum_values():
    enum = health_pb2.HealthCheckResponse.ServingStatus
    assert enum.Value("UNKNOWN") == 0
    assert enum.Value("SERVING") == 1
    assert enum.Value("NOT_SERVING") == 2


def test_known_wire_bytes():
    # Bytes a Go client of the original agent would send, built by hand.
    req = agent_pb2.WriteStreamRequest(container_id="c", exec_id="e", data=b"hi")
    assert req.SerializeToString() == b"\x0a\x01c\x12\x01e\x1a\x02hi"
    req = agent_pb2.TtyWinResizeRequest(container_id="c", exec_id="c", row=24, column=80)
    assert req.SerializeToString() == b"\x0a\x01c\x12\x01c\x18\x18\x20\x50"
    resp = agent_pb2.WaitProcessResponse(status=-1)
    assert resp.SerializeToString() == b"\x08" + b"\xff" * 9 + b"\x01"
    spec = oci_pb2.Spec(Root=oci_pb2.Root(Path="/r", Readonly=True))
    assert spec.SerializeToString() == b"\x1a\x06\x0a\x02/r\x10\x01"


def test_round_trip_create_container():
    spec = oci_pb2.Spec(
        Version="1.0.2",
        Process=oci_pb2.Process(Args=["sh", "-c", "echo hi"], Cwd="/", Terminal=False),
        Root=oci_pb2.Root(Path="/run/kata-containers/shared/containers/c1/rootfs"),
        Linux=oci_pb2.Linux(Namespaces=[oci_pb2.LinuxNamespace(Type="mount")]),
        Annotations={"k": "v"},
    )
    req = agent_pb2.CreateContainerRequest(
        container_id="c1", exec_id="c1", OCI=spec,
        storages=[agent_pb2.Storage(driver="9p", source="kataShared", fstype="9p")],
    )
    back = agent_pb2.CreateContainerRequest.FromString(req.SerializeToString())
    assert back == req
    assert not back.OCI.Linux.HasField("Resources")
