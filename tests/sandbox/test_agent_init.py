"""kata-agent's own set-up code: guest init (in throwaway namespaces), CLI mode and logging."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kata_agent import cli
from tests.support.processes import python_prints
from tests.support.requirements import requires

REPO = Path(__file__).resolve().parents[2]


def test_detect_mode():
    assert cli.detect_mode(explicit_channel=False, pid=1) == "vm"
    assert cli.detect_mode(explicit_channel=True, pid=1) == "sandbox"
    assert cli.detect_mode(explicit_channel=True, pid=4242) == "host"
    assert cli.detect_mode(explicit_channel=False, pid=4242) == "host"


def test_log_formats():
    record = logging.LogRecord("kata_agent.channel", logging.WARNING, __file__, 1, "channel closed: %s", ("x y",), None)
    text = cli._Formatter("text").format(record)
    assert 'level=warning msg="channel closed: x y" name=kata-agent' in text
    assert "source=agent subsystem=channel" in text
    obj = json.loads(cli._Formatter("json").format(record))
    assert obj["level"] == "warning" and obj["msg"] == "channel closed: x y" and obj["source"] == "agent"


def test_unknown_log_format_falls_back_to_text(capsys):
    """A bad ``agent.log_format=`` on the guest's kernel command line must not stop the agent:
    text lines, and one warning naming the known formats."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        cli.setup_logging("info", "yaml")
        logging.getLogger("kata_agent.channel").warning("after")
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    err = capsys.readouterr().err.splitlines()
    assert "unknown log format 'yaml'; using text (known: " in err[0], err
    assert err[1].startswith("time=") and 'msg=after' in err[1], err


def test_arguments_with_and_without_argparse():
    """A VM's PID 1 has no arguments: the defaults come without importing argparse (a fresh
    interpreter shows it); with arguments argparse parses into the same Args, and every flag
    the parser knows has its default there."""
    code = ("import sys; from kata_agent.cli import parse_args; a = parse_args([]); "
            "print('argparse' in sys.modules, a.sysfs_root, a.dev_root, a.channel_fd, a.log_format)")
    assert python_prints(code).split() == ["False", "/sys", "/dev", "None", "None"]
    dests = {a.dest for a in cli.build_parser()._actions if a.dest != "help"}
    assert all(hasattr(cli.Args, d) for d in dests), dests - set(vars(cli.Args))
    args = cli.parse_args(["--channel-fd", "3", "--log-format", "json", "--state-dir", "/x"])
    assert (args.channel_fd, args.log_format, args.state_dir, args.sysfs_root) == (3, "json", "/x", "/sys")
    for bad in (["--channel-fd", "3", "--channel-socket", "/s"], ["--channel-fd", "x"], ["--ready-fd"],
                ["--nope", "1"], ["--log-format", "yaml"]):
        with pytest.raises(SystemExit) as e:
            cli.parse_args(bad)
        assert e.value.code == 2, bad


@pytest.mark.parametrize("argv", [
    ["--channel-fd", "3", "--ready-fd", "4", "--shared-dir", "/run/s", "--state-dir", "/run/a", "--log", "debug",
     "--log-format", "json"],
    ["--channel-socket", "/tmp/a.sock", "--cgroup-parent", "kata"],
    ["--channel-fd=3"], ["--log", "-1"], ["--channel-fd", "3", "--log-format", "text"], ["--log", "info", "--log", "debug"],
])
def test_plain_command_lines_read_as_argparse_reads_them(argv):
    """The process sandbox's plain command line is read without argparse; it, and everything
    the plain reader hands on, ends as argparse reads it."""
    import argparse

    expected = cli.build_parser().parse_args(argv, namespace=argparse.Namespace(**{
        k: v for k, v in vars(cli.Args).items() if not k.startswith("_")}))
    got = cli.parse_args(argv)
    assert {k: getattr(got, k) for k in vars(expected)} == vars(expected)


def test_cmdline_config():
    from kata_agent.config import AgentConfig

    got = cli.cmdline_config({"container_pipe_size": "65536", "log": "debug"}, AgentConfig)
    if "container_pipe_size" in {f.name for f in __import__("dataclasses").fields(AgentConfig)}:
        assert got == {"container_pipe_size": 65536}
    assert cli.cmdline_config({"container_pipe_size": "lots"}, AgentConfig) == {}


@requires(root="needs root and unshare", tools=("unshare",))
def test_setup_guest_in_throwaway_namespaces():
    """setup_guest() as PID 1 of fresh namespaces: already-mounted things are skipped, the rest
    (tmpfs /run and /tmp, devpts, shm, cgroups) get mounted; nothing reaches the host."""
    script = (
        "import os, json\n"
        "from kata_agent import init\n"
        "assert os.getpid() == 1\n"
        "init.setup_guest({})\n"
        "mounts = {}\n"
        "for line in open('/proc/self/mountinfo'):\n"
        "    f = line.split(' ')\n"
        "    mounts[f[4]] = f[f.index('-') + 1]\n"
        "print(json.dumps({'mounts': mounts, 'path': os.environ.get('PATH')}))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    before = host_mount_points()
    out = subprocess.run(
        ["unshare", "--mount", "--pid", "--uts", "--ipc", "--fork", "--mount-proc", sys.executable, "-c", script],
        capture_output=True, text=True, env=env, timeout=60, check=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    mounts = result["mounts"]
    assert mounts["/run"] == "tmpfs" and mounts["/tmp"] == "tmpfs"
    assert mounts["/proc"] == "proc" and mounts["/sys"] == "sysfs"
    assert mounts.get("/dev/pts") == "devpts"
    assert any(t.startswith("/sys/fs/cgroup/") and kind == "cgroup" for t, kind in mounts.items())
    assert result["path"]
    assert host_mount_points() == before


def host_mount_points():
    return sorted(line.split(" ")[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())
