"""Unit tier for kata_agent's service half: spec translation, buffers, reaper helpers."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import tty

import pytest

from katapb import oci_pb2
from kata_agent.mount import MS_NODEV, MS_RDONLY, parse_options
from kata_agent.reaper import exit_code_from_status
from kata_agent.runc import call_log, log_errors, read_call_log
from kata_agent.spec import SpecError, message_to_oci, oci_name, prepare_spec
from kata_agent.stdio import OutputBuffer, StdinWriter, make_pipe
from tests.support.oci import busybox_spec

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("msg,field,want", [
    ("Spec", "Version", "ociVersion"), ("Linux", "UIDMappings", "uidMappings"),
    ("User", "GID", "gid"), ("Process", "OOMScoreAdj", "oomScoreAdj"),
    ("LinuxIDMapping", "HostID", "hostID"), ("LinuxResources", "CPU", "cpu"),
    ("LinuxResources", "BlockIO", "blockIO"), ("LinuxIntelRdt", "L3CacheSchema", "l3CacheSchema"),
    ("LinuxMemory", "DisableOOMKiller", "disableOOMKiller"), ("LinuxMemory", "KernelTCP", "kernelTCP"),
    ("LinuxBlockIO", "ThrottleReadIOPSDevice", "throttleReadIOPSDevice"),
    ("LinuxHugepageLimit", "Pagesize", "pageSize"), ("Linux", "CgroupsPath", "cgroupsPath"),
    ("Mount", "destination", "destination"), ("Process", "NoNewPrivileges", "noNewPrivileges"),
    ("LinuxSeccompArg", "ValueTwo", "valueTwo"), ("LinuxNetwork", "ClassID", "classID"),
])
def test_oci_names(msg, field, want):
    assert oci_name(msg, field) == want


def test_resources_translation():
    res = oci_pb2.LinuxResources(
        Memory=oci_pb2.LinuxMemory(Limit=1 << 28, Swap=-1),
        CPU=oci_pb2.LinuxCPU(Shares=512, Quota=50000, Period=100000, Cpus="0"),
        Pids=oci_pb2.LinuxPids(Limit=10),
        Devices=[oci_pb2.LinuxDeviceCgroup(Allow=False, Access="rwm")],
        HugepageLimits=[oci_pb2.LinuxHugepageLimit(Pagesize="2MB", Limit=0)],
    )
    assert message_to_oci(res) == {
        "memory": {"limit": 1 << 28, "swap": -1},
        "cpu": {"shares": 512, "quota": 50000, "period": 100000, "cpus": "0"},
        "pids": {"limit": 10},
        "devices": [{"access": "rwm"}],  # allow=false is the zero value: omitted = false
        "hugepageLimits": [{"pageSize": "2MB"}],
    }


def test_prepare_spec_adjusts_for_the_guest():
    spec_pb = busybox_spec("c1", ["sh"], terminal=True)
    spec_pb.Hooks.Prestart.add(Path="/usr/bin/host-hook")
    spec_pb.Linux.Namespaces.add(Type="network", Path="/proc/123/ns/net")
    spec_pb.Linux.Namespaces[0].Path = "/proc/1/ns/pid"
    spec_pb.Process.OOMScoreAdj = (1 << 32) - 999  # int32 -999 carried in a uint32
    del spec_pb.Mounts[:]
    spec = prepare_spec(spec_pb, "c1", "/b/c1", "kata")
    json.dumps(spec)
    assert spec["ociVersion"] == "1.0.2"
    assert spec["root"]["path"] == "/b/c1/rootfs"
    assert "hooks" not in spec
    assert spec["process"]["oomScoreAdj"] == -999
    assert spec["process"]["terminal"] is True
    ns = spec["linux"]["namespaces"]
    assert {"type": "pid"} in ns and {"type": "mount"} in ns
    assert all("path" not in n for n in ns)
    assert not any(n["type"] == "network" for n in ns)  # the guest's own network
    assert spec["linux"]["cgroupsPath"] == "kata/c1"
    dests = [m["destination"] for m in spec["mounts"]]
    assert dests[:4] == ["/proc", "/dev", "/dev/pts", "/dev/shm"]
    assert next(m for m in spec["mounts"] if m["destination"] == "/dev")["type"] == "tmpfs"


def test_prepare_spec_minimal_and_invalid():
    minimal = oci_pb2.Spec(Process=oci_pb2.Process(Args=["true"]))
    spec = prepare_spec(minimal, "c2", "/b/c2", "/abs/parent")
    assert spec["process"]["cwd"] == "/" and spec["process"]["user"] == {"uid": 0, "gid": 0}
    assert spec["linux"]["cgroupsPath"] == "/abs/parent/c2"
    assert "resources" not in spec["linux"]
    with pytest.raises(SpecError, match="Process"):
        prepare_spec(oci_pb2.Spec(), "c", "/b", "k")
    with pytest.raises(SpecError, match="Args"):
        prepare_spec(oci_pb2.Spec(Process=oci_pb2.Process(Args=[])), "c", "/b", "k")
    with pytest.raises(SpecError, match="Cwd"):
        prepare_spec(oci_pb2.Spec(Process=oci_pb2.Process(Args=["x"], Cwd="rel")), "c", "/b", "k")


def test_mount_options():
    assert parse_options(["trans=virtio,version=9p2000.L,cache=mmap", "nodev"]) == (
        MS_NODEV, "trans=virtio,version=9p2000.L,cache=mmap")
    assert parse_options(["ro", "rw"]) == (0, "")
    assert parse_options(["ro"])[0] == MS_RDONLY


def test_exit_codes():
    assert exit_code_from_status(3 << 8) == 3
    assert exit_code_from_status(signal.SIGKILL) == 137
    assert exit_code_from_status(signal.SIGTERM | 0x80) == 128 + signal.SIGTERM  # core dumped


async def test_output_buffer_random_reads():
    rnd = random.Random(7)
    for _ in range(25):
        r, w = make_pipe()
        limit = rnd.choice([1, 100, 4096, 1 << 20])
        chunk = rnd.choice([1, 7, 4096, 1 << 18])
        buf = OutputBuffer(r, limit=limit, chunk=chunk)
        buf.start()
        data = os.urandom(rnd.randint(0, 300_000 if min(limit, chunk) >= 4096 else 3000))
        loop = asyncio.get_running_loop()
        writer = loop.run_in_executor(None, lambda: (os.write(w, data) if data else 0, os.close(w)))
        got = []
        while True:
            d = await buf.read(rnd.randint(1, 70_000))
            if not d:
                break
            got.append(d)
        await writer
        assert b"".join(got) == data
        assert buf.drained


async def test_output_buffer_bound_stops_reading():
    r, w = make_pipe()
    os.set_blocking(w, False)
    buf = OutputBuffer(r, limit=8192, chunk=4096)
    buf.start()
    written = 0
    blocked = 0
    while blocked < 10:  # fill pipe + buffer; the writer must end up blocked (EAGAIN)
        try:
            written += os.write(w, b"x" * 4096)
            blocked = 0
        except BlockingIOError:
            blocked += 1
            await asyncio.sleep(0.01)
        assert written < 1 << 20, "the buffer did not stop reading"
    assert buf.buffered <= 8192
    os.close(w)
    total = 0
    while d := await buf.read(100_000):
        total += len(d)
    assert total == written


async def test_stdin_writer_waits_and_breaks():
    r, w = make_pipe()
    sw = StdinWriter(w)
    payload = os.urandom(3 << 20)  # far more than the pipe holds
    loop = asyncio.get_running_loop()

    def drain():
        out = bytearray()
        while len(out) < len(payload):
            out += os.read(r, 1 << 20)
        return bytes(out)

    reader = loop.run_in_executor(None, drain)
    assert await sw.write(payload) == len(payload)
    assert await reader == payload
    os.close(r)
    with pytest.raises(BrokenPipeError):
        await sw.write(b"more")
    await sw.close()
    with pytest.raises(ValueError):
        await sw.write(b"closed")


# -- output at a process's exit (issue 11, item 2) ----------------------------
#
# A process's stdout/stderr is a pipe (or a pty) whose writing end its
# descendants may keep: `sh -c 'sleep 300 & echo started'`. Once the process has
# exited, OutputBuffer.process_exited() makes the buffer deliver what the pipe
# already holds, then EOF, whoever still holds the other end.


async def read_to_eof(buf: OutputBuffer, n: int = 65536, timeout: float = 5.0) -> bytes:
    """Every byte of ``buf`` up to EOF; fails (TimeoutError) if EOF does not come."""
    out = bytearray()
    while True:
        data = await asyncio.wait_for(buf.read(n), timeout)
        if not data:
            return bytes(out)
        out += data


async def fill_pipe(w: int, piece: bytes) -> int:
    """Write ``piece`` to the non-blocking ``w`` until the reader has stopped taking
    any (10 EAGAINs in a row, 10 ms apart); returns the bytes written."""
    written = blocked = 0
    while blocked < 10:
        try:
            written += os.write(w, piece)
            blocked = 0
        except BlockingIOError:
            blocked += 1
            await asyncio.sleep(0.01)
    return written


async def test_output_ends_at_exit_though_a_descendant_holds_the_pipe():
    r, w = make_pipe()
    buf = OutputBuffer(r, limit=1 << 20)
    buf.start()
    os.write(w, b"started\n")
    buf.process_exited()  # w stays open: a background child of the process still has it
    assert await read_to_eof(buf) == b"started\n"
    assert buf.drained
    with pytest.raises(BrokenPipeError):  # the read end is gone: a late writer never blocks
        os.write(w, b"late")
    os.close(w)


async def test_output_at_exit_with_a_full_buffer_keeps_every_byte_and_no_later_one():
    """The buffer is full when the process exits: the pipe's remaining content still
    arrives as the reader makes room; what a descendant writes afterwards does not."""
    r, w = make_pipe()
    os.set_blocking(w, False)
    buf = OutputBuffer(r, limit=8192, chunk=4096)
    buf.start()
    written = await fill_pipe(w, b"x" * 4096)
    assert buf.buffered == 8192 and written > 8192  # the pipe holds the rest
    buf.process_exited()
    got = bytearray()
    late = 0
    while True:
        data = await asyncio.wait_for(buf.read(1000), 5)
        if not data:
            break
        got += data
        await asyncio.sleep(0)  # let the buffer refill from the pipe
        try:  # the descendant writes into the room the reader just made
            late += os.write(w, b"L" * 512)
        except (BlockingIOError, BrokenPipeError):
            pass
    assert len(got) == written and got == b"x" * written
    assert late > 0, "the test never wrote after the exit"
    with pytest.raises(BrokenPipeError):
        os.write(w, b"L")
    os.close(w)


async def test_8mib_written_just_before_exit_read_slowly():
    """A process writes 8 MiB and exits while its background child keeps the pipe and
    writes on: a slow reader gets all 8 MiB, then EOF; the child then gets EPIPE."""
    r, w = make_pipe()
    buf = OutputBuffer(r, limit=256 << 10, chunk=64 << 10)
    buf.start()
    payload = os.urandom(8 << 20)
    loop = asyncio.get_running_loop()
    exited = threading.Event()

    def exit_seen():
        buf.process_exited()
        exited.set()

    def process_then_child():
        view = memoryview(payload)
        while view:
            view = view[os.write(w, view):]
        loop.call_soon_threadsafe(exit_seen)  # what the reaper does on SIGCHLD
        exited.wait(10)
        try:
            while True:
                os.write(w, b"late" * 1024)
        except BrokenPipeError:
            return "EPIPE"
        finally:
            os.close(w)

    writer = loop.run_in_executor(None, process_then_child)
    rnd = random.Random(11)
    got = bytearray()
    try:
        while True:
            data = await asyncio.wait_for(buf.read(rnd.randint(1, 40_000)), 10)
            if not data:
                break
            got += data
            assert len(got) <= len(payload), "output written after the exit was delivered"
            if rnd.random() < 0.02:
                await asyncio.sleep(0.002)
        assert len(got) == len(payload) and got == payload
        assert await asyncio.wait_for(writer, 10) == "EPIPE"
    finally:
        buf.close()  # a writer still blocked gets EPIPE: no thread is left behind
        exited.set()
        await writer


async def test_pty_output_at_exit_with_the_slave_still_held():
    """A terminal: the process's last output (more than the buffer's bound, part of it
    still in the kernel's pty buffers) arrives, then EOF, though a descendant keeps the
    slave open (the Kata 1.x agent ends a terminal's reads at exit the same way)."""
    master, slave = os.openpty()
    tty.setraw(slave)  # no \n -> \r\n: the bytes arrive as written
    buf = OutputBuffer(master, limit=1024, chunk=512, is_pty=True, owns_fd=False)
    buf.start()
    payload = os.urandom(200_000)
    loop = asyncio.get_running_loop()

    def process():
        view = memoryview(payload)
        while view:
            view = view[os.write(slave, view):]
        loop.call_soon_threadsafe(buf.process_exited)

    writer = loop.run_in_executor(None, process)
    got = bytearray()
    try:
        while True:
            data = await asyncio.wait_for(buf.read(700), 10)
            if not data:
                break
            got += data
        await writer
        assert got == payload
    finally:
        buf.close()
        os.close(master)  # a writer still blocked on the slave gets EIO
        await writer
        os.close(slave)


async def test_pty_output_at_exit_with_the_slave_closed(caplog):
    master, slave = os.openpty()
    tty.setraw(slave)
    buf = OutputBuffer(master, limit=1 << 20, is_pty=True, owns_fd=False)
    buf.start()
    os.write(slave, b"bye")
    os.close(slave)
    buf.process_exited()
    assert await read_to_eof(buf) == b"bye"
    assert "read error" not in caplog.text  # EIO from a hung-up pty is its EOF
    os.close(master)



async def test_stdin_writer_abort_ends_a_blocked_write():
    """A write waiting for room ends (ValueError) when the process's stdin is dropped,
    e.g. its terminal closed at exit: it does not wait on a closed fd for ever."""
    r, w = make_pipe()
    sw = StdinWriter(w)
    write = asyncio.ensure_future(sw.write(os.urandom(4 << 20)))  # more than the pipe holds
    await asyncio.sleep(0.05)
    assert not write.done()
    sw.abort()
    with pytest.raises(ValueError):
        await asyncio.wait_for(write, 5)
    os.close(r)


# -- each runc call has its own error channel (issue 11, item 3) --------------


def test_log_errors_keeps_error_messages_only():
    text = "\n".join([
        '{"level":"warning","msg":"cgroup v1 is deprecated"}',
        'not json',
        '{"level":"error","msg":"exec: \\"x\\": executable file not found in $PATH"}',
        '{"level":"error","msg":"exec: \\"x\\": executable file not found in $PATH"}',
        '{"level":"fatal","msg":"container_linux.go: starting container process caused"}',
    ])
    assert log_errors(text) == ('exec: "x": executable file not found in $PATH; '
                                "container_linux.go: starting container process caused")
    assert log_errors('{"level":"info","msg":"fine"}') == ""


def test_call_log_is_nameless_and_gone_after_the_call(tmp_path):
    with call_log(str(tmp_path)) as fd:
        os.write(fd, b'{"level":"error","msg":"boom"}\n')
        assert log_errors(read_call_log(fd)) == "boom"
        assert os.listdir(tmp_path) == []
    with pytest.raises(OSError):
        os.fstat(fd)


FAKE_RUNC = """#!/bin/sh
# A runc that fails: argv is --root R --log L --log-format json COMMAND ID...
log=$4
shift 6
echo '{"level":"warning","msg":"noise"}' >> "$log"
echo "{\\"level\\":\\"error\\",\\"msg\\":\\"$1 of $2 failed\\"}" >> "$log"
exit 1
"""

RUNC_CALLS = textwrap.dedent("""
    import asyncio, os, sys
    from kata_agent.reaper import Reaper
    from kata_agent.runc import Runc, RuncError

    async def main(fake, root):
        reaper = Reaper()
        reaper.install()
        runc = Runc(reaper, fake, root)
        calls = [runc.start("one"), runc.pause("two"),
                 runc.run_stdio("exec", "three", stdin=None, stdout=None, stderr=None)]
        for call in calls:
            try:
                await call
            except RuncError as e:
                print(e.message)
        print(os.listdir(root))

    asyncio.run(main(*sys.argv[1:]))
""")


def test_each_runc_call_reports_only_its_own_errors(tmp_path):
    fake = tmp_path / "runc"
    fake.write_text(FAKE_RUNC)
    fake.chmod(0o755)
    # Its own process: the Reaper takes over SIGCHLD and waitpid(-1) of whoever installs it.
    out = subprocess.run([sys.executable, "-c", RUNC_CALLS, str(fake), str(tmp_path / "root")],
                         capture_output=True, text=True, timeout=60, cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["start of one failed", "pause of two failed",
                                       "exec of three failed", "[]"]


def test_runc_error_says_runc_create_failed_once():
    """runc 1.1 begins its own message with "runc create failed: " (seen through the CLI as
    "runc create failed (exit 1): runc create failed: unable to start ...")."""
    from kata_agent.runc import RuncError

    err = RuncError("create", 1, 'runc create failed: unable to start container process: exec: "/x": stat /x: no such file')
    assert str(err) == 'runc create failed (exit 1): unable to start container process: exec: "/x": stat /x: no such file'
    assert err.message.startswith("runc create failed: ")  # the raw text stays for callers that match it
    assert str(RuncError("start", 1, "container not created")) == "runc start failed (exit 1): container not created"
