"""The runtime's client of kata-agent: blocking unary calls over kata-proxy's socket (kata_grpc).

Each kata-runtime command is one short process making a few calls, so the calls are
blocking, on one connection to ``<sandbox>/proxy.sock`` (every connection there is one
yamux stream to the agent), made with kata_grpc (a small HTTP/2 client) rather than
grpcio: no grpc import, no threads, nothing to shut down at exit. The requests of the
container lifecycle are encoded by hand (kata_grpc.pb, field numbers of
proto/katapb/agent.proto; tests check the bytes against katapb's), those that carry an OCI
structure (CreateContainer, ExecProcess, UpdateContainer) around kata_oci's encoding: no
kata-runtime command on a container's path imports protobuf (~30 ms of start-up). ``pb``
(the generated agent_pb2) is for the rest: the pod network's messages, StatsContainer's
reply.

Every failure is an :class:`AgentError` whose message is the agent's own (it names the
container or process), prefixed with the call: ``CreateContainer: ... executable file
not found in $PATH``. A proxy or agent that is gone is ``code == "UNAVAILABLE"``; a call
that does not finish within its timeout is ``"DEADLINE_EXCEEDED"``.
"""

from __future__ import annotations

from kata_runtime.errors import KataError

#: Seconds each call may take (CreateContainer runs runc create in the guest).
DEFAULT_TIMEOUT = 60.0
MAX_MESSAGE = 64 << 20
USER_AGENT = b"kata-runtime"
HEALTH_CHECK = "/grpc.Health/Check"


class AgentError(KataError):
    """An agent call failed. ``code`` is the gRPC status name ("NOT_FOUND", "UNAVAILABLE"...)."""

    def __init__(self, method: str, code: str, details: str):
        self.method = method
        self.code = code
        self.details = details
        super().__init__(f"{method}: {details or code}")

    @property
    def unreachable(self) -> bool:
        """The proxy or the agent is gone (nothing answered)."""
        return self.code in ("UNAVAILABLE", "CANCELLED")


# ----------------------------------------------------- requests, by hand


def _ids(container_id: str, exec_id: str | None = None) -> bytes:
    """Fields 1 (container_id) and, when given, 2 (exec_id): how most requests start."""
    from kata_grpc.pb import field_str

    return field_str(1, container_id) + (field_str(2, exec_id) if exec_id is not None else b"")


def container_request(container_id: str) -> bytes:
    """Start/Pause/Resume/StatsContainerRequest: container_id = 1."""
    return _ids(container_id)


def remove_container_request(container_id: str, timeout: int) -> bytes:
    """RemoveContainerRequest: container_id = 1, timeout = 2 (uint32)."""
    from kata_grpc.pb import field_varint

    return _ids(container_id) + field_varint(2, timeout)


def signal_process_request(container_id: str, exec_id: str, signum: int) -> bytes:
    """SignalProcessRequest: container_id = 1, exec_id = 2, signal = 3 (uint32)."""
    from kata_grpc.pb import field_varint

    return _ids(container_id, exec_id) + field_varint(3, signum)


def list_processes_request(container_id: str, fmt: str, args=()) -> bytes:
    """ListProcessesRequest: container_id = 1, format = 2, args = 3 (repeated string)."""
    from kata_grpc.pb import field_str, field_strs

    return _ids(container_id) + field_str(2, fmt) + field_strs(3, args)


def storage(driver: str, source: str, fstype: str, options, mount_point: str) -> bytes:
    """A Storage (CreateSandbox's): driver = 1, source = 3, fstype = 4, options = 5 (repeated
    string), mount_point = 6."""
    from kata_grpc.pb import field_str, field_strs

    return (field_str(1, driver) + field_str(3, source) + field_str(4, fstype) + field_strs(5, options)
            + field_str(6, mount_point))


def create_sandbox_request(sandbox_id: str, hostname: str, storages, dns) -> bytes:
    """CreateSandboxRequest: hostname = 1, dns = 2 (repeated string), storages = 3 (repeated
    Storage, each from :func:`storage`), sandbox_id = 5."""
    from kata_grpc.pb import field_str, field_strs, length_delimited

    return (field_str(1, hostname) + field_strs(2, dns) + b"".join(length_delimited(3, s) for s in storages)
            + field_str(5, sandbox_id))


def create_container_request(container_id: str, spec: bytes) -> bytes:
    """CreateContainerRequest: container_id = 1, exec_id = 2 (the same: the init process),
    OCI = 6 (an encoded oci.Spec, kata_oci.container_spec; always present)."""
    from kata_grpc.pb import length_delimited

    return _ids(container_id, container_id) + length_delimited(6, spec)


def exec_process_request(container_id: str, exec_id: str, process: bytes) -> bytes:
    """ExecProcessRequest: container_id = 1, exec_id = 2, process = 4 (an encoded oci.Process)."""
    from kata_grpc.pb import length_delimited

    return _ids(container_id, exec_id) + length_delimited(4, process)


def update_container_request(container_id: str, resources: bytes) -> bytes:
    """UpdateContainerRequest: container_id = 1, resources = 2 (an encoded oci.LinuxResources)."""
    from kata_grpc.pb import length_delimited

    return _ids(container_id) + length_delimited(2, resources)


def list_processes_response(reply) -> bytes:
    """ListProcessesResponse.process_list (field 1, bytes)."""
    from kata_grpc.pb import field

    return bytes(field(reply, 1, 2, b""))


# ------------------------------------------------------------- the client


class Agent:
    """AgentService calls used by the runtime, on one connection to the proxy's socket."""

    def __init__(self, proxy_socket: str, timeout: float = DEFAULT_TIMEOUT):
        from kata_grpc.client import Channel

        self.proxy_socket = proxy_socket
        self.timeout = timeout
        self.channel = Channel(proxy_socket, user_agent=USER_AGENT)

    @property
    def pb(self):
        """katapb.agent_pb2 (the protobuf runtime is imported on first use)."""
        from katapb import agent_pb2

        return agent_pb2

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, request, timeout: float | None = None) -> bytes:
        """``AgentService.<method>(request)`` (or a full ``/service/Method`` path): ``request``
        is the encoded message or a protobuf message; returns the encoded reply. Raises AgentError."""
        from kata_grpc.client import DeadlineExceeded, TransportError
        from kata_grpc.h2 import RpcError

        body = request if isinstance(request, (bytes, bytearray, memoryview)) else request.SerializeToString()
        if len(body) > MAX_MESSAGE:
            raise AgentError(method, "RESOURCE_EXHAUSTED", f"request of {len(body)} bytes is over {MAX_MESSAGE}")
        name = method.rsplit("/", 1)[-1]
        try:
            return bytes(self.channel.unary(method, body, timeout=timeout or self.timeout))
        except RpcError as e:
            details = " ".join(e.message.split())
            if e.code == 14:  # UNAVAILABLE
                details = self._unreachable(details)
            raise AgentError(name, e.name, details) from None
        except DeadlineExceeded as e:
            raise AgentError(name, "DEADLINE_EXCEEDED", str(e)) from None
        except TransportError as e:
            raise AgentError(name, "UNAVAILABLE", self._unreachable(str(e))) from None

    def _unreachable(self, details: str) -> str:
        return f"cannot reach the agent through kata-proxy at {self.proxy_socket} ({details})"

    def check(self, timeout: float) -> None:
        """grpc.Health/Check, waiting up to ``timeout`` seconds for the agent to answer (as
        gRPC's wait_for_ready: an unreachable agent, a guest still booting behind the proxy,
        is asked again every 50 ms). Raises AgentError."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                self.call(HEALTH_CHECK, b"", timeout=max(left, 0.001))
                return
            except AgentError as e:
                if not e.unreachable or left <= 0.05:
                    raise AgentError("Check", e.code, e.details) from None
            time.sleep(0.05)

    # ------------------------------------------------------------- sandbox
    def create_sandbox(self, sandbox_id: str, hostname: str, storages, dns=()) -> None:
        """``storages``: encoded Storage messages (:func:`storage`); ``dns``: resolv.conf lines
        for the containers' /etc/resolv.conf mounts."""
        self.call("CreateSandbox", create_sandbox_request(sandbox_id, hostname, storages, dns))

    def destroy_sandbox(self) -> None:
        self.call("DestroySandbox", b"")

    # ---------------------------------------------------------- containers
    def create_container(self, container_id: str, spec: bytes) -> None:
        """``spec``: the encoded oci.Spec (kata_oci.container_spec)."""
        self.call("CreateContainer", create_container_request(container_id, spec))

    def start_container(self, container_id: str) -> None:
        self.call("StartContainer", container_request(container_id))

    def remove_container(self, container_id: str, timeout: int = 0) -> None:
        """RemoveContainer (kills what still runs); ``timeout`` seconds for the agent, 0 = none."""
        self.call("RemoveContainer", remove_container_request(container_id, timeout))

    def pause_container(self, container_id: str) -> None:
        self.call("PauseContainer", container_request(container_id))

    def resume_container(self, container_id: str) -> None:
        self.call("ResumeContainer", container_request(container_id))

    def update_container(self, container_id: str, resources: bytes) -> None:
        """``resources``: the encoded oci.LinuxResources (kata_oci.resources_spec)."""
        self.call("UpdateContainer", update_container_request(container_id, resources))

    def stats_container(self, container_id: str):
        """StatsContainerResponse (cgroup_stats, network_stats)."""
        reply = self.call("StatsContainer", container_request(container_id))
        return self.pb.StatsContainerResponse.FromString(reply)

    def list_processes(self, container_id: str, fmt: str, args=()) -> bytes:
        """``ps`` output ("table") or a JSON list of pids ("json"), as the agent makes it."""
        return list_processes_response(self.call("ListProcesses", list_processes_request(container_id, fmt, args)))

    # ----------------------------------------------------------- processes
    def exec_process(self, container_id: str, exec_id: str, process: bytes) -> None:
        """``process``: the encoded oci.Process (kata_oci.process_spec)."""
        self.call("ExecProcess", exec_process_request(container_id, exec_id, process))

    def signal_process(self, container_id: str, exec_id: str, signum: int) -> None:
        """``exec_id`` "" signals every process of the container."""
        self.call("SignalProcess", signal_process_request(container_id, exec_id, signum))


async def check_ready(proxy_socket: str, timeout: float, retry_interval: float = 0.05) -> None:
    """Health Check through kata-proxy's socket until the agent answers, on the event loop (no
    thread, no grpcio): the QEMU boot probe. As grpcio's ``wait_for_ready``: a connection that
    cannot be made or closes before the answer (kata-proxy still connecting, or its session
    to the guest gone) is tried again every ``retry_interval`` seconds, so the driver, which
    watches QEMU meanwhile, is the one to say why a boot failed. Cancelling the coroutine (the
    driver gave up) closes the connection at once. ``timeout``: seconds in all. Raises
    AgentError: the agent's own status, or DEADLINE_EXCEEDED naming the last failure."""
    import asyncio

    last = "no answer"
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    return await _check_once(proxy_socket)
                except AgentError as e:
                    if not e.unreachable:
                        raise
                    last = e.details
                await asyncio.sleep(retry_interval)
    except TimeoutError:
        raise AgentError("Check", "DEADLINE_EXCEEDED", f"no answer within {timeout:g}s ({last})") from None


async def _check_once(proxy_socket: str) -> None:
    """One Health Check on a new connection. AgentError: the agent's status, or UNAVAILABLE."""
    import asyncio

    from kata_grpc import h2
    from kata_grpc.client import header_block

    try:
        reader, writer = await asyncio.open_unix_connection(proxy_socket)
    except OSError as e:
        raise AgentError("Check", "UNAVAILABLE", f"cannot connect to {proxy_socket}: {e.strerror or e}") from None
    try:
        conn = h2.Connection()
        call = conn.request(header_block("/grpc.Health/Check", b"kata-runtime"), b"")
        while not call.done:
            writer.writelines(conn.output())
            data = await reader.read(64 << 10)
            if not data:
                raise AgentError("Check", "UNAVAILABLE", "connection closed by the agent side")
            conn.receive(data)
        call.result()
    except h2.RpcError as e:
        raise AgentError("Check", e.name, e.message) from None
    except (h2.H2Error, OSError) as e:
        raise AgentError("Check", "UNAVAILABLE", str(e)) from None
    finally:
        writer.close()
