"""Process tier faults: a killed client, 1000 connect/disconnect cycles, the guest vanishing,
garbage from the guest."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from kata_proxy import exits
from tests.proxy.clients import MiB, echo_bulk, echo_socket
from tests.support.processes import Proc, wait_for
from tests.support.proxy import start_peer, start_proxy

pytestmark = pytest.mark.sandbox

HOG = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b"E")
block = b"k" * 65536
print("streaming", flush=True)
while True:          # write and never read: the echo backs up into our receive buffer
    s.sendall(block)
"""


async def test_killed_client_resets_only_its_stream(proxy, peer, procs):
    hog = subprocess.Popen([sys.executable, "-c", HOG, proxy.listen], stdout=subprocess.PIPE)
    procs.append(Proc(hog, "hog"))
    assert hog.stdout.readline() == b"streaming\n"

    others = asyncio.gather(*(echo_bulk(proxy.listen, 16 * MiB) for _ in range(3)))
    await asyncio.sleep(0.5)  # everyone mid-stream
    hog.send_signal(signal.SIGKILL)
    hog.wait(timeout=10)
    for received, sent_sha, got_sha in await asyncio.wait_for(others, 240):
        assert received == 16 * MiB and got_sha == sent_sha

    def echo_ends():
        lines = [line for line in peer.events() if "kind=E" in line]
        return lines if len(lines) == 4 else None

    lines = wait_for(echo_ends, 15, "four echo streams to end")
    assert sum("end=reset" in line for line in lines) == 1, lines
    assert sum("end=fin" in line for line in lines) == 3, lines
    assert proxy.alive()
    wait_for(lambda: proxy.stats()["streams"] == 0, 15, "live streams back to 0")


def _cycle(path: str, kind: int) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        if kind == 0:    # a whole echo exchange, then a clean close
            s.sendall(b"Eping")
            got = b""
            while len(got) < 4:
                chunk = s.recv(4 - len(got))
                assert chunk, "EOF before the echo"
                got += chunk
            assert got == b"ping"
        elif kind == 1:  # connect and leave at once
            pass
        else:            # leave with data in flight both ways (the proxy sees a reset)
            s.sendall(b"E" + b"z" * 65536)
    finally:
        s.close()


@pytest.mark.timeout(300)
def test_1000_connect_disconnect_cycles_return_to_baseline(proxy, peer):
    _cycle(proxy.listen, 0)  # warm-up: lazy imports, first stream
    time.sleep(0.3)
    base = proxy.stats()
    base_fds = proxy.fd_count()
    assert base["clients"] == 0 and base["streams"] == 0
    for i in range(1000):
        _cycle(proxy.listen, i % 3)
    wait_for(lambda: (lambda s: s["streams"] == base["streams"] and s["clients"] == 0)(proxy.stats()),
             30, "streams and clients back to baseline")
    wait_for(lambda: proxy.fd_count() == base_fds, 10, f"fd count back to {base_fds}")
    after = proxy.stats()
    assert after["accepted"] == base["accepted"] + 1000
    assert after["fds"] == base["fds"]
    assert proxy.alive()


def test_guest_disappearing_gives_eof_and_exit_code(proxy, peer):
    clients = []
    for _ in range(5):
        clients.append(echo_socket(proxy.listen, b"hello", timeout=15))
    peer.popen.send_signal(signal.SIGKILL)  # the VM is gone
    peer.wait()
    for s in clients:
        assert s.recv(100) == b""  # EOF, not a hang and not a reset
        s.close()
    assert proxy.wait(timeout=15) == exits.CHANNEL_CLOSED
    errors = [line for line in proxy.log_lines() if "level=error" in line]
    assert len(errors) == 1, errors
    assert "guest channel closed" in errors[0] and "exit_code=5" in errors[0]
    assert not os.path.exists(proxy.listen)


def test_garbage_from_guest_gives_go_away_and_exit(sockdir, procs):
    peer = start_peer(sockdir, mode="garbage")
    procs.append(peer)
    proxy = start_proxy(sockdir, mux=peer.listen, ready=False)
    procs.append(proxy)
    assert proxy.wait(timeout=20) == exits.PROTOCOL
    errors = [line for line in proxy.log_lines() if "level=error" in line]
    assert len(errors) == 1, errors
    assert "protocol error from the guest" in errors[0]
    wait_for(lambda: any(line.startswith("garbage done") for line in peer.events()), 15, "peer done")
    events = peer.events()
    assert any(line.startswith("goaway code=") for line in events), events
    assert not os.path.exists(os.path.join(sockdir, "proxy.sock"))


def test_sigterm_goes_away_closes_clients_and_removes_socket(proxy, peer):
    s = echo_socket(proxy.listen, b"hi", timeout=15)
    proxy.signal(signal.SIGTERM)
    assert proxy.wait(timeout=15) == exits.OK
    assert s.recv(10) == b""
    s.close()
    assert not os.path.exists(proxy.listen)
    assert any("sent Go Away" in line for line in proxy.log_lines())
    closed = wait_for(lambda: [line for line in peer.events() if line.startswith("session closed")],
                      10, "the peer to see its session end")
    assert "remote_go_away=True" in closed[0], closed  # the agent was told: Go Away


def test_sigint_before_the_guest_is_up(sockdir, procs):
    proxy = start_proxy(sockdir, mux=os.path.join(sockdir, "not-yet.sock"),
                                      ready=False, args=["--channel-timeout", "60"])
    procs.append(proxy)
    wait_for(lambda: os.path.exists(os.path.join(sockdir, "proxy.sock")), 20, "the listen socket")
    proxy.signal(signal.SIGINT)
    assert proxy.wait(timeout=15) == exits.OK
    assert not os.path.exists(os.path.join(sockdir, "proxy.sock"))
