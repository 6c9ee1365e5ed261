"""The CLI's pieces that need no sandbox: runc's output formats, argument parsing, the error
handler, and what `state` / `list` import (unit tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from katapb import agent_pb2
from kata_runtime.cli import main
from kata_runtime.cli.events import parse_duration
from kata_runtime.cli import fast
from kata_runtime.cli.fast import tabwriter
from kata_runtime.cli.update import resources_from_flags
from kata_runtime.status import rfc3339_nano, runc_state
from kata_runtime.errors import InvalidArgument, KataError
from kata_runtime.events import event_line, runc_stats
from kata_runtime.signals import parse_bytes, parse_signal
from kata_runtime.state import Store


def test_list_table_is_runcs_tabwriter_output():
    # `runc list` on this machine, byte for byte (Go text/tabwriter, minwidth 12, padding 3).
    runc = ("ID          PID         STATUS      BUNDLE       CREATED                          OWNER\n"
            "x1          9307        created     /tmp/rcx/b   2026-11-30T09:54:03.467504642Z   root\n")
    rows = [("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"),
            ("x1", "9307", "created", "/tmp/rcx/b", "2026-11-30T09:54:03.467504642Z", "root")]
    assert tabwriter(rows) == runc
    assert tabwriter(rows[:1]) == "ID          PID         STATUS      BUNDLE      CREATED     OWNER\n"


def test_rfc3339_nano_is_gos():
    assert rfc3339_nano(1_796_032_443_467_504_642) == "2026-11-30T09:54:03.467504642Z"
    assert rfc3339_nano(1_796_032_443_400_000_000) == "2026-11-30T09:54:03.4Z"
    assert rfc3339_nano(1_796_032_443_000_000_000) == "2026-11-30T09:54:03Z"


def test_state_json_keys_in_runcs_order():
    data = {"id": "c", "ociVersion": "1.0.2", "bundle": "/b", "rootfs": "/b/rootfs", "created": "t",
            "shim": {"pid": 42}, "annotations": {"k": "v"}}
    assert list(runc_state(data, "running")) == ["ociVersion", "id", "pid", "status", "bundle", "rootfs",
                                                 "created", "annotations", "owner"]
    assert runc_state(data, "running")["pid"] == 42 and runc_state(data, "stopped")["pid"] == 0
    assert "annotations" not in runc_state(data | {"annotations": {}}, "created")


@pytest.mark.parametrize("text, number", [("9", 9), ("KILL", 9), ("SIGKILL", 9), ("kill", 9), ("sigterm", 15),
                                          ("USR1", 10), ("SIGRTMIN", 34), ("64", 64)])
def test_signals(text, number):
    assert parse_signal(text) == number


@pytest.mark.parametrize("bad", ["", "FOO", "SIGFOO", "0", "65", "-9", "9x"])
def test_bad_signals(bad):
    with pytest.raises(InvalidArgument):
        parse_signal(bad)


def test_sizes_and_durations():
    assert [parse_bytes(t) for t in ("1024", "64m", "64MB", "1g", "1.5k", "-1")] == [1024, 64 << 20, 64 << 20,
                                                                                     1 << 30, 1536, -1]
    assert [parse_duration(t) for t in ("5s", "500ms", "1m30s")] == [5.0, 0.5, 90.0]
    for bad in ("5", "s", "-1s", "0s", "5 s"):
        with pytest.raises(InvalidArgument):
            parse_duration(bad)
    with pytest.raises(InvalidArgument):
        parse_bytes("lots")


def test_update_flags_become_oci_resources():
    flags = dict(memory=None, memory_reservation=None, memory_swap=None, cpu_period=None, cpu_quota=None,
                 cpu_shares=None, cpuset_cpus=None, cpuset_mems=None, pids_limit=None, blkio_weight=None)
    assert resources_from_flags(**flags) == {}
    assert resources_from_flags(**flags | {"memory": "64m", "cpu_quota": 5000, "cpu_period": 10000,
                                           "cpu_shares": 512, "pids_limit": 20}) == {
        "memory": {"limit": 64 << 20}, "cpu": {"period": 10000, "quota": 5000, "shares": 512},
        "pids": {"limit": 20}}


def test_stats_become_runcs_types_stats():
    resp = agent_pb2.StatsContainerResponse()
    cg = resp.cgroup_stats
    cg.cpu_stats.cpu_usage.total_usage = 100
    cg.cpu_stats.cpu_usage.percpu_usage.extend([60, 40])
    cg.memory_stats.usage.limit = 1 << 26
    cg.memory_stats.usage.usage = 4096
    cg.memory_stats.stats["rss"] = 4096
    cg.pids_stats.current = 2
    cg.pids_stats.limit = 20
    stats = runc_stats(resp)
    assert stats["cpu"] == {"usage": {"total": 100, "percpu": [60, 40], "kernel": 0, "user": 0}, "throttling": {}}
    assert stats["memory"]["usage"] == {"limit": 1 << 26, "usage": 4096, "failcnt": 0}
    assert stats["memory"]["raw"] == {"rss": 4096} and stats["pids"] == {"current": 2, "limit": 20}
    assert stats["network_interfaces"] is None
    line = event_line("stats", "c1", stats)
    assert list(json.loads(line)) == ["type", "id", "data"] and "\n" not in line


def test_errors_are_one_line_and_a_json_log_record(tmp_path, capsys):
    log = tmp_path / "log.json"
    code = main(["--root", str(tmp_path), "--log", str(log), "--log-format", "json", "state", "nope"])
    assert code == 1
    assert capsys.readouterr().err == "container nope does not exist\n"
    record = json.loads(log.read_text())
    assert list(record) == ["level", "msg", "time"]
    assert record["level"] == "error" and record["msg"] == "container nope does not exist"
    assert record["time"].endswith("Z")


def test_usage_errors_exit_1(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "no-such-command"]) == 1
    assert main(["--root", str(tmp_path), "state"]) == 1
    assert main(["--root", str(tmp_path), "kill", "c", "NOSIG"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and "no-such-command" in err[0] and "ID" in err[1]


def test_list_of_nothing(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "list", "--format", "json"]) == 0
    assert capsys.readouterr().out == "null\n"  # runc encodes a nil slice
    assert main(["--root", str(tmp_path), "list", "-q"]) == 0
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("command", [["state", "c1"], ["list"], ["list", "--format", "json"]])
def test_state_and_list_import_no_grpc_json_or_re(tmp_path, command):
    store = Store(str(tmp_path))
    with store.reserve_container("c1") as entry:
        entry.write({"id": "c1", "status": "created", "shim": {"pid": 1, "start": -1}, "ociVersion": "1.0.2",
                     "bundle": "/b", "rootfs": "/b/rootfs", "created": "t"})
    # json, re, enum and signal: ~11 ms of a ~21 ms `state` (kata_log.cjson); fcntl (only writers
    # lock), the utf-8-sig codec and __future__ (the modules on this path evaluate their
    # annotations): a module each of a ~3 ms budget. Only what the command imported counts (a
    # venv's site may have loaded re before it).
    code = ("import sys; before = set(sys.modules); from kata_runtime.cli import main; rc = main(sys.argv[1:]); "
            "heavy = sorted(m for m in set(sys.modules) - before if m.split('.')[0] in ('grpc', 'google', 'katapb', "
            "'tomllib', 'click', 'asyncio', 'subprocess', 'json', 're', 'enum', 'signal', 'fcntl', '__future__') "
            "or m == 'encodings.utf_8_sig');"
            "print(); print('HEAVY', heavy); sys.exit(rc)")
    p = subprocess.run([sys.executable, "-c", code, "--root", str(tmp_path), *command], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == "HEAVY []"
    assert "stopped" in p.stdout  # the recorded shim is not alive


@pytest.mark.parametrize("argv", [
    ["state", "c1"], ["list"], ["list", "-q"], ["list", "--format", "json"], ["list", "--format=json", "--quiet"],
    ["--debug", "--log-format", "json", "list", "-f", "table"], ["--systemd-cgroup", "state", "c1"],
    ["state", "nope"], ["list", "--format", "yaml"], ["state"], ["state", "a", "b"], ["list", "--help"],
    ["start", "c1"], ["start", "nope"], ["start"], ["kill", "c1"], ["kill", "c1", "KILL", "--all"],
    ["kill", "-a", "nope", "9"], ["kill", "c1", "NOSUCH"], ["kill", "c1", "1", "2"], ["delete", "nope"],
    ["delete", "--force", "nope"], ["delete", "-f", "-f", "nope"], ["delete", "--force=yes", "c1"],
    ["create", "c1", "--bundle", "/nonexistent"], ["create", "--bundle=/nonexistent", "--pid-file", "/p", "x"],
    ["create", "-b", "/nonexistent", "--no-pivot", "--no-new-keyring", "--console-socket", "/s", "x"],
    ["create", "--preserve-fds", "3", "x"], ["create", "--preserve-fds", "many", "x"], ["create", "bad/id"],
    ["create", "x", "--bundle"], ["create", "--help"],
])
def test_fast_path_and_click_agree(tmp_path, capsys, monkeypatch, argv):
    store = Store(str(tmp_path))
    with store.reserve_container("c1") as entry:
        entry.write({"id": "c1", "status": "created", "shim": {"pid": 1, "start": -1}, "ociVersion": "1.0.2",
                     "bundle": "/b", "rootfs": "/b/rootfs", "created": "t", "annotations": {"a": "b"}})
    full = ["--root", str(tmp_path), *argv]
    fast_code, fast_out = main(full), capsys.readouterr()
    monkeypatch.setattr(fast, "parse", lambda argv: None)  # click only
    click_code, click_out = main(full), capsys.readouterr()
    assert (fast_code, fast_out.out, fast_out.err) == (click_code, click_out.out, click_out.err)


def test_fast_path_takes_only_plain_command_lines():
    assert fast.parse(["--root", "/r", "--log=/l", "--debug", "state", "x"]).container_id == "x"
    assert fast.parse(["list", "-q", "-f", "json"]).fmt == "json"
    assert fast.parse(["kill", "-a", "x"]).args == {"container_id": "x", "signal": "SIGTERM", "all_processes": True}
    assert fast.parse(["create", "x", "-b", "/b", "--pid-file=/p"]).args["pid_file"] == "/p"
    for argv in (["--help"], ["state"], ["state", "--help"], ["list", "--all"], ["--root", "/r", "--root", "/s", "list"],
                 ["--log-format", "xml", "list"], ["--root"], ["exec", "x"], ["-v"], ["list", "-qq"],
                 ["create", "x", "--bundle", "-b"], ["create", "--preserve-fds", "\u00b2", "x"], ["kill", "x", "--", "9"],
                 ["delete", "-fa", "x"], ["start", "-"], ["create", "x", "--bundle", "/a", "-b", "/b"]):
        assert fast.parse(argv) is None, argv


def test_socket_paths_always_fit():
    from kata_runtime.sandbox import SOCKET_NAMES, UNIX_PATH_MAX, vm_dir_for

    for sid in ("a", "f" * 64, "x" * 200, "y" * 1024):
        path = vm_dir_for(sid)
        assert all(len(os.path.join(path, name)) <= UNIX_PATH_MAX for name in SOCKET_NAMES), path
    assert vm_dir_for("f" * 64) == "/run/vc/vm/" + "f" * 64
    assert vm_dir_for("x" * 200) != vm_dir_for("x" * 201)
    with pytest.raises(KataError, match="longer than a unix socket address allows"):
        vm_dir_for("a", vm_root="/" + "v" * 120)


@pytest.mark.parametrize("as_json", [False, True])
def test_env_reports_configuration_and_versions(tmp_path, as_json):
    import tomllib

    config = tmp_path / "c.toml"
    config.write_text('[shim.kata]\ndebug = true\n')
    p = subprocess.run([sys.executable, "-m", "kata_runtime", "--kata-config", str(config), "env",
                        *(["--json"] if as_json else [])], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout) if as_json else tomllib.loads(p.stdout)
    assert report["Runtime"]["Config"]["Path"] == str(config)
    assert report["Config"]["shim"]["kata"]["debug"] is True and report["Shim"]["Debug"] is True
    assert report["Config"]["runtime"]["hypervisor"] == "process" == report["Hypervisor"]["Type"]
    assert report["Proxy"]["Version"].startswith("kata-proxy version")
    assert report["Shim"]["Version"].startswith("kata-shim version")


def test_env_reports_the_firmware_a_qemu_sandbox_boots_with(tmp_path):
    from kata_runtime.hypervisor.qemu import default_firmware

    config = tmp_path / "c.toml"
    config.write_text('[runtime]\nhypervisor = "qemu"\n')
    p = subprocess.run([sys.executable, "-m", "kata_runtime", "--kata-config", str(config), "env", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    hypervisor = json.loads(p.stdout)["Hypervisor"]
    assert hypervisor["Type"] == "qemu"
    assert hypervisor["Firmware"] == (default_firmware("/usr/bin/qemu-system-x86_64") or "QEMU's default (SeaBIOS)")
    config.write_text('[runtime]\nhypervisor = "qemu"\n[hypervisor.qemu]\nfirmware = "/fw/bios.bin"\n')
    p = subprocess.run([sys.executable, "-m", "kata_runtime", "--kata-config", str(config), "env", "--json"],
                       capture_output=True, text=True, timeout=120)
    assert json.loads(p.stdout)["Hypervisor"]["Firmware"] == "/fw/bios.bin"


def test_a_detached_shim_is_spawned_as_popen_would(tmp_path):
    """kata_runtime.shim spawns a detached shim with posix_spawn (no subprocess import): like
    Popen(cwd="/", close_fds=True, start_new_session=True, restore_signals=True), it runs in /
    in a session of its own, inherits no fd but 0-2 (here an inheritable pipe end stays
    behind) with SIGPIPE at its default, and our working directory is ours again after."""
    import signal

    from kata_runtime import shim

    out = tmp_path / "out"
    keep_r, keep_w = os.pipe()
    os.set_inheritable(keep_w, True)
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        with open(out, "w") as f:
            saved = os.dup(1)
            os.dup2(f.fileno(), 1)
            try:
                child = shim.spawn(["sh", "-c", "pwd; ls /proc/$$/fd | tr '\\n' ' '; echo; "
                                    "ps -o sid= -p $$; grep SigIgn /proc/$$/status"])
            finally:
                os.dup2(saved, 1)
                os.close(saved)
        assert os.getcwd() == str(tmp_path)
    finally:
        os.chdir(here)
        os.close(keep_w)
    assert isinstance(child, shim.Detached)
    os.waitpid(child.pid, 0)
    os.close(keep_r)
    cwd, fds, sid, ignored = out.read_text().splitlines()
    assert cwd == "/" and fds.split() == ["0", "1", "2"], out.read_text()
    assert int(sid) == child.pid
    assert not int(ignored.split()[1], 16) & (1 << (signal.SIGPIPE - 1))


def test_a_detached_shim_spawns_from_a_directory_it_cannot_read(tmp_path):
    """A caller may run the runtime from a directory it can enter but not list (mode 0311):
    saving it to come back must not need read access (O_PATH), as Popen(cwd="/") did not."""
    from kata_runtime import shim

    blind = tmp_path / "blind"
    blind.mkdir(mode=0o311)
    # everything imported first: uid 65534 cannot read this interpreter's files under /root
    code = ("import os, sys, _signal; from kata_runtime import shim; os.chdir(sys.argv[1]); "
            "os.setgid(65534); os.setuid(65534); c = shim.spawn(['/bin/true']); os.waitpid(c.pid, 0); "
            "print(os.getcwd() == sys.argv[1])")
    os.chmod(tmp_path, 0o711)
    p = subprocess.run([sys.executable, "-c", code, str(blind)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=os.getcwd()), cwd="/")
    assert p.returncode == 0 and p.stdout.strip() == "True", p.stderr
    assert shim.Detached  # the detached path was the one taken (no Popen for a detached shim)
