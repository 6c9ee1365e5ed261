"""`make demo`: the furthest the stack reaches today, step by step, with real processes.

    python -m bench.demo

1. yamux: two sessions (client and server) over a socket pair: a stream echo, a ping, a bulk echo.
2. A container in the process sandbox: kata-agent in fresh namespaces behind a QEMU-shaped
   channel socket, the real kata-proxy multiplexing it, the real kata-shim relaying the
   container's output and exit code, wired with kata-runtime's own pieces (its process driver,
   proxy launcher, agent client, spec translation of runc's default config.json); only the busybox
   rootfs comes from tests/support.
3. A container in a VM: comes with the OCI runtime issue (kata-runtime + QEMU).

Everything runs in a temp dir and is stopped and removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MiB = 1 << 20


def say(text: str) -> None:
    print(text, flush=True)


async def yamux_demo() -> None:
    import yamux

    say("== 1. yamux: client and server sessions over one socket pair")
    a, b = socket.socketpair()
    client = await yamux.Session.from_socket(a, client=True)
    server = await yamux.Session.from_socket(b, client=False)

    async def echo_server():
        while True:
            try:
                stream = await server.accept_stream()
            except yamux.SessionClosedError:
                return
            asyncio.ensure_future(echo(stream))

    async def echo(stream):
        while data := await stream.read(256 * 1024):
            stream.write(data)
            await stream.drain()
        stream.close()

    acceptor = asyncio.ensure_future(echo_server())
    stream = await client.open_stream()
    stream.write(b"hello over yamux")
    stream.write_eof()
    reply = await stream.read_until_eof()
    say(f"   stream {stream.id}: sent b'hello over yamux', echoed {reply!r}")
    rtt = await client.ping()
    say(f"   ping round trip: {rtt * 1e6:.0f} us")

    bulk = await client.open_stream()
    payload = os.urandom(MiB)
    total = 64 * MiB
    start = time.perf_counter()

    async def send():
        for _ in range(total // MiB):
            bulk.write(payload)
            await bulk.drain()
        bulk.write_eof()

    sender = asyncio.ensure_future(send())
    received = 0
    while data := await bulk.read():
        received += len(data)
    await sender
    elapsed = time.perf_counter() - start
    say(f"   bulk echo: {received // MiB} MiB back in {elapsed:.2f} s ({received / MiB / elapsed:.0f} MiB/s,"
        f" both ends in this one process)")
    await client.close()
    await server.close()
    acceptor.cancel()


async def sandbox_demo(workdir: str) -> int:
    from katapb import health_pb2, health_pb2_grpc

    from kata_oci import container_spec
    from kata_runtime import proxy as kata_proxy, shim as kata_shim
    from kata_runtime.agent import Agent
    from kata_runtime.default_spec import example_spec
    from kata_runtime.hypervisor import driver
    from kata_runtime.sandbox import shared_storage
    from tests.support.rootfs import build_busybox_rootfs

    say("\n== 2. a container in the process sandbox: kata-agent <- yamux -> kata-proxy <- gRPC - kata-shim")
    sandbox_dir = os.path.join(workdir, "sandbox")
    os.makedirs(sandbox_dir)
    sandbox = driver("process")(sandbox_dir, "demo-sandbox")
    await sandbox.start()
    proxy = None
    agent = None
    try:
        say(f"   agent pid {sandbox.agent_pid()} in its own mount/pid/uts/ipc namespaces,"
            f" channel {sandbox.channel_socket_path}")
        listen = os.path.join(sandbox_dir, "proxy.sock")
        proxy = await asyncio.to_thread(kata_proxy.start, {}, "demo-sandbox", sandbox.channel_socket_path, listen,
                                        os.path.join(sandbox_dir, "proxy.log"))
        say(f"   kata-proxy pid {proxy['pid']} listening on {listen}")
        agent = Agent(listen, timeout=30)
        version = health_pb2_grpc.HealthStub(agent.channel).Version(health_pb2.CheckRequest(), timeout=30)
        say(f"   agent version {version.agent_version} (grpc {version.grpc_version})")
        agent.create_sandbox("demo-sandbox", "demo", [shared_storage()])
        cid = "hello"
        build_busybox_rootfs(Path(sandbox.shared_dir) / cid / "rootfs")
        spec = example_spec()  # runc's default config.json, as `kata-runtime spec` writes it
        spec["process"].update(terminal=False, args=[
            "sh", "-c", "echo hello from a container; echo its hostname is $(hostname); "
                        "echo and this goes to stderr >&2; exit 3"])
        spec["hostname"] = "demo-container"
        agent.create_container(cid, container_spec(spec, cid))
        agent.start_container(cid)
        command = [*kata_shim.command({}), "--agent", f"unix://{listen}", "--container", cid, "--exec-id", cid]
        say(f"   $ {' '.join(os.path.basename(c) if i == 0 else c for i, c in enumerate(command))}")
        shim = await asyncio.to_thread(subprocess.run, command, stdin=subprocess.DEVNULL,
                                       capture_output=True, timeout=60)
        for line in shim.stdout.decode().splitlines():
            say(f"   stdout | {line}")
        for line in shim.stderr.decode().splitlines():
            say(f"   stderr | {line}")
        say(f"   kata-shim exited with {shim.returncode} (the container's exit status)")
        agent.remove_container(cid)
        agent.destroy_sandbox()
        return shim.returncode
    finally:
        if agent is not None:
            agent.close()
        if proxy is not None:
            kata_proxy.stop(proxy)
        await sandbox.stop()
        say("   sandbox stopped: agent, proxy and sockets gone")


def main() -> int:
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(yamux_demo())
    with tempfile.TemporaryDirectory(prefix="kata-demo-") as workdir:
        status = asyncio.run(sandbox_demo(workdir))
    say("\n== 3. a container in a VM: arrives with kata-runtime and its QEMU driver (the OCI runtime issue)")
    return 0 if status == 3 else 1


if __name__ == "__main__":
    sys.exit(main())
