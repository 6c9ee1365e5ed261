"""kata-agent's VM mode in a real QEMU guest (TCG): PID 1 set-up, the virtio-serial port
`agent.channel.0`, waiting for the host side, a container under runc with the agent's cgroups,
and a proxy that goes away and comes back.

No guest image is needed: a tiny busybox initrd loads the virtio/9p modules, mounts the HOST's
root filesystem read-only over virtio-9p and switch_roots into `python -m kata_agent` (so the
guest runs this checkout, with the host's python, grpc and runc). The channel, console and
shared-dir wiring are exactly DESIGN.md's QEMU command line.
"""

from __future__ import annotations

import asyncio
import glob
import gzip
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import grpc
import pytest

from katapb import agent_pb2, health_pb2
from tests.support.agent import AgentClient
from tests.support.oci import busybox_spec, shared_storage
from tests.support.proxy import start_proxy
from tests.support.requirements import missing as missing_tools
from tests.support.rootfs import build_busybox_rootfs, find_busybox

pytestmark = pytest.mark.vm

MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
           "virtio_console", "netfs", "fscache", "9pnet", "9pnet_virtio", "9p")
# The first RPC waits for the guest to boot: wait_for_ready, or grpc gives up on the first
# connection attempt that sees no HTTP/2 SETTINGS within its 20 s connect timeout.
BOOT_TIMEOUT = 180.0

INIT = """#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
for m in $(/bin/busybox cat /lib/modules/order); do /bin/busybox insmod /lib/modules/$m.ko || echo "insmod $m failed"; done
[ -e /dev/hvc0 ] && exec </dev/hvc0 >/dev/hvc0 2>&1
/bin/busybox mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /newroot || exec /bin/busybox sh
# The agent puts a tmpfs on /tmp unless one is there: give it one now, with the parts of the
# host's /tmp this guest runs from (a checkout or venv under /tmp) bound back in, read-only.
/bin/busybox mkdir -p /hosttmp
/bin/busybox mount -o bind /newroot/tmp /hosttmp
/bin/busybox mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
for p in {tmp_paths}; do
  /bin/busybox mkdir -p /newroot/tmp/$p && /bin/busybox mount -o bind /hosttmp/$p /newroot/tmp/$p
done
/bin/busybox umount /proc
exec /bin/busybox switch_root /newroot {python} -m kata_agent
"""


def kernel() -> tuple[str, str] | None:
    for path in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        version = path[len("/boot/vmlinuz-"):]
        if os.path.isdir(f"/lib/modules/{version}"):
            return path, version
    return None


def missing() -> str | None:
    reason = missing_tools(root="needs root (mknod in the initrd, 9p passthrough of /)",
                           tools=("qemu-system-x86_64", "cpio", "modinfo"), busybox=True)
    if reason is None and kernel() is None:
        return "no /boot/vmlinuz-* with its /lib/modules"
    return reason


def module_bytes(version: str, name: str) -> bytes | None:
    path = subprocess.run(["modinfo", "-k", version, "-n", name], capture_output=True, text=True).stdout.strip()
    if not path or path.startswith("(builtin)") or not os.path.exists(path):
        return None  # built in
    data = Path(path).read_bytes()
    if path.endswith(".xz"):
        import lzma
        return lzma.decompress(data)
    if path.endswith(".zst"):
        return subprocess.run(["zstd", "-qdc", path], capture_output=True, check=True).stdout
    if path.endswith(".gz"):
        return gzip.decompress(data)
    return data


def paths_under_tmp() -> list[str]:
    """The checkout and the venv, relative to /tmp, where they live there (a CI clone may)."""
    repo = Path(__file__).resolve().parents[2]
    found = []
    for path in (repo, Path(sys.prefix).resolve()):
        if path.is_relative_to("/tmp") and path != Path("/tmp"):
            found.append(str(path.relative_to("/tmp")))
    return sorted(set(found))


def build_initrd(workdir: Path, version: str) -> Path:
    root = workdir / "initrd"
    for d in ("bin", "lib/modules", "newroot", "proc", "dev", "sys"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(find_busybox(), root / "bin" / "busybox")
    order = []
    for name in MODULES:
        data = module_bytes(version, name)
        if data is not None:
            (root / "lib" / "modules" / f"{name}.ko").write_bytes(data)
            order.append(name)
    (root / "lib" / "modules" / "order").write_text("\n".join(order) + "\n")
    (root / "init").write_text(INIT.format(python=sys.executable, tmp_paths=" ".join(paths_under_tmp())))
    (root / "init").chmod(0o755)
    os.mknod(root / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    archive = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=names,
                             capture_output=True, check=True).stdout
    out = workdir / "initrd.img"
    out.write_bytes(gzip.compress(archive, 1))
    return out


class Guest:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.channel = str(workdir / "kata.sock")
        self.console = str(workdir / "console.log")
        self.shared = workdir / "shared"
        self.pid_file = workdir / "qemu.pid"

    def start(self) -> None:
        path, version = kernel()
        initrd = build_initrd(self.dir, version)
        self.shared.mkdir()
        subprocess.run([
            "qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "1024", "-smp", "1",
            "-display", "none", "-no-reboot",
            "-kernel", path, "-initrd", str(initrd),
            "-append", "console=hvc0 quiet panic=-1 agent.log=debug",
            "-device", "virtio-serial-pci,id=serial0",
            "-chardev", f"socket,id=charch0,path={self.channel},server=on,wait=off",
            "-device", "virtserialport,bus=serial0.0,chardev=charch0,name=agent.channel.0",
            "-chardev", f"file,id=con0,path={self.console}", "-device", "virtconsole,chardev=con0",
            "-fsdev", "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=root,mount_tag=hostroot",
            "-fsdev", f"local,id=fs0,path={self.shared},security_model=none,multidevs=remap",
            "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=kataShared",
            "-daemonize", "-pidfile", str(self.pid_file),
        ], check=True, timeout=60)

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def stop(self) -> None:
        pid = self.pid
        if pid is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
                time.sleep(0.05)

    def console_text(self) -> str:
        try:
            return Path(self.console).read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture(scope="module")
def guest():
    reason = missing()
    if reason:
        pytest.skip(reason)
    workdir = Path(tempfile.mkdtemp(prefix="kvm", dir="/tmp"))
    g = Guest(workdir)
    try:
        g.start()
        yield g
    finally:
        g.stop()
        sys.stdout.write(f"\n----- guest console -----\n{g.console_text()[-20000:]}\n")
        shutil.rmtree(workdir, ignore_errors=True)


async def read_all(client, cid) -> bytes:
    out = b""
    while True:
        try:
            resp = await client.agent.ReadStdout(
                agent_pb2.ReadStreamRequest(container_id=cid, exec_id=cid, len=32768), timeout=60)
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.OUT_OF_RANGE and exc.details() == "EOF"
            return out
        out += resp.data


async def test_agent_in_a_vm_runs_a_container(guest):
    proxy = await asyncio.to_thread(start_proxy, str(guest.dir), mux=guest.channel, name="proxy1", sandbox_id="vm",
                                    log_level="debug", timeout=90, args=("--channel-timeout", "60"))
    client = AgentClient(f"unix:{proxy.listen_socket}")
    try:
        check = await client.health.Check(health_pb2.CheckRequest(), timeout=BOOT_TIMEOUT, wait_for_ready=True)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        await client.agent.CreateSandbox(agent_pb2.CreateSandboxRequest(
            hostname="vm", storages=[shared_storage()], sandbox_id="vm"), timeout=60)
        cid = f"c-{uuid.uuid4().hex[:8]}"
        build_busybox_rootfs(guest.shared / cid / "rootfs")
        await client.agent.CreateContainer(agent_pb2.CreateContainerRequest(
            container_id=cid, exec_id=cid,
            OCI=busybox_spec(cid, ["sh", "-c", "echo hi from $(hostname); grep -c kata /proc/self/cgroup; exit 7"])),
            timeout=120)
        await client.agent.StartContainer(agent_pb2.StartContainerRequest(container_id=cid), timeout=60)
        out = (await read_all(client, cid)).decode()
        status = await client.agent.WaitProcess(
            agent_pb2.WaitProcessRequest(container_id=cid, exec_id=cid), timeout=60)
        lines = out.splitlines()
        assert lines[0] == "hi from container"
        assert int(lines[1]) >= 3  # runc put it in <cgroup>/kata/<cid> in the v1 hierarchies the agent mounted
        assert status.status == 7
    finally:
        await client.close()
        proxy.stop()
    console = guest.console_text()
    assert "mode=vm pid=1" in console
    assert "found virtio port agent.channel.0" in console


async def test_agent_in_a_vm_serves_a_new_proxy_after_the_old_one_left(guest):
    for name in ("proxy2", "proxy3"):
        proxy = await asyncio.to_thread(start_proxy, str(guest.dir), mux=guest.channel, name=name, sandbox_id="vm",
                                        log_level="debug", timeout=90, args=("--channel-timeout", "60"))
        client = AgentClient(f"unix:{proxy.listen_socket}")
        try:
            check = await client.health.Check(health_pb2.CheckRequest(), timeout=BOOT_TIMEOUT, wait_for_ready=True)
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        finally:
            await client.close()
            assert proxy.stop() == 0
    assert "waiting for the host to reconnect" in guest.console_text()
    assert guest.pid is not None and os.path.exists(f"/proc/{guest.pid}")  # PID 1 did not exit
