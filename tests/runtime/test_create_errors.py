"""A failed create leaves nothing behind and names the failed step; unknown and invalid ids
get runc-style errors (process tier where a sandbox is involved)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import time

import pytest

from tests.support.oci import set_process
from tests.support.runtime import Kata, assert_clean, write_config

pytestmark = pytest.mark.sandbox


def failed_create(kata, cid, bundle, *extra):
    p = kata.create(cid, bundle, *extra)
    message = p.stderr.decode().strip().splitlines()
    assert p.returncode == 1, kata.explain(p, ["create"])
    assert len(message) == 1, message
    record = kata.last_error()
    assert record["msg"] == message[0] and set(record) == {"level", "msg", "time"}
    assert_clean(kata, cid, timeout=0.5)
    return message[0]


def test_missing_bundle(kata, new_id, tmp_path):
    cid = new_id()
    msg = failed_create(kata, cid, tmp_path / "nope")
    assert "no such directory" in msg and "nope" in msg


def test_bad_config_json(kata, bundle, new_id):
    (bundle / "config.json").write_text("{not json")
    assert "config.json is not valid JSON" in failed_create(kata, new_id(), bundle)


def test_config_json_wrong_type(kata, bundle, new_id):
    set_process(bundle, args="sleep 1")
    assert "process.args must be a non-empty list of strings" in failed_create(kata, new_id(), bundle)
    set_process(bundle, args=["sleep", "1"], user={"uid": "root"})
    assert "process.user.uid: expected an integer" in failed_create(kata, new_id(), bundle)


def test_missing_rootfs(kata, bundle, new_id):
    shutil.rmtree(bundle / "rootfs")
    msg = failed_create(kata, new_id(), bundle)
    assert "rootfs" in msg and "does not exist" in msg


def test_nonexistent_executable(kata, bundle, new_id):
    set_process(bundle, args=["no-such-program"])
    msg = failed_create(kata, new_id(), bundle)
    assert "CreateContainer" in msg and 'executable file not found in $PATH' in msg


def test_agent_dying_during_create(tmp_path, bundle, new_id):
    wrapper = tmp_path / "python-dying-agent"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {os.path.dirname(__file__)}/dying_agent.py \"$@\"\n")
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    config = write_config(tmp_path / "dying.toml", **{"hypervisor.process": {"path": str(wrapper)}})
    kata = Kata(tmp_path / "root", config, tmp_path / "kata.log")
    cid = new_id()
    try:
        msg = failed_create(kata, cid, bundle)
        assert "creating the container in the agent (CreateContainer)" in msg
    finally:
        kata.cleanup()
    assert_clean(kata, cid)


def test_duplicate_id(kata, bundle, new_id):
    cid = new_id()
    assert kata.create(cid, bundle).returncode == 0
    p = kata.create(cid, bundle)
    assert p.returncode == 1 and p.stderr.strip() == f"container with id exists: {cid}".encode()
    assert kata.state(cid)["status"] == "created"  # the first one is untouched


@pytest.mark.parametrize("command", ["state", "start", "kill", "delete", "pause", "resume", "ps", "events",
                                     "update"])
def test_unknown_id(kata, command):
    p = kata.run(command, "no-such-container")
    assert p.returncode == 1
    assert p.stderr.decode().strip() == "container no-such-container does not exist"
    assert kata.last_error()["msg"] == "container no-such-container does not exist"


def test_unknown_id_exec_exits_255(kata):
    p = kata.run("exec", "no-such-container", "true")
    assert p.returncode == 255 and b"does not exist" in p.stderr


@pytest.mark.parametrize("bad", ["bad/id", "a b", "..", "x;y", "é"])
def test_invalid_id(kata, bundle, bad):
    p = kata.create(bad, bundle)
    kata.ids.remove(bad)  # not a name the leftover check can look for (e.g. "..")
    assert p.returncode == 1 and b"invalid container ID format" in p.stderr
    assert not (kata.root / "containers").exists() or not os.listdir(kata.root / "containers")
    assert kata.run("state", bad).returncode == 1


def test_error_log_text_format(tmp_path, bundle):
    kata = Kata(tmp_path / "root", write_config(tmp_path / "c.toml"), tmp_path / "kata.log")
    kata.prefix[kata.prefix.index("json")] = "text"
    p = kata.run("state", "nope")
    assert p.returncode == 1
    line = (tmp_path / "kata.log").read_text().splitlines()[-1]
    assert line.startswith("time=") and 'level=error msg="container nope does not exist"' in line


def test_bad_configuration_is_one_line_naming_file_and_key(tmp_path, bundle, new_id):
    config = tmp_path / "bad.toml"
    config.write_text("[hypervisor.qemu]\naccel = \"xen\"\n")
    kata = Kata(tmp_path / "root", config, tmp_path / "kata.log")
    p = kata.create(new_id(), bundle)
    assert p.returncode == 1
    assert p.stderr.decode().strip() == f"{config}: [hypervisor.qemu] accel: must be one of auto, kvm, tcg (got 'xen')"
    config.write_text("[proxy.kata]\nspeed = 1\n")
    p = kata.create(new_id(), bundle)
    assert p.returncode == 1 and b"[proxy.kata] speed: unknown key" in p.stderr
    assert json.loads((tmp_path / "kata.log").read_text().splitlines()[-1])["level"] == "error"


@pytest.mark.parametrize("section, settings, step", [
    ("hypervisor.process", {"unshare": "/nonexistent/unshare"}, "starting the sandbox's process hypervisor"),
    ("proxy.kata", {"path": "/bin/false"}, "starting kata-proxy: kata-proxy exited with status 1"),
    ("shim.kata", {"path": "/nonexistent/kata-shim"}, "starting kata-shim: cannot run /nonexistent/kata-shim"),
])
def test_a_component_that_cannot_start(tmp_path, bundle, new_id, section, settings, step):
    kata = Kata(tmp_path / "root", write_config(tmp_path / "c.toml", **{section: settings}), tmp_path / "kata.log")
    cid = new_id()
    started = time.monotonic()
    try:
        msg = failed_create(kata, cid, bundle)
    finally:
        kata.cleanup()
    assert msg.startswith(f"create container {cid}: {step}"), msg
    assert time.monotonic() - started < 20  # a dead hypervisor does not wait out kata-proxy's 30 s
    assert_clean(kata, cid)
