"""The runtime's client of kata-agent: synchronous grpcio over kata-proxy's socket.

Each kata-runtime command is one short process, so the calls are blocking, on one
channel to ``unix:<sandbox>/proxy.sock`` (every connection there is one yamux stream to
the agent). grpc and the generated modules are imported when an Agent is made, never by
commands that do not talk to the agent (``state``, ``list``).

Every failure is an :class:`AgentError` whose message is the agent's own (it names the
container or process), prefixed with the call: ``CreateContainer: ... executable file
not found in $PATH``. A proxy or agent that is gone is ``code == "UNAVAILABLE"``.
"""

from __future__ import annotations

from kata_runtime.errors import KataError

#: Seconds each call may take (CreateContainer runs runc create in the guest).
DEFAULT_TIMEOUT = 60.0
MAX_MESSAGE = 64 << 20


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


class Agent:
    """AgentService calls used by the runtime, on one channel to the proxy's socket."""

    def __init__(self, proxy_socket: str, timeout: float = DEFAULT_TIMEOUT):
        import grpc
        from katapb import agent_pb2, agent_pb2_grpc

        self._grpc = grpc
        self.pb = agent_pb2
        self.proxy_socket = proxy_socket
        self.timeout = timeout
        self.channel = grpc.insecure_channel(f"unix:{proxy_socket}", options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
            ("grpc.enable_retries", 0),
        ])
        self.stub = agent_pb2_grpc.AgentServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "Agent":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method: str, request, timeout: float | None = None):
        """``AgentService.<method>(request)``; raises AgentError."""
        try:
            return getattr(self.stub, method)(request, timeout=timeout or self.timeout)
        except self._grpc.RpcError as e:
            code = e.code().name if e.code() is not None else "UNKNOWN"
            details = " ".join((e.details() or "").split())
            if code == "UNAVAILABLE":
                details = f"cannot reach the agent through kata-proxy at {self.proxy_socket} ({details})"
            raise AgentError(method, code, details) from None

    def check(self, timeout: float) -> None:
        """grpc.Health/Check, waiting up to ``timeout`` seconds for the agent to answer
        (gRPC wait_for_ready: a guest still booting behind the proxy is waited for)."""
        from katapb import health_pb2, health_pb2_grpc

        try:
            health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.CheckRequest(), timeout=timeout,
                                                            wait_for_ready=True)
        except self._grpc.RpcError as e:
            raise AgentError("Check", e.code().name if e.code() else "UNKNOWN", e.details() or "") from None

    # ------------------------------------------------------------- sandbox
    def create_sandbox(self, sandbox_id: str, hostname: str, storages, dns=()) -> None:
        """``dns``: resolv.conf lines for the containers' /etc/resolv.conf mounts."""
        self.call("CreateSandbox", self.pb.CreateSandboxRequest(
            hostname=hostname, dns=list(dns), storages=list(storages), sandbox_id=sandbox_id))

    def destroy_sandbox(self) -> None:
        self.call("DestroySandbox", self.pb.DestroySandboxRequest())

    # ---------------------------------------------------------- containers
    def create_container(self, container_id: str, spec) -> None:
        """``spec``: a katapb oci_pb2.Spec (kata_oci.container_spec)."""
        self.call("CreateContainer", self.pb.CreateContainerRequest(
            container_id=container_id, exec_id=container_id, OCI=spec))

    def start_container(self, container_id: str) -> None:
        self.call("StartContainer", self.pb.StartContainerRequest(container_id=container_id))

    def remove_container(self, container_id: str, timeout: int = 0) -> None:
        """RemoveContainer (kills what still runs); ``timeout`` seconds for the agent, 0 = none."""
        self.call("RemoveContainer", self.pb.RemoveContainerRequest(container_id=container_id, timeout=timeout))

    def pause_container(self, container_id: str) -> None:
        self.call("PauseContainer", self.pb.PauseContainerRequest(container_id=container_id))

    def resume_container(self, container_id: str) -> None:
        self.call("ResumeContainer", self.pb.ResumeContainerRequest(container_id=container_id))

    def update_container(self, container_id: str, resources) -> None:
        """``resources``: a katapb oci_pb2.LinuxResources."""
        self.call("UpdateContainer", self.pb.UpdateContainerRequest(container_id=container_id, resources=resources))

    def stats_container(self, container_id: str):
        """StatsContainerResponse (cgroup_stats, network_stats)."""
        return self.call("StatsContainer", self.pb.StatsContainerRequest(container_id=container_id))

    def list_processes(self, container_id: str, fmt: str, args=()) -> bytes:
        """``ps`` output ("table") or a JSON list of pids ("json"), as the agent makes it."""
        return self.call("ListProcesses", self.pb.ListProcessesRequest(
            container_id=container_id, format=fmt, args=list(args))).process_list

    # ----------------------------------------------------------- processes
    def exec_process(self, container_id: str, exec_id: str, process) -> None:
        """``process``: a katapb oci_pb2.Process (kata_oci.process_spec)."""
        self.call("ExecProcess", self.pb.ExecProcessRequest(
            container_id=container_id, exec_id=exec_id, process=process))

    def signal_process(self, container_id: str, exec_id: str, signum: int) -> None:
        """``exec_id`` "" signals every process of the container."""
        self.call("SignalProcess", self.pb.SignalProcessRequest(
            container_id=container_id, exec_id=exec_id, signal=signum))
