"""Kubernetes' path to kata-runtime, process sandbox: containerd's CRI plugin runs a pod with
runtime handler ``runc`` (the reference: proves the harness, the images and CNI) and then with
``kata`` (io.containerd.runc.v2 whose BinaryName is kata-runtime, hypervisor = "process").

For each handler, one pod as the kubelet runs it: RunPodSandbox gets an address from host-local;
CreateContainer/StartContainer/ContainerStatus; ExecSync sees the pod's IP, hostname, DNS and
env, and returns exit codes and stderr; the host namespace (where CNI's bridge is) reaches the
container's server, bytes exact; both output lines land in the CRI log file; Stop/Remove of the
container and the pod leave no process, mount, network namespace, veth, lease, CNI cache entry,
cgroup, kata sandbox dir or shim socket. With kata, the container joins the pause container's
sandbox (one kata-proxy, no sandbox of its own).
"""

from __future__ import annotations

import grpc
import pytest

from tests.cri import scenario
from tests.cri.conftest import start_daemon

HANDLERS = {"runc": None,
            "kata": {"runtime": {"hypervisor": "process", "internetworking_model": "tcfilter"}}}


@pytest.fixture(scope="module")
def cri():
    cd = start_daemon(HANDLERS)
    yield cd
    cd.stop()


def test_the_cri_plugin_answers_v1_and_is_ready(cri):
    version = cri.cri.version()
    assert (version.runtime_name, version.runtime_api_version) == ("containerd", "v1")
    assert cri.cri.conditions() == {"RuntimeReady": True, "NetworkReady": True}


@pytest.mark.parametrize("handler", ["runc", "kata"])
def test_a_pod_through_cri(cri, handler, request):
    pod = scenario.run_pod(cri, handler)
    cid = scenario.run_echo_container(cri, pod)
    if handler == "kata":
        scenario.check_one_sandbox(pod, cid)
    scenario.check_exec_sync(cri, pod, cid)
    seconds = scenario.check_host_reaches_pod(cri, pod)
    scenario.check_logs(cri, pod, cid)
    scenario.stop_and_remove(cri, pod, cid)
    print(f"\n{handler}: 256 KiB echoed host -> pod -> host in {seconds * 1000:.0f} ms")


def test_an_unknown_runtime_handler_is_refused_and_leaves_nothing(cri):
    with pytest.raises(grpc.RpcError) as err:
        cri.cri.run_pod(cri.pod_config("nope"), "no-such-handler")
    assert "no-such-handler" in err.value.details()
    assert cri.cri.list_pods() == [] and cri.wait_clean([]) == {}
