"""Kubernetes' path to kata-runtime with a real guest: containerd's CRI plugin runs a pod with
runtime handler ``kata-qemu`` (kata-runtime, hypervisor = "qemu", TCG here, tcfilter networking).

One pod, one boot: the pause container gets a QEMU guest whose virtio-net sits behind a tap that
tc mirrors to the CNI veth in the pod's namespace; the container joins that guest; ExecSync in
it sees the pod's IP; the host namespace reaches its server through bridge -> veth -> tap ->
guest, bytes exact; the CRI log file has its lines; Stop/RemovePodSandbox leave no QEMU, tap,
ingress qdisc, mount, namespace, lease or process.

Needs a guest image: the session build of tests/conftest.py (set
KATA_PY_TEST_IMAGE_CACHE to reuse one between sessions).
"""

from __future__ import annotations

import pytest

from tests.cri import scenario
from tests.cri.conftest import start_daemon
from tests.support.guest import missing_requirements

pytestmark = pytest.mark.vm

HANDLER = "kata-qemu"


@pytest.fixture(scope="module")
def cri(request):
    """The module's daemon with the ``kata-qemu`` handler; skipped where no guest can be built
    (checked before the session's image build is asked for)."""
    reason = missing_requirements()
    if reason:
        pytest.skip(reason)
    guest_image = request.getfixturevalue("guest_image")
    cd = start_daemon({HANDLER: {
        "runtime": {"hypervisor": "qemu", "internetworking_model": "tcfilter"},
        "hypervisor.qemu": {"kernel": str(guest_image.kernel), "initrd": str(guest_image.initrd),
                            "image": str(guest_image.image), "accel": "tcg", "default_memory": 1024}}})
    yield cd
    cd.stop()


def test_a_pod_in_a_qemu_guest_through_cri(cri):
    pod = scenario.run_pod(cri, HANDLER, timeout=240)
    scenario.check_vm(pod)
    cid = scenario.run_echo_container(cri, pod, timeout=240)
    scenario.check_one_sandbox(pod, cid)
    scenario.check_exec_sync(cri, pod, cid)
    seconds = scenario.check_host_reaches_pod(cri, pod)
    scenario.check_logs(cri, pod, cid)
    scenario.stop_and_remove(cri, pod, cid)
    print(f"\n{HANDLER} (TCG): 256 KiB echoed host -> pod -> host in {seconds * 1000:.0f} ms")
