"""Terminals through --console-socket, as runc's callers use them (process tier): the test
listens on the socket, receives the pty master by SCM_RIGHTS, and reads/writes the
container's terminal through it."""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import tempfile
import time

import pytest

from kata_runtime.console import set_size
from tests.support.oci import set_process

pytestmark = pytest.mark.sandbox


class ConsoleSocket:
    """A unix socket a runtime sends a pty master to (a short path: sun_path is 108 bytes)."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="kcs", dir="/tmp")
        self.path = os.path.join(self.dir, "console.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(1)
        self.master = -1

    def receive(self, timeout: float = 30) -> str:
        """Accept the runtime's connection; keep the master; return the pty name it sent."""
        self.sock.settimeout(timeout)
        conn, _ = self.sock.accept()
        with conn:
            msg, fds, _flags, _addr = socket.recv_fds(conn, 4096, 1)
        assert len(fds) == 1
        self.master = fds[0]
        return msg.decode()

    def read_until(self, needle: bytes, timeout: float = 30) -> bytes:
        out = b""
        deadline = time.monotonic() + timeout
        while needle not in out:
            left = deadline - time.monotonic()
            assert left > 0, f"no {needle!r} on the terminal, got {out!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: every slave closed
                    chunk = b""
                assert chunk, f"terminal closed before {needle!r}, got {out!r}"
                out += chunk
        return out

    def close(self):
        if self.master >= 0:
            os.close(self.master)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def console():
    c = ConsoleSocket()
    yield c
    c.close()


def test_create_with_terminal_sends_the_master_and_relays_size_and_input(kata, bundle, new_id, console):
    cid = new_id()
    set_process(bundle, terminal=True, consoleSize={"height": 30, "width": 100},
                args=["sh", "-c", "stty size; read x; echo got-$x; stty size; sleep 1000"])
    p = kata.create(cid, bundle, "--console-socket", console.path)
    assert p.returncode == 0, kata.explain(p, ["create"])
    assert console.receive().startswith("/dev/pts/")
    kata.ok("start", cid)
    console.read_until(b"30 100")  # the size from config.json, from the first instruction
    set_size(console.master, 40, 120)  # SIGWINCH to the shim -> TtyWinResize
    time.sleep(0.3)
    os.write(console.master, b"abc\n")
    out = console.read_until(b"40 120")
    assert b"got-abc" in out


def test_create_with_terminal_needs_a_console_socket(kata, bundle, new_id):
    cid = new_id()
    set_process(bundle, terminal=True)
    p = kata.create(cid, bundle)
    assert p.returncode == 1 and b"console socket" in p.stderr


def test_exec_tty_through_a_console_socket(kata, bundle, new_id, console, tmp_path):
    cid = new_id()
    assert kata.create(cid, bundle).returncode == 0
    kata.ok("start", cid)
    process = {"terminal": True, "consoleSize": {"height": 33, "width": 77}, "args": ["sh", "-c", "stty size; tty"],
               "cwd": "/", "env": ["PATH=/bin", "TERM=xterm"], "user": {"uid": 0, "gid": 0}}
    (tmp_path / "process.json").write_text(json.dumps(process))
    kata.ok("exec", "--detach", "--console-socket", console.path, "--process", str(tmp_path / "process.json"), cid)
    console.receive()
    out = console.read_until(b"/dev/pts/")
    assert b"33 77" in out


def test_exec_tty_flag(kata, bundle, new_id, console):
    cid = new_id()
    assert kata.create(cid, bundle).returncode == 0
    kata.ok("start", cid)
    kata.ok("exec", "--tty", "--detach", "--console-socket", console.path, cid, "sh", "-c", "tty; echo done")
    console.receive()
    out = console.read_until(b"done")
    assert b"/dev/pts/" in out
