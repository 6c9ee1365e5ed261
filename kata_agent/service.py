"""kata-agent's gRPC services, agent.proto's grpc.AgentService and grpc.Health, as calls of the
sandbox (kata_agent.sandbox): requests in, responses out, SandboxError as a gRPC status.

No transport here (grpcio is not imported at all): :func:`handlers` gives each method as a
coroutine ``(request bytes) -> response bytes`` that raises kata_grpc's RpcError (a gRPC status
code and message) for anything but OK, the shape kata_grpc.aio serves (kata_agent.server).

    handlers(sandbox)["/grpc.Health/Check"](b"")  ->  b"\\x08\\x01"   (SERVING)

Wire semantics worth knowing (they match the Kata 1.x Go agent and kata-shim):

* ReadStdout / ReadStderr block until data, returning up to ``len`` bytes. After the process
  exits they keep returning what it left in its pipe or terminal, even while a descendant holds
  the other end (what that descendant writes later is not delivered; the terminal is closed);
  then they fail with status OUT_OF_RANGE, details "EOF" -- exactly what kata-shim turns into
  io.EOF (the Go agent returned a bare io.EOF, seen as UNKNOWN "EOF"; clients should accept
  both). An OK response is never empty, so a Go io.Copy loop cannot spin on it. A terminal
  process has no separate stderr: ReadStderr returns EOF at once.
* WriteStdin writes all of ``data`` (waiting while the pipe is full) and returns its length;
  kata-shim's io.Copy treats a short count as an error.
* WaitProcess returns the exit code, 128+N for a death by signal N. An exec'd process is
  forgotten once waited for and its output drained; the init process stays until
  RemoveContainer.
* exec_id "" names the container's init process, except in SignalProcess, where (as in the Go
  agent) it means every process of the container.
* Implemented: CreateSandbox, DestroySandbox, CreateContainer, StartContainer, RemoveContainer,
  ExecProcess, SignalProcess, WaitProcess, WriteStdin, ReadStdout, ReadStderr, CloseStdin,
  TtyWinResize, ListProcesses, PauseContainer, ResumeContainer, UpdateContainer, StatsContainer,
  GetGuestDetails, SetGuestDateTime, OnlineCPUMem, ReseedRandomDev, the network calls
  UpdateInterface, UpdateRoutes, ListInterfaces, ListRoutes, AddARPNeighbors
  (kata_agent/network.py, on netlink), and Health.Check/Version. Every other AgentService
  method answers UNIMPLEMENTED naming itself.
* Status codes (:data:`FAULT_STATUS`): unknown container/exec -> NOT_FOUND; a bad spec or
  argument -> INVALID_ARGUMENT; id already used / sandbox already created -> ALREADY_EXISTS;
  wrong state (no sandbox yet, start twice, exec into a stopped container, resize a
  non-terminal) -> FAILED_PRECONDITION; RemoveContainer past its timeout -> DEADLINE_EXCEEDED;
  a request that is not its message -> INTERNAL (as grpc-go); anything unexpected -> INTERNAL,
  with the cause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from google.protobuf import empty_pb2
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass

from kata_grpc import protocol as status
from kata_grpc.protocol import RpcError
from katapb import agent_pb2, health_pb2

from .sandbox import Fault, Sandbox, SandboxError, as_sandbox_error

log = logging.getLogger("kata_agent.service")

API_VERSION = "0.0.1"
EOF_DETAILS = "EOF"
_EMPTY = empty_pb2.Empty()
_QUIET = {"ReadStdout", "ReadStderr", "WriteStdin"}  # too many to log one by one

#: A served method: request bytes -> response bytes; raises kata_grpc's RpcError.
Handler = Callable[[bytes], Awaitable[bytes]]


#: Each Fault of the sandbox as the gRPC status the Kata 1.x clients expect.
FAULT_STATUS = {
    Fault.NOT_FOUND: status.NOT_FOUND,
    Fault.INVALID: status.INVALID_ARGUMENT,
    Fault.EXISTS: status.ALREADY_EXISTS,
    Fault.WRONG_STATE: status.FAILED_PRECONDITION,
    Fault.TIMED_OUT: status.DEADLINE_EXCEEDED,
    Fault.UNAVAILABLE: status.UNAVAILABLE,
    Fault.EOF: status.OUT_OF_RANGE,
    Fault.INTERNAL: status.INTERNAL,
}


def _brief(request) -> str:
    text = " ".join(str(request).split())
    return text if len(text) <= 300 else text[:300] + "..."


def status_of(name: str, exc: Exception) -> RpcError:
    """The gRPC status a failed call of method ``name`` answers: a SandboxError's (or a domain
    error's) by FAULT_STATUS, INTERNAL with the cause for anything else (logged with its
    traceback). Every status but the end of an output stream is logged at info."""
    err = as_sandbox_error(exc)
    if err is None:
        log.error("%s failed", name, exc_info=exc)
        answer = RpcError(status.INTERNAL, f"{name}: {type(exc).__name__}: {exc}")
    elif err.fault is Fault.EOF:
        return RpcError(status.OUT_OF_RANGE, EOF_DETAILS)
    else:
        answer = RpcError(FAULT_STATUS[err.fault], err.message)
    log.info("%s -> %s: %s", name, answer.name, answer.message)
    return answer


def unary(name: str, method: Callable, request_class) -> Handler:
    """Method ``name``'s Handler: parse the request, await ``method(request)``, serialize its
    response; failures become RpcError (:func:`status_of`)."""
    parse = request_class.FromString
    quiet = name in _QUIET

    async def handle(data: bytes) -> bytes:
        try:
            request = parse(data)
        except DecodeError as e:
            raise RpcError(status.INTERNAL, f"grpc: error unmarshalling {name} request: {e}") from None
        if not quiet and log.isEnabledFor(logging.DEBUG):
            log.debug("%s %s", name, _brief(request))
        try:
            response = await method(request)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - answered as a status, the agent keeps serving
            raise status_of(name, e) from None
        return response.SerializeToString()

    handle.__name__ = name
    return handle


def unimplemented(service: str, name: str) -> Handler:
    """A Handler answering UNIMPLEMENTED, naming the method."""
    async def handle(data: bytes) -> bytes:
        raise RpcError(status.UNIMPLEMENTED, f"{service.rsplit('.', 1)[-1]}.{name} is not "
                                                  "implemented by kata-py's agent")
    return handle


class AgentService:
    """grpc.AgentService on a Sandbox: one coroutine per implemented method, its request
    message in, its response message out (domain errors pass through)."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    # -- sandbox --------------------------------------------------------
    async def CreateSandbox(self, request):
        await self.sandbox.create(
            hostname=request.hostname, sandbox_id=request.sandbox_id, storages=list(request.storages),
            dns=list(request.dns),
            extras_ignored=bool(request.kernel_modules or request.guest_hook_path or request.sandbox_pidns))
        return _EMPTY

    async def DestroySandbox(self, request):
        await self.sandbox.destroy()
        return _EMPTY

    # -- containers -----------------------------------------------------
    async def CreateContainer(self, request):
        await self.sandbox.create_container(
            request.container_id, request.OCI if request.HasField("OCI") else None,
            storages=list(request.storages), exec_id=request.exec_id, devices=len(request.devices))
        return _EMPTY

    async def StartContainer(self, request):
        await self.sandbox.start_container(request.container_id)
        return _EMPTY

    async def RemoveContainer(self, request):
        await self.sandbox.remove_container(request.container_id, request.timeout)
        return _EMPTY

    async def PauseContainer(self, request):
        await self.sandbox.pause_container(request.container_id)
        return _EMPTY

    async def ResumeContainer(self, request):
        await self.sandbox.resume_container(request.container_id)
        return _EMPTY

    async def UpdateContainer(self, request):
        resources = request.resources if request.HasField("resources") else None
        await self.sandbox.update_container(request.container_id, resources)
        return _EMPTY

    async def StatsContainer(self, request):
        stats = self.sandbox.stats(request.container_id)
        resp = agent_pb2.StatsContainerResponse()
        from google.protobuf import json_format  # only here: not on the agent's start path

        json_format.ParseDict(stats, resp.cgroup_stats, ignore_unknown_fields=True)
        return resp

    async def ListProcesses(self, request):
        table = await self.sandbox.list_processes(request.container_id, request.format, list(request.args))
        return agent_pb2.ListProcessesResponse(process_list=table)

    # -- processes ------------------------------------------------------
    async def ExecProcess(self, request):
        process = request.process if request.HasField("process") else None
        await self.sandbox.exec_process(request.container_id, request.exec_id, process)
        return _EMPTY

    async def SignalProcess(self, request):
        await self.sandbox.signal_process(request.container_id, request.exec_id, request.signal)
        return _EMPTY

    async def WaitProcess(self, request):
        code = await self.sandbox.wait_process(request.container_id, request.exec_id)
        return agent_pb2.WaitProcessResponse(status=code)

    async def WriteStdin(self, request):
        n = await self.sandbox.write_stdin(request.container_id, request.exec_id, request.data)
        return agent_pb2.WriteStreamResponse(len=n)

    async def ReadStdout(self, request):
        data = await self.sandbox.read_output(request.container_id, request.exec_id, request.len)
        return agent_pb2.ReadStreamResponse(data=data)

    async def ReadStderr(self, request):
        data = await self.sandbox.read_output(request.container_id, request.exec_id, request.len, stderr=True)
        return agent_pb2.ReadStreamResponse(data=data)

    async def CloseStdin(self, request):
        await self.sandbox.close_stdin(request.container_id, request.exec_id)
        return _EMPTY

    async def TtyWinResize(self, request):
        self.sandbox.resize_terminal(request.container_id, request.exec_id, request.row, request.column)
        return _EMPTY

    # -- guest ----------------------------------------------------------
    async def GetGuestDetails(self, request):
        g = self.sandbox.guest_details(mem_block_size=request.mem_block_size,
                                       mem_hotplug_probe=request.mem_hotplug_probe)
        resp = agent_pb2.GuestDetailsResponse(mem_block_size_bytes=g.mem_block_size_bytes,
                                              support_mem_hotplug_probe=g.support_mem_hotplug_probe)
        d = resp.agent_details
        d.version = g.version
        d.init_daemon = g.init_daemon
        d.storage_handlers.extend(g.storage_handlers)
        d.supports_seccomp = g.supports_seccomp
        return resp

    async def SetGuestDateTime(self, request):
        self.sandbox.set_guest_time(request.Sec, request.Usec)
        return _EMPTY

    async def ReseedRandomDev(self, request):
        self.sandbox.reseed_random(request.data)
        return _EMPTY

    async def OnlineCPUMem(self, request):
        self.sandbox.online_cpu_mem(request.nb_cpus, request.cpu_only)
        return _EMPTY

    # -- network (kata_agent/network.py; protobuf <-> its dataclasses here) --
    async def UpdateInterface(self, request):
        from . import network
        if not request.HasField("interface"):
            raise SandboxError(Fault.INVALID, "UpdateInterfaceRequest.interface is missing")
        got = await self.sandbox.network(network.update_interface, _interface_from_pb(request.interface))
        return _interface_to_pb(got)

    async def UpdateRoutes(self, request):
        from . import network
        if not request.HasField("routes"):
            raise SandboxError(Fault.INVALID, "UpdateRoutesRequest.routes is missing")
        routes = [_route_from_pb(r) for r in request.routes.Routes]
        done = await self.sandbox.network(network.update_routes, routes)
        return agent_pb2.Routes(Routes=[_route_to_pb(r) for r in done])

    async def ListInterfaces(self, request):
        from . import network
        found = await self.sandbox.network(network.list_interfaces)
        return agent_pb2.Interfaces(Interfaces=[_interface_to_pb(i) for i in found])

    async def ListRoutes(self, request):
        from . import network
        found = await self.sandbox.network(network.list_routes)
        return agent_pb2.Routes(Routes=[_route_to_pb(r) for r in found])

    async def AddARPNeighbors(self, request):
        from . import network
        neighbors = [_neighbor_from_pb(n) for n in request.neighbors.ARPNeighbors]
        await self.sandbox.network(network.add_arp_neighbors, neighbors)
        return _EMPTY


class HealthService:
    """grpc.Health: Check answers SERVING; Version the API and agent versions."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    async def Check(self, request):
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    async def Version(self, request):
        return health_pb2.VersionCheckResponse(grpc_version=API_VERSION,
                                               agent_version=self.sandbox.config.agent_version)


def handlers(sandbox: Sandbox) -> dict[str, Handler]:
    """Every method of grpc.AgentService and grpc.Health by its path ("/grpc.Health/Check"),
    as a Handler (the ones this agent does not implement answer UNIMPLEMENTED)."""
    table: dict[str, Handler] = {}
    for impl, descriptor in ((AgentService(sandbox), agent_pb2.DESCRIPTOR.services_by_name["AgentService"]),
                             (HealthService(sandbox), health_pb2.DESCRIPTOR.services_by_name["Health"])):
        for m in descriptor.methods:
            method = getattr(impl, m.name, None)
            path = f"/{descriptor.full_name}/{m.name}"
            table[path] = (unimplemented(descriptor.full_name, m.name) if method is None
                           else unary(m.name, method, GetMessageClass(m.input_type)))
    return table


def _ip_from_pb(a):
    from .network import IPAddress
    return IPAddress(family=int(a.family), address=a.address, mask=a.mask)


def _ip_to_pb(a):
    from katapb import types_pb2
    return types_pb2.IPAddress(family=a.family, address=a.address, mask=a.mask)


def _interface_from_pb(i):
    from .network import Interface
    return Interface(device=i.device, name=i.name, addresses=[_ip_from_pb(a) for a in i.IPAddresses], mtu=i.mtu,
                     hw_addr=i.hwAddr, pci_addr=i.pciAddr, type=i.type, raw_flags=i.raw_flags)


def _interface_to_pb(i):
    from katapb import types_pb2
    return types_pb2.Interface(device=i.device, name=i.name, IPAddresses=[_ip_to_pb(a) for a in i.addresses],
                               mtu=i.mtu, hwAddr=i.hw_addr, pciAddr=i.pci_addr, type=i.type, raw_flags=i.raw_flags)


def _route_from_pb(r):
    from .network import Route
    return Route(dest=r.dest, gateway=r.gateway, device=r.device, source=r.source, scope=r.scope)


def _route_to_pb(r):
    from katapb import types_pb2
    return types_pb2.Route(dest=r.dest, gateway=r.gateway, device=r.device, source=r.source, scope=r.scope)


def _neighbor_from_pb(n):
    from .network import Neighbor
    return Neighbor(address=_ip_from_pb(n.toIPAddress), device=n.device, lladdr=n.lladdr, state=n.state,
                    flags=n.flags)


__all__ = ["AgentService", "HealthService", "handlers", "Handler", "FAULT_STATUS",
           "EOF_DETAILS", "API_VERSION"]
