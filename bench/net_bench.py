"""Pod network benchmark: a TCP echo server in a container on a pod network, driven from the peer.

    python -m bench.net_bench [--mib N] [--pings N] [--qemu] [--image-cache DIR] [--quick]

The bench makes its own two network namespaces joined by a veth, as CNI's bridge plugin would
(``<tag>-pod`` with the pod's address, ``<tag>-peer`` the host side), and runs the same busybox
container (``nc -ll -p 7000 -e cat``: an echo server) on the pod network under each tier:

* ``runc``        the host's runc, the container joining the pod namespace (the baseline);
* ``kata-process`` kata-runtime, process sandbox (the agent joins the namespace: no VM, no tap);
* ``kata-qemu``    kata-runtime, QEMU guest behind the tcfilter taps (``--qemu``; TCG here: the
                   guest's virtio-net is emulated, so expect far lower figures than with KVM).

From the peer namespace: throughput = N MiB sent to the echo server while the echo is read back
(both directions at once; MiB/s of payload each way), and round-trip latency = 64-byte
messages echoed one at a time (median and p90). Ratios are tier / runc, measured in the same run.
Never asserts. The last line is machine-readable: ``RESULT runc_mibs=.. kata-process_mibs=.. ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POD_IP, PEER_IP, PREFIX, PORT = "10.214.9.2", "10.214.9.1", 24, 7000
KATA_WITH_QEMU = ("import sys; import kata_runtime.hypervisor as h; "
                  "h.DRIVERS['qemu'] = h.DRIVERS.get('qemu') or 'kata_runtime.hypervisor.qemu:QemuHypervisor'; "
                  "from kata_runtime.cli import main; sys.exit(main())")


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def make_pod_net(tag: str) -> tuple[str, str]:
    pod, peer = f"{tag}-pod", f"{tag}-peer"
    ip("netns", "add", pod)
    ip("netns", "add", peer)
    ip("-n", peer, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", pod)
    ip("-n", peer, "addr", "add", f"{PEER_IP}/{PREFIX}", "dev", "veth0")
    ip("-n", peer, "link", "set", "veth0", "up")
    ip("-n", pod, "addr", "add", f"{POD_IP}/{PREFIX}", "dev", "eth0")
    ip("-n", pod, "link", "set", "eth0", "up")
    ip("-n", pod, "link", "set", "lo", "up")
    ip("-n", pod, "route", "add", "default", "via", PEER_IP)
    return pod, peer


def make_bundle(path: Path, netns: str) -> Path:
    """A busybox bundle (``runc spec``) running the echo server, in the pod's network namespace."""
    rootfs = path / "rootfs"
    for d in ("bin", "proc", "sys", "dev", "tmp", "etc"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", rootfs / "bin" / "busybox")
    for applet in ("sh", "nc", "cat"):
        (rootfs / "bin" / applet).symlink_to("busybox")
    subprocess.run(["runc", "spec", "--bundle", str(path)], check=True)
    config = json.loads((path / "config.json").read_text())
    config["process"].update(terminal=False, args=["nc", "-ll", "-p", str(PORT), "-e", "cat"])
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = f"/run/netns/{netns}"
    (path / "config.json").write_text(json.dumps(config))
    return path


def peer_socket(peer: str) -> socket.socket:
    """A TCP socket made inside the peer namespace, connected to the echo server (retrying)."""
    from kata_runtime.network import in_netns

    deadline = time.monotonic() + 300
    while True:
        with in_netns(f"/run/netns/{peer}"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(30)
        try:
            sock.connect((POD_IP, PORT))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        except OSError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def throughput(peer: str, mib: int) -> float:
    """MiB/s of payload echoed (sent and read back at once)."""
    size = mib << 20
    sock = peer_socket(peer)
    block = os.urandom(64 << 10)
    got = [0]

    def reader():
        while got[0] < size:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            got[0] += len(chunk)

    t = threading.Thread(target=reader)
    t0 = time.monotonic()
    t.start()
    sent = 0
    while sent < size:
        sock.sendall(block)
        sent += len(block)
    t.join(600)
    seconds = time.monotonic() - t0
    sock.close()
    if got[0] < size:
        raise RuntimeError(f"echo returned {got[0]} of {size} bytes")
    return mib / seconds


def latency(peer: str, pings: int) -> list[float]:
    """Round trips (ms) of 64-byte messages, one at a time."""
    sock = peer_socket(peer)
    msg = b"x" * 64
    times = []
    for _ in range(pings):
        t0 = time.perf_counter()
        sock.sendall(msg)
        n = 0
        while n < len(msg):
            n += len(sock.recv(64))
        times.append((time.perf_counter() - t0) * 1000)
    sock.close()
    return times


class Tier:
    def __init__(self, name: str, prefix: list[str]):
        self.name, self.prefix = name, prefix

    def run(self, *args, **kw):
        """Run one command; its stdio are files (a detached container keeps what it inherits)."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            p = subprocess.run([*self.prefix, *args], stdout=out, stderr=err, timeout=600, **kw)
            err.seek(0)
            p.stderr = err.read()
        return p


def start(tier: Tier, bundle: Path, cid: str) -> None:
    if tier.name == "runc":
        p = tier.run("run", "--detach", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL)
    else:
        p = tier.run("create", "--bundle", str(bundle), cid, stdin=subprocess.DEVNULL)
        if p.returncode == 0:
            p = tier.run("start", cid)
    if p.returncode != 0:
        raise RuntimeError(f"{tier.name}: {p.stderr.decode().strip()}")


def stop(tier: Tier, cid: str) -> None:
    tier.run("kill", cid, "KILL")
    time.sleep(0.5)
    tier.run("delete", "--force", cid)


def kata_config(path: Path, hypervisor: str, image=None) -> Path:
    lines = ["[runtime]", f'hypervisor = "{hypervisor}"', 'internetworking_model = "tcfilter"']
    if image is not None:
        lines += ["[hypervisor.qemu]", f'kernel = "{image.kernel}"', f'initrd = "{image.initrd}"',
                  f'image = "{image.image}"', 'accel = "tcg"', "default_memory = 1024"]
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.net_bench")
    ap.add_argument("--mib", type=int, default=32, help="MiB echoed for throughput")
    ap.add_argument("--pings", type=int, default=300, help="round trips for latency")
    ap.add_argument("--qemu", action="store_true", help="also a QEMU guest (TCG here) behind the tcfilter taps")
    ap.add_argument("--image-cache", default=None, help="guest image cache dir (kata_runtime.image)")
    ap.add_argument("--quick", action="store_true", help="smoke: 2 MiB, 20 pings")
    args = ap.parse_args(argv)
    if args.quick:
        args.mib, args.pings = 2, 20
    tmp = Path(tempfile.mkdtemp(prefix="kpy-netbench-"))
    tag = f"knb{uuid.uuid4().hex[:6]}"
    pod, peer = make_pod_net(tag)
    kata = [str(Path(sys.executable).with_name("kata-runtime"))]
    tiers = [Tier("runc", ["runc", "--root", str(tmp / "runc")]),
             Tier("kata-process", [*kata, "--root", str(tmp / "kp"), "--kata-config",
                                   str(kata_config(tmp / "kp.toml", "process"))])]
    if args.qemu:
        from kata_runtime.image import Recipe, build_image, gather_inputs

        image = build_image(args.image_cache, inputs=gather_inputs(Recipe())) if args.image_cache else \
            build_image(inputs=gather_inputs(Recipe()))
        tiers.append(Tier("kata-qemu", [sys.executable, "-c", KATA_WITH_QEMU, "--root", str(tmp / "kq"),
                                        "--kata-config", str(kata_config(tmp / "kq.toml", "qemu", image))]))
    results = {}
    try:
        for tier in tiers:
            bundle = make_bundle(tmp / f"bundle-{tier.name}", pod)
            cid = f"{tag}-{tier.name}"
            t0 = time.monotonic()
            start(tier, bundle, cid)
            try:
                up = time.monotonic() - t0
                mibs = throughput(peer, args.mib)
                rtts = latency(peer, args.pings)
            finally:
                stop(tier, cid)
            rtts.sort()
            results[tier.name] = (mibs, statistics.median(rtts), rtts[int(len(rtts) * 0.9) - 1], up)
    finally:
        for ns in (pod, peer):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    base = results["runc"]
    print(f"pod network echo ({args.mib} MiB both ways at once; {args.pings} x 64 B round trips); "
          "kata-qemu is TCG-emulated here")
    print(f"{'tier':14} {'MiB/s':>8} {'x runc':>7} {'rtt med ms':>11} {'x runc':>7} {'rtt p90 ms':>11} {'up s':>6}")
    out = []
    for name, (mibs, med, p90, up) in results.items():
        print(f"{name:14} {mibs:8.1f} {mibs / base[0]:7.3f} {med:11.3f} {med / base[1]:7.1f} {p90:11.3f} {up:6.1f}")
        out += [f"{name}_mibs={mibs:.2f}", f"{name}_rtt_ms={med:.3f}"]
    print("RESULT " + " ".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
