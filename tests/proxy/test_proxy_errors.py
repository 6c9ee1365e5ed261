"""Process tier: bad flags and unusable paths give one line on stderr, the documented exit code,
and leave nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kata_proxy import exits
from tests.support.processes import REPO, child_env

pytestmark = pytest.mark.sandbox


def run_proxy(args, timeout=30):
    return subprocess.run([sys.executable, "-m", "kata_proxy", *args], capture_output=True,
                          text=True, timeout=timeout, env=child_env(), cwd=str(REPO))


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("make_args, code, words", [
    (lambda d: ["-bogus"], exits.USAGE, "--bogus"),
    (lambda d: ["-listen-socket", f"{d}/p.sock"], exits.USAGE, "--mux-socket"),
    (lambda d: ["-mux-socket", f"{d}/kata.sock"], exits.USAGE, "--listen-socket"),
    (lambda d: ["-listen-socket", f"{d}/p.sock", "-mux-socket", f"{d}/m", "-log", "loud/x"],
     exits.USAGE, "log file"),
    (lambda d: ["-listen-socket", f"{d}/missing/p.sock", "-mux-socket", f"{d}/m"],
     exits.LISTEN, "does not exist"),
    (lambda d: ["-listen-socket", f"{d}/afile/p.sock", "-mux-socket", f"{d}/m"],
     exits.LISTEN, "not a directory"),
    (lambda d: ["-listen-socket", f"{d}/afile", "-mux-socket", f"{d}/m"],
     exits.LISTEN, "not a socket"),
    (lambda d: ["-listen-socket", f"{d}/p.sock", "-mux-socket", f"{d}/nothing.sock",
                "--channel-timeout", "0.5"], exits.CHANNEL_OPEN, "gave up after 0.5s"),
    (lambda d: ["-listen-socket", f"{d}/p.sock", "-mux-socket", f"{d}/afile/kata.sock",
                "--channel-timeout", "30"], exits.CHANNEL_OPEN, "Not a directory"),
    (lambda d: ["-listen-socket", f"{d}/p.sock", "--channel", f"{d}/no-such-dev",
                "--channel-timeout", "0.3"], exits.CHANNEL_OPEN, "no such file"),
    (lambda d: ["-listen-socket", f"{d}/p.sock", "--channel", d], exits.CHANNEL_OPEN, "directory"),
    (lambda d: ["-listen-socket", f"{d}/p.sock", "--channel", "/dev/null"], exits.CHANNEL_OPEN,
     "does not support poll"),
])
def test_errors_are_one_line_and_leave_nothing(sockdir, make_args, code, words):
    with open(os.path.join(sockdir, "afile"), "w") as fh:
        fh.write("keep")
    before = sorted(os.listdir(sockdir))
    proc = run_proxy(make_args(sockdir))
    assert proc.returncode == code, proc.stderr
    line = one_line(proc.stderr)
    assert words.lower() in line.lower(), line
    assert proc.stdout == ""  # never READY
    assert sorted(os.listdir(sockdir)) == before
    assert open(os.path.join(sockdir, "afile")).read() == "keep"


def test_errors_with_a_log_file_still_say_one_line_on_stderr(sockdir):
    log = os.path.join(sockdir, "proxy.log")
    proc = run_proxy(["-listen-socket", f"{sockdir}/missing/p.sock", "-mux-socket", "/x",
                      "--log-file", log])
    assert proc.returncode == exits.LISTEN
    assert "does not exist" in one_line(proc.stderr)
    assert "does not exist" in one_line(open(log).read())


def test_version():
    proc = run_proxy(["-version"])
    assert proc.returncode == 0
    assert proc.stdout.startswith("kata-proxy version ")
