"""Process tier: systemd socket activation for real, sd_notify readiness, guest console lines,
JSON logs, the serial-device channel (a pty)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

from kata_proxy import exits
from tests.proxy.clients import LOCAL_POOL, echo_socket, health_check
from tests.support.processes import REPO, Proc, wait_for
from tests.support.proxy import start_peer, start_proxy

pytestmark = pytest.mark.sandbox


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate missing (apt-get install systemd)")
async def test_socket_activation_for_real(sockdir, peer, procs):
    import grpc
    from katapb import health_pb2

    sock = os.path.join(sockdir, "activated.sock")
    log = os.path.join(sockdir, "proxy.log")
    cmd = ["systemd-socket-activate", "-l", sock, "-E", f"PYTHONPATH={REPO}",
           sys.executable, "-m", "kata_proxy", "-mux-socket", peer.listen, "-sandbox", "sa",
           "-log", "debug", "--log-file", log]
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(REPO))
    activator = Proc(popen, "systemd-socket-activate")
    procs.append(activator)
    wait_for(lambda: os.path.exists(sock), 20, "systemd-socket-activate to listen")
    # the first connection starts the proxy, which serves the socket it is handed as fd 3
    async with grpc.aio.insecure_channel("unix:" + sock, options=LOCAL_POOL) as channel:
        assert await health_check(channel) == health_pb2.HealthCheckResponse.SERVING
    async with grpc.aio.insecure_channel("unix:" + sock, options=LOCAL_POOL) as channel:
        assert await health_check(channel) == health_pb2.HealthCheckResponse.SERVING
    lines = open(log).read()
    assert "systemd fd 3" in lines
    assert "sandbox=sa" in lines
    activator.signal(signal.SIGTERM)  # systemd-socket-activate exec'ed the proxy: same pid
    assert activator.wait(15) == exits.OK
    assert os.path.exists(sock)  # systemd's socket: never unlinked by the proxy


def test_ready_via_sd_notify(sockdir, peer, procs):
    notify_path = os.path.join(sockdir, "notify.sock")
    nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    nsock.bind(notify_path)
    nsock.settimeout(30)
    try:
        proxy = start_proxy(sockdir, mux=peer.listen, ready=False,
                                          env={"NOTIFY_SOCKET": notify_path})
        procs.append(proxy)
        message = nsock.recv(4096).decode()
        assert "READY=1" in message.splitlines()
        assert f"MAINPID={proxy.pid}" in message.splitlines()
        proxy.signal(signal.SIGTERM)
        assert "STOPPING=1" in nsock.recv(4096).decode()
        assert proxy.wait(15) == exits.OK
        assert proxy.popen.stdout.read() == b""  # with systemd, no stdout line
    finally:
        nsock.close()


def test_guest_console_lines_are_logged(sockdir, peer, procs):
    console_path = os.path.join(sockdir, "console.sock")
    console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    console.bind(console_path)
    console.listen(1)
    console.settimeout(20)
    try:
        proxy = start_proxy(
            sockdir, mux=peer.listen, log_level="warn",
            args=["--sandbox", "sb-9", "--agent-logs-socket", console_path])
        procs.append(proxy)
        conn, _ = console.accept()
        conn.sendall(b"[    0.1] guest kernel line\r\nlevel=info msg=\"agent started\"\npartial")
        conn.sendall(b" line\n" + b"\xff\xfebad bytes\n")

        def agent_lines():
            lines = [line for line in proxy.log_lines() if "source=agent" in line]
            return lines if len(lines) >= 4 else None

        from kata_log import parse_logfmt

        lines = [parse_logfmt(line) for line in wait_for(agent_lines, 20, "4 agent lines")]
        assert [entry["msg"] for entry in lines] == [
            "[    0.1] guest kernel line", 'level=info msg="agent started"', "partial line",
            "\ufffd\ufffdbad bytes"]
        assert all(entry["sandbox"] == "sb-9" for entry in lines)
        assert all(entry["level"] == "warning" for entry in lines)  # at the proxy's level
        conn.close()
        # the data path never depended on the console
        echo_socket(proxy.listen, b"ok").close()
    finally:
        console.close()


def test_json_log_format(sockdir, peer, procs):
    proxy = start_proxy(sockdir, mux=peer.listen, log_level="debug",
                                      args=["--log-format", "json", "--sandbox", "js"])
    procs.append(proxy)
    proxy.signal(signal.SIGUSR1)
    wait_for(lambda: any('"msg":"stats"' in line for line in proxy.log_lines()), 10, "stats")
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(15) == exits.OK
    entries = [json.loads(line) for line in proxy.log_lines()]
    assert entries and all(e["sandbox"] == "js" and e["name"] == "kata-proxy" for e in entries)
    assert any(e["msg"] == "guest channel up" for e in entries)
    stats = next(e for e in entries if e["msg"] == "stats")
    assert stats["streams"] == 0 and stats["clients"] == 0 and stats["fds"] > 0


async def test_channel_is_a_tty(sockdir, procs):
    import grpc
    from katapb import health_pb2

    peer = start_peer(sockdir, pty=True)
    procs.append(peer)
    proxy = start_proxy(sockdir, args=["--channel", peer.pty_path()])
    procs.append(proxy)
    async with grpc.aio.insecure_channel("unix:" + proxy.listen, options=LOCAL_POOL) as channel:
        for _ in range(3):
            assert await health_check(channel) == health_pb2.HealthCheckResponse.SERVING
    from tests.proxy.clients import echo_bulk

    received, sent, got = await echo_bulk(proxy.listen, 4 << 20)
    assert received == 4 << 20 and sent == got


async def test_go_flag_spellings_end_to_end(sockdir, peer, procs):
    import grpc
    from katapb import health_pb2

    listen = os.path.join(sockdir, "go.sock")
    proxy = start_proxy(
        sockdir, listen=None,
        args=["-listen-socket", "unix://" + listen, "-mux-socket", peer.listen, "-sandbox", "gosb",
              "-log", "info", "-debug=false"])
    procs.append(proxy)
    async with grpc.aio.insecure_channel("unix:" + listen, options=LOCAL_POOL) as channel:
        assert await health_check(channel) == health_pb2.HealthCheckResponse.SERVING
    assert any("sandbox=gosb" in line for line in proxy.log_lines())
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(15) == exits.OK
    assert not os.path.exists(listen)


def test_paused_guest_is_not_fatal(sockdir, peer, procs):
    """A paused VM (here: SIGSTOP on the agent stand-in) only makes the heartbeat log."""
    proxy = start_proxy(sockdir, mux=peer.listen, args=["--heartbeat", "0.5"])
    procs.append(proxy)
    s = echo_socket(proxy.listen, b"one", timeout=20)
    peer.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: any("did not answer a ping" in line for line in proxy.log_lines()), 15,
                 "the heartbeat warning")
        assert proxy.alive()
        s.sendall(b"two")  # queued while the guest is paused
    finally:
        peer.signal(signal.SIGCONT)
    assert s.recv(3) == b"two"
    wait_for(lambda: any("answers pings again" in line for line in proxy.log_lines()), 15,
             "the heartbeat to recover")
    s.close()
    assert proxy.alive()


def test_channel_path_that_is_a_socket(sockdir, peer, procs):
    """--channel given a unix socket (QEMU's chardev) connects to it like --mux-socket."""
    proxy = start_proxy(sockdir, args=["--channel", peer.listen])
    procs.append(proxy)
    echo_socket(proxy.listen, b"sock").close()
