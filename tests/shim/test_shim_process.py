"""Process tier: the real kata-shim relaying containers of a process sandbox through kata-proxy.

    test <-pipes/pty-> kata-shim -> proxy.sock -> kata-proxy (yamux) -> kata.sock
        -> kata-agent -> runc container

The container is created and started with the agent API by the test (as kata-runtime will);
the shim is started with --exec-id = the container id for the init process, or an exec id.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import queue
import signal
import socket
import struct
import subprocess
import termios
import threading
import time

import pytest

from kata_shim import exits

pytestmark = pytest.mark.sandbox

MiB = 1 << 20


class LineReader:
    """Lines of a shim's stdout, read by a thread (so a test can wait with a timeout)."""

    def __init__(self, stream):
        self.q: queue.Queue = queue.Queue()
        self.seen: list[bytes] = []
        self.t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.t.start()

    def _run(self, stream):
        for line in iter(stream.readline, b""):
            self.q.put(line)
        self.q.put(None)

    def wait_for(self, text: bytes, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{text!r} not seen; got {self.seen!r}")
            try:
                line = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"EOF before {text!r}; got {self.seen!r}")
            self.seen.append(line)
            if text in line:
                return line


# ---------------------------------------------------------------- stdio


async def test_echo(agent):
    agent.create("echo", ["echo", "hello world"])
    shim = agent.shim("echo")
    agent.start("echo")
    out, err = shim.communicate(timeout=60)
    assert (shim.returncode, out, err) == (0, b"hello world\n", b"")


async def test_debug_logging_never_touches_the_container_stdio(agent, sandbox_dir):
    log = os.path.join(sandbox_dir, "shim.log")
    agent.create("logged", ["sh", "-c", "echo out; echo err >&2"])
    shim = agent.shim("logged", None, "-debug", "--log-format", "json", "--log-file", log)
    agent.start("logged")
    out, err = shim.communicate(timeout=60)
    assert (shim.returncode, out, err) == (0, b"out\n", b"err\n")
    import json
    records = [json.loads(line) for line in open(log)]
    assert records[0]["msg"] == "starting" and records[0]["exec-id"] == "logged"
    assert {"msg": "process done", "status": 0}.items() <= records[-1].items()


async def test_stdout_and_stderr_stay_apart(agent):
    agent.create("apart", ["sh", "-c", "echo out; echo err >&2; echo out2; exit 3"])
    shim = agent.shim("apart")
    agent.start("apart")
    out, err = shim.communicate(timeout=60)
    assert (shim.returncode, out, err) == (3, b"out\nout2\n", b"err\n")


async def test_cat_64mib_byte_exact(agent):
    data = os.urandom(64 * MiB)
    agent.create("cat", ["cat"])
    shim = agent.shim("cat", stdin=subprocess.PIPE)
    agent.start("cat")
    out, err = shim.communicate(data, timeout=240)
    assert shim.returncode == 0, err
    assert len(out) == len(data)
    assert hashlib.sha256(out).digest() == hashlib.sha256(data).digest()


async def test_100mib_written_right_before_exit_all_delivered(agent):
    n = 100 * MiB
    agent.create("big", ["sh", "-c", f"yes abcdefghi | head -c {n}; exit 0"])
    shim = agent.shim("big")
    agent.start("big")
    out, err = shim.communicate(timeout=240)
    assert shim.returncode == 0, err
    assert len(out) == n
    assert out == (b"abcdefghi\n" * (n // 10 + 1))[:n]


async def test_tail_of_short_lived_processes_is_never_lost(agent):
    # kata agent#125: the original lost the end of the output now and then.
    agent.run("tails", ["sh", "-c", "sleep 60"])
    for i in range(10):
        eid = f"t{i}"
        agent.exec("tails", eid, ["sh", "-c", f"seq 1 2000; printf 'last-{i}'"])
        shim = agent.shim("tails", eid)
        out, err = shim.communicate(timeout=60)
        assert shim.returncode == 0, err
        assert out.endswith(f"2000\nlast-{i}".encode()) and out.count(b"\n") == 2000


async def test_slow_reader_slows_the_container_nothing_dropped(agent):
    n = 8 * MiB
    agent.create("slow", ["sh", "-c", f"head -c {n} /dev/zero | tr '\\0' x"])
    shim = agent.shim("slow")
    agent.start("slow")
    got = 0
    t0 = time.monotonic()
    while True:
        chunk = shim.stdout.read1(16 << 10) if hasattr(shim.stdout, "read1") else shim.stdout.read(16 << 10)
        if not chunk:
            break
        assert chunk.count(b"x") == len(chunk)
        got += len(chunk)
        if time.monotonic() - t0 < 1.0:
            time.sleep(0.01)  # a slow reader for the first second
    assert shim.wait(60) == 0 and got == n


async def test_reader_gone_the_process_still_runs_to_completion(agent):
    # EPIPE on our stdout: the rest is drained and discarded, never left to block the process.
    agent.create("epipe", ["sh", "-c", "head -c 8388608 /dev/zero; echo done >&2; exit 6"])
    r, w = os.pipe()
    os.close(r)
    shim = agent.shim("epipe", stdout=w)
    os.close(w)
    agent.start("epipe")
    assert shim.wait(60) == 6
    assert shim.stderr.read() == b"done\n"


# ---------------------------------------------------------------- exit codes


@pytest.mark.parametrize("script,status", [
    ("exit 0", 0),
    ("exit 3", 3),
    ('sh -c "kill -9 \\$\\$"; exit $?', 137),  # a child killed by SIGKILL: the shell exits 137
])
async def test_exit_codes(agent, script, status):
    cid = f"exit{status}"
    agent.create(cid, ["sh", "-c", script])
    shim = agent.shim(cid)
    agent.start(cid)
    assert shim.wait(60) == status


async def test_death_by_signal_is_128_plus_n(agent):
    agent.run("killed", ["sh", "-c", "echo up; sleep 60"])
    shim = agent.shim("killed")
    assert shim.stdout.readline() == b"up\n"
    agent.signal("killed", "killed", signal.SIGKILL)  # as `docker kill` would, not through the shim
    assert shim.wait(60) == 128 + 9


async def test_no_proxy_exit_code(agent):
    agent.create("noexit", ["sh", "-c", "exit 3"])
    shim = agent.shim("noexit", None, "-proxy-exit-code=false")
    agent.start("noexit")
    assert shim.wait(60) == 0


async def test_exec_process_with_its_own_shim(agent):
    agent.run("host", ["sh", "-c", "sleep 60"])
    agent.exec("host", "e1", ["sh", "-c", "echo from-exec; cat; echo err >&2; exit 5"])
    shim = agent.shim("host", "e1", stdin=subprocess.PIPE)
    out, err = shim.communicate(b"typed input\n", timeout=60)
    assert (shim.returncode, out, err) == (5, b"from-exec\ntyped input\n", b"err\n")


async def test_unknown_process_fails_with_the_documented_status(agent):
    # The first read already fails (the shim waits only once stdout and stderr are at EOF).
    shim = agent.shim("no-such-container", "nope")
    out, err = shim.communicate(timeout=60)
    assert shim.returncode == exits.SHIM_FAILURE
    assert err.count(b"\n") == 1 and err.startswith(b"kata-shim: std")
    assert b"of process nope (container no-such-container) ended with an error, not EOF" in err
    assert b"NOT_FOUND" in err


# ---------------------------------------------------------------- signals


async def test_signals_reach_the_container(agent):
    script = ("trap 'echo got-TERM' TERM; trap 'echo got-INT' INT; trap 'echo got-USR1' USR1; "
              "trap 'echo got-USR2; exit 7' USR2; echo ready; while :; do sleep 0.05; done")
    agent.create("sig", ["sh", "-c", script])
    shim = agent.shim("sig")
    agent.start("sig")
    lines = LineReader(shim.stdout)
    lines.wait_for(b"ready")
    for sig, name in ((signal.SIGTERM, b"got-TERM"), (signal.SIGINT, b"got-INT"), (signal.SIGUSR1, b"got-USR1")):
        shim.send_signal(sig)
        lines.wait_for(name)
        assert shim.poll() is None  # the shim itself survives what it forwards
    shim.send_signal(signal.SIGUSR2)
    lines.wait_for(b"got-USR2")
    assert shim.wait(30) == 7


async def test_sigpipe_and_sigchld_are_not_forwarded(agent):
    script = "trap 'echo got-PIPE' PIPE; trap 'echo got-CHLD' CHLD; echo ready; sleep 1; echo done"
    agent.create("nofwd", ["sh", "-c", script])
    shim = agent.shim("nofwd")
    agent.start("nofwd")
    lines = LineReader(shim.stdout)
    lines.wait_for(b"ready")
    shim.send_signal(signal.SIGPIPE)
    shim.send_signal(signal.SIGCHLD)
    lines.wait_for(b"done")
    assert shim.wait(30) == 0
    assert b"got-PIPE\n" not in lines.seen


# ---------------------------------------------------------------- terminal


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class PtyReader:
    def __init__(self, master: int):
        self.master = master
        self.buf = bytearray()

    def wait_for(self, text: bytes, timeout: float = 15.0, poke=None) -> None:
        deadline = time.monotonic() + timeout
        next_poke = 0.0
        while text not in self.buf:
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(f"{text!r} not seen in {bytes(self.buf)!r}")
            if poke is not None and now >= next_poke:
                poke()
                next_poke = now + 0.5
            import select
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.buf += os.read(self.master, 65536)
                except OSError:
                    raise AssertionError(f"pty closed before {text!r}: {bytes(self.buf)!r}")


async def test_terminal_raw_mode_and_window_size(agent):
    master, slave = pty.openpty()
    try:
        set_size(slave, 30, 100)
        before = termios.tcgetattr(slave)
        assert before[3] & termios.ICANON and before[3] & termios.ECHO
        agent.create("tty", ["sh", "-c", 'while read line; do echo "size=$(stty size)"; done; echo bye'],
                     terminal=True)
        shim = agent.shim("tty", None, "--terminal", stdin=slave, stdout=slave, stderr=slave)
        agent.start("tty")
        out = PtyReader(master)

        deadline = time.monotonic() + 15
        while termios.tcgetattr(slave)[3] & (termios.ICANON | termios.ECHO):
            assert time.monotonic() < deadline, "the shim never put its terminal into raw mode"
            time.sleep(0.02)
        raw = termios.tcgetattr(slave)
        assert not raw[3] & (termios.ICANON | termios.ECHO | termios.ISIG)
        assert not raw[1] & termios.OPOST and not raw[0] & termios.ICRNL

        os.write(master, b"hello\r")
        out.wait_for(b"size=30 100")  # the initial size, sent at start

        set_size(master, 40, 120)
        shim.send_signal(signal.SIGWINCH)
        out.wait_for(b"size=40 120", poke=lambda: os.write(master, b"\r"))

        os.write(master, b"\x04")  # ^D: EOF for the container's `read`
        out.wait_for(b"bye")
        assert shim.wait(30) == 0
        after = termios.tcgetattr(slave)
        assert after == before  # restored on exit
    finally:
        os.close(master)
        os.close(slave)


async def test_exec_with_a_terminal(agent):
    master, slave = pty.openpty()
    try:
        set_size(slave, 33, 111)
        agent.run("ttyhost", ["sh", "-c", "sleep 60"])
        agent.exec("ttyhost", "x1", ["sh", "-c", 'read line; echo "tty=$(tty) size=$(stty size)"; exit 9'],
                   terminal=True)
        shim = agent.shim("ttyhost", "x1", "-terminal", stdin=slave, stdout=slave, stderr=slave)
        out = PtyReader(master)
        os.write(master, b"go\r")
        out.wait_for(b"size=33 111")
        assert b"tty=/dev/pts/" in out.buf
        assert shim.wait(30) == 9
    finally:
        os.close(master)
        os.close(slave)


# ---------------------------------------------------------------- faults


async def test_proxy_killed_mid_run_exits_with_the_failure_status(agent):
    agent.run("orphan", ["sh", "-c", "while :; do echo tick; sleep 0.1; done"])
    shim = agent.shim("orphan", None, "--reconnect-timeout", "1")
    lines = LineReader(shim.stdout)
    lines.wait_for(b"tick")
    agent.proxy.popen.kill()
    t0 = time.monotonic()
    status = shim.wait(30)
    elapsed = time.monotonic() - t0
    err = shim.stderr.read()
    assert status == exits.SHIM_FAILURE == 222
    assert elapsed < 10, elapsed  # 1 s of retries, plus slack for a loaded machine
    assert err.count(b"\n") == 1 and err.startswith(b"kata-shim: lost the connection to the agent")


class Relay:
    """A unix-socket forwarder in front of proxy.sock that the test can 'restart'."""

    def __init__(self, path: str, target: str):
        self.path = path
        self.target = target
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener = None
        self.listen()

    def listen(self):
        if os.path.exists(self.path):
            os.unlink(self.path)
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(self.path)
        self.listener.listen(16)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                c, _ = listener.accept()
            except OSError:
                return
            u = socket.socket(socket.AF_UNIX)
            u.connect(self.target)
            with self.lock:
                self.conns += [c, u]
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(1 << 16):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def drop(self):
        """Close the listener and every relayed connection (a proxy going away)."""
        self.listener.close()
        os.unlink(self.path)
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            self.conns.clear()


async def test_connection_loss_within_the_retry_window_is_survived(agent, sandbox_dir):
    relay = Relay(os.path.join(sandbox_dir, "relay.sock"), agent.socket)
    try:
        agent.run("blip", ["sh", "-c", "i=0; while [ $i -lt 40 ]; do i=$((i+1)); echo tick-$i; sleep 0.05; done; exit 4"])
        shim = agent.shim("blip", None, "--reconnect-timeout", "10", address=f"unix://{relay.path}")
        lines = LineReader(shim.stdout)
        lines.wait_for(b"tick-3")
        relay.drop()       # every connection of the shim breaks ...
        time.sleep(0.5)
        relay.listen()     # ... and the "proxy" is back half a second later
        lines.wait_for(b"tick-40")
        assert shim.wait(30) == 4
        assert shim.stderr.read() == b""
    finally:
        relay.listener.close()
