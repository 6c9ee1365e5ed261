"""A small CRI v1 client (what the kubelet speaks to containerd), from tests/cri/cri_api.proto.

    api = load_api()                                  # (pb2, pb2_grpc), generated once per process
    cri = CriClient(api, "/tmp/krXXXX/c.sock")
    cri.version().runtime_api_version                 # "v1"
    pod_id = cri.run_pod(pod_config, "kata")          # RunPodSandbox with a runtime handler
    cid = cri.create_container(pod_id, container_config, pod_config)
    cri.start_container(cid); cri.container_status(cid).state == api[0].CONTAINER_RUNNING
    res = cri.exec_sync(cid, ["hostname"], timeout=30)     # ExecSyncResponse (stdout, stderr, exit_code)
    cri.stop_pod(pod_id); cri.remove_pod(pod_id)
    cri.close()

Why the stubs are generated at test time (grpc_tools.protoc into a temp dir, imported, the dir
removed) and not checked in: the .proto is the only source, so nothing generated can go stale and
no ``make check-proto``-style rule is needed for it; the compiler (grpcio-tools, a dev extra that
``make test`` installs anyway) takes about 0.1 s. The generated modules are named
``kata_py_cri_api_pb2``/``_pb2_grpc``: unlike our agent API's, they never ship.

Every call has a deadline (``timeout`` seconds, default :data:`CALL_TIMEOUT`): a daemon that does
not answer raises :class:`grpc.RpcError` (DEADLINE_EXCEEDED) instead of hanging the test.
"""

from __future__ import annotations

import functools
import importlib
import shutil
import sys
import tempfile
from pathlib import Path

PROTO = Path(__file__).with_name("cri_api.proto")
MODULE = "kata_py_cri_api"  # the name the .proto is compiled under (see the module docstring)
CALL_TIMEOUT = 60.0  # seconds per RPC unless the caller says otherwise


class ProtocError(RuntimeError):
    """grpc_tools.protoc rejected the .proto (the message names the file)."""


@functools.cache
def load_api():
    """Compile :data:`PROTO` and import it: ``(pb2 module, pb2_grpc module)``, once per process.

    Raises ProtocError if protoc fails, ImportError without grpcio-tools."""
    from grpc_tools import protoc

    out = Path(tempfile.mkdtemp(prefix="kcri-proto-"))
    try:
        src = out / f"{MODULE}.proto"
        shutil.copyfile(PROTO, src)
        include = str(Path(protoc.__file__).parent / "_proto")  # google/protobuf/*.proto
        rc = protoc.main(["protoc", f"-I{out}", f"-I{include}", f"--python_out={out}",
                          f"--grpc_python_out={out}", str(src)])
        if rc != 0:
            raise ProtocError(f"grpc_tools.protoc failed on {PROTO} (exit {rc})")
        sys.path.insert(0, str(out))
        try:
            return importlib.import_module(f"{MODULE}_pb2"), importlib.import_module(f"{MODULE}_pb2_grpc")
        finally:
            sys.path.remove(str(out))
    finally:
        shutil.rmtree(out, ignore_errors=True)


class CriClient:
    """RuntimeService and ImageService stubs on containerd's unix socket ``address``."""

    def __init__(self, api, address: str):
        import grpc

        self.pb, pb_grpc = api
        self.channel = grpc.insecure_channel(f"unix://{address}")
        self.runtime = pb_grpc.RuntimeServiceStub(self.channel)
        self.images = pb_grpc.ImageServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    # -- runtime
    def version(self, timeout: float = CALL_TIMEOUT):
        """VersionResponse (version, runtime_name, runtime_version, runtime_api_version)."""
        return self.runtime.Version(self.pb.VersionRequest(version="v1"), timeout=timeout)

    def conditions(self, timeout: float = CALL_TIMEOUT) -> dict[str, bool]:
        """{condition type: status} of Status (``RuntimeReady``, ``NetworkReady``)."""
        res = self.runtime.Status(self.pb.StatusRequest(), timeout=timeout)
        return {c.type: c.status for c in res.status.conditions}

    def run_pod(self, config, handler: str, timeout: float = CALL_TIMEOUT) -> str:
        """RunPodSandbox with ``config`` (a PodSandboxConfig) and runtime ``handler``: the pod id."""
        req = self.pb.RunPodSandboxRequest(config=config, runtime_handler=handler)
        return self.runtime.RunPodSandbox(req, timeout=timeout).pod_sandbox_id

    def pod_status(self, pod_id: str, timeout: float = CALL_TIMEOUT):
        """PodSandboxStatus (state, network.ip, runtime_handler, ...)."""
        req = self.pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id)
        return self.runtime.PodSandboxStatus(req, timeout=timeout).status

    def list_pods(self, timeout: float = CALL_TIMEOUT) -> list[str]:
        """Ids of every pod sandbox the CRI plugin knows (ListPodSandbox)."""
        return [p.id for p in self.runtime.ListPodSandbox(self.pb.ListPodSandboxRequest(), timeout=timeout).items]

    def stop_pod(self, pod_id: str, timeout: float = CALL_TIMEOUT) -> None:
        self.runtime.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=timeout)

    def remove_pod(self, pod_id: str, timeout: float = CALL_TIMEOUT) -> None:
        self.runtime.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=timeout)

    def create_container(self, pod_id: str, config, pod_config, timeout: float = CALL_TIMEOUT) -> str:
        """CreateContainer of ``config`` (ContainerConfig) in pod ``pod_id``: the container id."""
        req = self.pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_config)
        return self.runtime.CreateContainer(req, timeout=timeout).container_id

    def start_container(self, cid: str, timeout: float = CALL_TIMEOUT) -> None:
        self.runtime.StartContainer(self.pb.StartContainerRequest(container_id=cid), timeout=timeout)

    def stop_container(self, cid: str, grace: int = 0, timeout: float = CALL_TIMEOUT) -> None:
        """StopContainer: SIGTERM, then SIGKILL after ``grace`` seconds (0: SIGKILL at once)."""
        req = self.pb.StopContainerRequest(container_id=cid, timeout=grace)
        self.runtime.StopContainer(req, timeout=timeout)

    def remove_container(self, cid: str, timeout: float = CALL_TIMEOUT) -> None:
        self.runtime.RemoveContainer(self.pb.RemoveContainerRequest(container_id=cid), timeout=timeout)

    def container_status(self, cid: str, timeout: float = CALL_TIMEOUT):
        """ContainerStatus (state, exit_code, log_path, started_at in ns, ...)."""
        req = self.pb.ContainerStatusRequest(container_id=cid)
        return self.runtime.ContainerStatus(req, timeout=timeout).status

    def exec_sync(self, cid: str, cmd: list[str], timeout: int = 30):
        """ExecSync of ``cmd`` (containerd kills it after ``timeout`` s): ExecSyncResponse."""
        req = self.pb.ExecSyncRequest(container_id=cid, cmd=cmd, timeout=timeout)
        return self.runtime.ExecSync(req, timeout=timeout + CALL_TIMEOUT)

    # -- images
    def image_present(self, ref: str, timeout: float = CALL_TIMEOUT) -> bool:
        """Whether the CRI plugin's image store knows ``ref`` (ImageStatus has an image)."""
        req = self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=ref))
        return self.images.ImageStatus(req, timeout=timeout).HasField("image")
