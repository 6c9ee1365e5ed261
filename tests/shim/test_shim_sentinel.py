"""The shim's sentinel (kata_shim/sentinel.py): a SIGKILL of kata-shim still ends its process.

    test -SIGKILL-> kata-shim   (its sentinel, a shell it spawned, sees the pipe close without "done")
                    sentinel -> kata-proxy -> kata-agent: SignalProcess(SIGKILL)

containerd-shim-runc-v2 SIGKILLs an exec's kata-shim itself (tests/reaper: test_exec_killed),
and nothing else tells the agent.  Against both agents (``peer``: ours behind the real
kata-proxy, and tests/peers/kata1x_agent.py): the killed shim's process, exec'd or init, is
gone (WaitProcess answers 137); a normal end leaves no sentinel behind and signals nothing;
the sentinel holds none of the shim's stdio or terminal.
"""

from __future__ import annotations

import glob
import os
import pty
import select
import signal
import subprocess
import time

import pytest

pytestmark = pytest.mark.timeout(120)

KILLED = 128 + signal.SIGKILL
SENTINEL_LINE = b"SignalProcess(SIGKILL) sent by its sentinel"
UP = ["sh", "-c", "echo up; exec sleep 1000"]


def sentinel_of(shim_pid: int, timeout: float = 15.0) -> int:
    """The pid of the shim's child ``kata-sentinel`` (a shell the shim starts before its threads)."""
    deadline = time.monotonic() + timeout
    while True:
        for path in glob.glob(f"/proc/{shim_pid}/task/*/children"):
            for pid in open(path).read().split():
                try:
                    if open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")[0] == b"kata-sentinel":
                        return int(pid)
                except OSError:
                    pass
        assert time.monotonic() < deadline, f"kata-shim {shim_pid} has no sentinel"
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive"
        time.sleep(0.02)


def held(pid: int) -> dict:
    """fd -> what it points to, of process ``pid``."""
    out = {}
    for path in glob.glob(f"/proc/{pid}/fd/*"):
        try:
            out[int(os.path.basename(path))] = os.readlink(path)
        except OSError:
            pass
    return out


def wait_status(peer, cid: str, exec_id: str) -> int:
    """WaitProcess as another client; fails (DEADLINE_EXCEEDED) if the process lives on."""
    reply = peer.client.call("WaitProcess", peer.pb.WaitProcessRequest(container_id=cid, exec_id=exec_id),
                             timeout=30)
    return peer.pb.WaitProcessResponse.FromString(reply).status


def started(peer, which: str, log: str, **kw) -> tuple[subprocess.Popen, str]:
    """A shim relaying ``echo up; exec sleep 1000`` as container c's init or as its exec e,
    up and running; (shim, exec id)."""
    if which == "init":
        peer.create("c", UP)
        shim = peer.shim("c", None, "--log-file", log, **kw)
        peer.start("c")
        eid = "c"
    else:
        peer.run("c", ["sleep", "1000"])
        peer.exec("c", "e", UP)
        shim = peer.shim("c", "e", "--log-file", log, **kw)
        eid = "e"
    assert shim.stdout.readline() == b"up\n"
    return shim, eid


@pytest.mark.parametrize("which", ["exec", "init"])
async def test_sigkill_of_the_shim_kills_its_process(peer, which, tmp_path):
    log = str(tmp_path / "shim.log")
    shim, eid = started(peer, which, log)
    watcher = sentinel_of(shim.pid)
    shim.kill()
    assert shim.wait(30) == -signal.SIGKILL
    assert wait_status(peer, "c", eid) == KILLED
    wait_gone(watcher)
    said_once(log)


def said_once(log: str) -> None:
    """The shim's log has the sentinel's one line, and it reached the agent ("already ended":
    the process ended by itself between the shim's death and the sentinel's call)."""
    lines = [line for line in open(log, "rb") if SENTINEL_LINE in line]
    assert len(lines) == 1, lines
    assert b"outcome=killed" in lines[0] or b'outcome="already ended"' in lines[0], lines


async def test_sigkill_of_the_shims_process_group_still_kills_its_process(peer, tmp_path):
    # The sentinel has a session of its own: a SIGKILL to the shim's group does not reach it.
    shim, eid = started(peer, "exec", str(tmp_path / "shim.log"), start_new_session=True)
    watcher = sentinel_of(shim.pid)
    assert os.getsid(watcher) == watcher != os.getsid(shim.pid)
    os.killpg(shim.pid, signal.SIGKILL)
    assert shim.wait(30) == -signal.SIGKILL
    assert wait_status(peer, "c", eid) == KILLED
    wait_gone(watcher)
    said_once(str(tmp_path / "shim.log"))


async def test_normal_end_reaps_the_sentinel_and_signals_nothing(peer, tmp_path):
    log = str(tmp_path / "shim.log")
    peer.run("c", ["sleep", "1000"])
    peer.exec("c", "e", ["sh", "-c", "echo up; read line; echo got $line; exit 3"])
    shim = peer.shim("c", "e", "--log-file", log, "--log", "debug", stdin=subprocess.PIPE)
    assert shim.stdout.readline() == b"up\n"
    watcher = sentinel_of(shim.pid)
    fds = held(watcher)  # nothing of the shim's but the pipe: not its stdio, not its log
    assert sorted(fds) == [0, 1, 2] and fds[0].startswith("pipe:"), fds
    assert fds[1] == fds[2] == os.devnull, fds
    out, err = shim.communicate(b"bye\n", timeout=60)
    assert (shim.returncode, out, err) == (3, b"got bye\n", b"")
    assert not os.path.exists(f"/proc/{watcher}"), "the shim did not reap its sentinel"
    assert b"process done" in open(log, "rb").read()  # the log was written, at debug level
    assert SENTINEL_LINE not in open(log, "rb").read()


def read_until_closed(master: int, timeout: float = 30.0) -> bytes:
    """What the pty's master reads until no slave is left open (EIO)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave closed
                return bytes(out)
            out += data
    raise AssertionError(f"the pty's slave is still open: {bytes(out)!r}")


@pytest.mark.sandbox
@pytest.mark.parametrize("end", ["exit", "sigkill"])
async def test_shim_on_a_terminal_ends_cleanly(agent, end, tmp_path):
    # The shim's stdio is a pty slave, in a session of its own (as kata-runtime starts it); the
    # sentinel holds none of it, so the master sees the slave closed as soon as the shim is gone.
    log = str(tmp_path / "shim.log")
    master, slave = pty.openpty()
    try:
        agent.run("c", ["sleep", "1000"])
        agent.exec("c", "t", ["sh", "-c", "echo up; read line; exit 4"], terminal=True)
        shim = agent.shim("c", "t", "--terminal", "--log-file", log, stdin=slave, stdout=slave, stderr=slave,
                          start_new_session=True)
        os.close(slave)
        slave = -1
        watcher = sentinel_of(shim.pid)
        assert not any(target.startswith("/dev/pts") or target == "/dev/ptmx"
                       for target in held(watcher).values()), held(watcher)
        if end == "exit":
            os.write(master, b"go\r")
            read_until_closed(master)
            assert shim.wait(30) == 4
        else:
            shim.kill()
            read_until_closed(master)
            assert shim.wait(30) == -signal.SIGKILL
            assert wait_status(agent, "c", "t") == KILLED
        wait_gone(watcher)
        assert (SENTINEL_LINE in open(log, "rb").read()) == (end == "sigkill")
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)


def test_the_kill_path_gets_the_shims_flags(tmp_path):
    # The kill path is a new interpreter: it must reach the same proxy, about the same process,
    # and log where (and as) the shim does.
    from kata_shim import flags
    from kata_shim.sentinel import kill_command

    log = str(tmp_path / "shim.log")
    opts = flags.parse(["-agent", "unix:///run/vc/sbs/sb/proxy.sock", "-container", "c1", "-exec-id", "e1",
                        "-terminal", "-debug", "--log-format", "json", "--log-file", log,
                        "--reconnect-timeout", "2.5"])
    argv = kill_command(opts)
    assert argv[1:3] == ["-m", "kata_shim.sentinel"]
    again = flags.parse(argv[3:])
    for name in ("agent", "socket_path", "container", "exec_id", "log_level", "log_format", "log_file",
                 "reconnect_timeout"):
        assert getattr(again, name) == getattr(opts, name), name
    assert again.socket_path == "/run/vc/sbs/sb/proxy.sock" and again.log_level == "debug"


def test_the_kill_path_with_the_proxy_gone_says_so(tmp_path):
    # A sandbox going away removes the proxy's socket: nobody is left to tell, one line says so.
    from kata_shim.sentinel import main

    log = tmp_path / "shim.log"
    assert main(["--agent", f"unix://{tmp_path}/gone.sock", "--container", "c1", "--exec-id", "e1",
                 "--log-file", str(log)]) == 0
    (line,) = log.read_text().splitlines()
    assert "sent by its sentinel" in line and 'outcome="not sent: cannot connect' in line, line
    assert "container=c1 exec-id=e1" in line


# ------------------------------------------------- which ends of the shim arm the sentinel

_EXIT_CHILD = """
import sys
from kata_shim import flags, shim
from kata_shim.log import Logger
opts = flags.parse(["--agent", sys.argv[1], "--container", "c", "--exec-id", "e", "--reconnect-timeout", "5"])
relay = shim.Relay(opts, Logger("debug", file=sys.argv[2]))
relay.sentinel = shim.sentinel.start(opts, relay.log)
if sys.argv[3] == "done":
    relay.exit(0, process_done=True)
relay.exit(222, "kata-shim: gave up relaying")
"""


@pytest.mark.parametrize("end", ["done", "gave-up"])
async def test_a_shim_that_gives_up_leaves_its_sentinel_armed(tmp_path, end):
    """A shim that ends because its process did (output drained, status waited for) disarms and
    reaps its sentinel; one that gives up (output lost, the agent gone, a bug: exit 222) leaves
    it armed, so the process nobody relays any more is killed, not left running unseen. The
    "agent" is kata_grpc's real server on a unix socket, recording SignalProcess."""
    import asyncio
    import sys

    from kata_grpc.aio import serve_unix
    from katapb import agent_pb2

    signalled = asyncio.Queue()

    async def signal_process(request: bytes) -> bytes:
        signalled.put_nowait(agent_pb2.SignalProcessRequest.FromString(request))
        return b""

    sock, log = str(tmp_path / "proxy.sock"), str(tmp_path / "shim.log")
    server = await serve_unix(sock, {"/grpc.AgentService/SignalProcess": signal_process})
    try:
        child = await asyncio.create_subprocess_exec(sys.executable, "-c", _EXIT_CHILD, sock, log, end)
        status = await asyncio.wait_for(child.wait(), 60)
        if end == "done":
            assert status == 0
            # exit() reaped the sentinel before the shim ended: nothing is left to signal
            assert signalled.empty() and SENTINEL_LINE not in open(log, "rb").read()
        else:
            assert status == 222
            got = await asyncio.wait_for(signalled.get(), 60)
            assert (got.container_id, got.exec_id, got.signal) == ("c", "e", signal.SIGKILL)
    finally:
        await server.close(grace=0)
