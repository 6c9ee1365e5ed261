"""The whole lifecycle through the kata-runtime CLI, as runc's callers use it (process tier).

Every test drives real processes: kata-runtime commands, the process sandbox's kata-agent,
kata-proxy and kata-shims; the kata fixture checks at teardown that nothing is left.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.support.oci import make_bundle, set_process
from tests.support.processes import wait_for

pytestmark = pytest.mark.sandbox


def read_text(path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def test_create_start_state_kill_delete(kata, bundle, new_id, tmp_path):
    cid = new_id()
    set_process(bundle, args=["sh", "-c", "echo started; trap 'echo got-term; exit 7' TERM; "
                                          "while true; do sleep 0.1; done"])
    pid_file, out = tmp_path / "pid", tmp_path / "out"
    p = kata.create(cid, bundle, "--pid-file", str(pid_file), out=out)
    assert p.returncode == 0, kata.explain(p, ["create"])

    st = kata.state(cid)
    assert st["status"] == "created" and st["id"] == cid
    assert st["pid"] == int(pid_file.read_text()) and os.path.exists(f"/proc/{st['pid']}")
    assert st["bundle"] == str(bundle) and st["rootfs"] == str(bundle / "rootfs")
    assert list(st) == ["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"]
    assert read_text(out) == ""  # not started yet

    kata.ok("start", cid)
    assert kata.state(cid)["status"] == "running"
    wait_for(lambda: "started" in read_text(out), what="the container's first output")
    assert kata.run("start", cid).returncode == 1  # already running

    kata.ok("kill", cid, "TERM")
    st = kata.wait_status(cid, "stopped")
    assert st["pid"] == 0
    wait_for(lambda: "got-term" in read_text(out), what="the trap's output")
    p = kata.run("kill", cid, "KILL")
    assert p.returncode == 1 and b"container not running" in p.stderr

    kata.ok("delete", cid)
    p = kata.run("state", cid)
    assert p.returncode == 1 and p.stderr.decode().strip() == f"container {cid} does not exist"


def test_delete_refuses_running_then_force(kata, bundle, new_id):
    cid = new_id()
    assert kata.create(cid, bundle).returncode == 0
    kata.ok("start", cid)
    p = kata.run("delete", cid)
    assert p.returncode == 1 and b"not stopped: running" in p.stderr
    assert kata.state(cid)["status"] == "running"
    kata.ok("delete", "--force", cid)


def test_run_with_stdin_keeps_the_exit_code(kata, tmp_path, new_id):
    cid = new_id()
    b = make_bundle(tmp_path / "b", ["sh", "-c", "read line; echo got:$line; echo err >&2; exit 42"])
    kata.ids.append(cid)
    p = kata.run("run", "--bundle", str(b), cid, input=b"hello\n")
    assert p.returncode == 42, kata.explain(p, ["run"])
    assert p.stdout == b"got:hello\n" and p.stderr == b"err\n"
    assert kata.run("state", cid).returncode == 1  # run deletes the container it ran


def test_run_reports_signal_death_as_128_plus_n(kata, tmp_path, new_id):
    cid = new_id()
    b = make_bundle(tmp_path / "b", ["sleep", "1000"])
    kata.ids.append(cid)
    run = subprocess.Popen(kata.argv("run", "--bundle", str(b), cid), stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: kata.run("state", cid).returncode == 0 and kata.state(cid)["status"] == "running",
                 what="run to start the container")
        kata.ok("kill", cid, "KILL")
        assert run.wait(60) == 137
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_exec_attached_detached_and_pid_file(kata, bundle, new_id, tmp_path):
    cid = new_id()
    assert kata.create(cid, bundle).returncode == 0
    kata.ok("start", cid)

    p = kata.run("exec", cid, "sh", "-c", "echo out; echo err >&2; exit 5")
    assert (p.returncode, p.stdout, p.stderr) == (5, b"out\n", b"err\n")

    pid_file = tmp_path / "exec.pid"
    with open(tmp_path / "exec.out", "wb") as f:
        p = kata.run("exec", "--detach", "--pid-file", str(pid_file), cid, "sh", "-c",
                     "echo detached > /tmp/marker; exec sleep 1000", stdout=f, stderr=f)
    assert p.returncode == 0
    shim = int(pid_file.read_text())
    assert b"kata-shim" in open(f"/proc/{shim}/cmdline", "rb").read() or b"kata_shim" in \
        open(f"/proc/{shim}/cmdline", "rb").read()
    wait_for(lambda: kata.run("exec", cid, "cat", "/tmp/marker").stdout == b"detached\n",
             what="the detached process's file")
    assert len(json.loads(kata.ok("ps", "--format", "json", cid))) == 2

    p = kata.run("exec", "--cwd", "/tmp", "--env", "FOO=bar", cid, "sh", "-c", "echo $PWD $FOO")
    assert p.stdout == b"/tmp bar\n"
    p = kata.run("exec", "--user", "65534:65534", cid, "id", "-u")
    assert p.stdout == b"65534\n"

    p = kata.run("exec", cid, "no-such-command")
    assert p.returncode == 255 and b"executable file not found" in p.stderr, kata.explain(p, ["exec"])


def test_ps_and_list_formats(kata, bundle, new_id):
    cid = new_id()
    assert kata.create(cid, bundle).returncode == 0
    listed = kata.ok("list").splitlines()
    assert listed[0].split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
    assert listed[1].split()[:3] == [cid, str(kata.state(cid)["pid"]), "created"]
    assert kata.ok("list", "--quiet") == f"{cid}\n"
    (item,) = json.loads(kata.ok("list", "--format", "json"))
    assert item["id"] == cid and item["owner"] == "root" and item["status"] == "created"

    kata.ok("start", cid)
    table = kata.ok("ps", cid).splitlines()
    assert "PID" in table[0].split() and any("sleep 1000" in line for line in table[1:])
    assert json.loads(kata.ok("ps", "--format", "json", cid)) and \
        kata.ok("ps", "--format", "json", cid).endswith("]\n")


def test_pause_and_resume(kata, bundle, new_id, tmp_path):
    cid = new_id()
    set_process(bundle, args=["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.05; done"])
    assert kata.create(cid, bundle).returncode == 0
    kata.ok("start", cid)
    count = lambda: kata.run("exec", cid, "cat", "/tmp/n").stdout  # noqa: E731
    wait_for(count, what="the counter")
    kata.ok("pause", cid)
    assert kata.state(cid)["status"] == "paused"
    assert kata.run("pause", cid).returncode == 1
    assert kata.run("exec", cid, "true").returncode == 255  # cannot exec in a paused container
    kata.ok("resume", cid)
    assert kata.state(cid)["status"] == "running"
    before = count()
    wait_for(lambda: count() != before, what="the counter to move after resume")
    assert kata.run("resume", cid).returncode == 1


def test_update_then_events_stats(kata, bundle, new_id):
    cid = new_id()
    assert kata.create(cid, bundle).returncode == 0
    kata.ok("start", cid)
    kata.ok("update", "--pids-limit", "20", "--memory", "64m", cid)
    line = kata.ok("events", "--stats", cid)
    assert line.count("\n") == 1
    event = json.loads(line)
    assert event["type"] == "stats" and event["id"] == cid
    data = event["data"]
    assert data["pids"]["limit"] == 20 and data["pids"]["current"] >= 1
    assert data["memory"]["usage"]["limit"] == 64 << 20
    assert data["cpu"]["usage"]["total"] > 0

    kata.ok("update", "--resources", "-", cid, input=json.dumps({"pids": {"limit": 33}}).encode())
    assert json.loads(kata.ok("events", "--stats", cid))["data"]["pids"]["limit"] == 33


def test_events_stream_ends_when_the_container_stops(kata, bundle, new_id):
    cid = new_id()
    set_process(bundle, args=["sleep", "1"])
    assert kata.create(cid, bundle).returncode == 0
    kata.ok("start", cid)
    out = kata.ok("events", "--interval", "300ms", cid, timeout=60)
    events = [json.loads(line) for line in out.splitlines()]
    assert events and all(e["type"] == "stats" and e["id"] == cid for e in events)


def test_containerd_style_long_root_and_64_hex_id(tmp_path, bundle):
    """containerd passes long --root paths and 64-hex ids: sockets must still fit (107 bytes)."""
    import uuid

    from tests.support.runtime import Kata, assert_clean, write_config

    root = tmp_path / ("io.containerd.runtime.v2.task-" + "r" * 80) / "k8s.io"
    kata = Kata(root, write_config(tmp_path / "c.toml"), tmp_path / "k.log")
    cid = uuid.uuid4().hex + uuid.uuid4().hex
    try:
        assert kata.create(cid, bundle).returncode == 0
        kata.ok("start", cid)
        assert kata.state(cid)["status"] == "running"
        assert os.path.exists(f"/run/vc/vm/{cid}/proxy.sock")
        kata.ok("delete", "--force", cid)
    finally:
        kata.cleanup()
    assert_clean(kata, cid)


def test_create_start_and_kill_load_no_grpc_protobuf_click_or_asyncio(kata, bundle, new_id):
    """The calls made for every container stay cheap: kata_grpc with requests encoded by hand
    (CreateContainer's spec by kata_oci, no protobuf), no click, no asyncio; a create after the
    first reads the configuration from its cache (no tomllib); start and kill load neither the
    socket module's Python layer nor subprocess."""
    import sys

    def heavy(argv: list[str], extra: tuple = ()) -> None:
        code = ("import sys; from kata_runtime.cli import main; rc = main(sys.argv[1:]); "
                "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
                f"{('grpc', 'google', 'katapb', 'click', 'asyncio', 'tomllib', 'json') + extra!r});"
                "print('HEAVY', heavy); sys.exit(rc)")
        out = kata.root.parent / "heavy.out"  # a file: a create's shim keeps its stdio open
        with open(out, "w") as f:
            p = subprocess.run([sys.executable, "-c", code, "--root", str(kata.root), "--kata-config",
                                str(kata.config), *argv], stdout=f, stderr=f, timeout=60)
        assert p.returncode == 0, out.read_text()
        assert out.read_text().splitlines()[-1] == "HEAVY []", argv

    first = new_id()
    assert kata.create(first, bundle).returncode == 0  # reads configuration.toml, caches it
    cid = new_id()
    kata.ids.append(cid)  # created below by a bare interpreter: the fixture deletes it if the test fails
    heavy(["create", "--bundle", str(bundle), cid])
    for command in (["start", cid], ["kill", cid, "KILL"]):
        heavy(command, ("socket", "subprocess"))
    kata.ok("delete", "--force", first)
    kata.wait_status(cid, "stopped")
    kata.ok("delete", cid)
