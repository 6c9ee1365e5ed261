"""kata-shim flag parsing: Go single-dash spellings, GNU long flags, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kata_shim import exits, flags
from kata_shim.flags import UsageError, parse

REPO = Path(__file__).resolve().parents[2]
BASE = ["--agent", "unix:///run/p.sock", "--container", "c1", "--exec-id", "e1"]


def test_long_flags():
    o = parse(BASE)
    assert (o.agent, o.socket_path, o.container, o.exec_id) == ("unix:///run/p.sock", "/run/p.sock", "c1", "e1")
    assert o.terminal is False and o.proxy_exit_code is True
    assert o.log_level == "warn" and o.log_format == "text"
    assert o.reconnect_timeout == flags.DEFAULT_RECONNECT_TIMEOUT


def test_go_single_dash_spellings():
    o = parse(["-agent", "unix:///a.sock", "-container", "c", "-exec-id", "x", "-terminal",
               "-proxy-exit-code=false", "-log", "info", "-trace", "-agent-logs-socket", "/x"])
    assert o.socket_path == "/a.sock" and o.terminal and not o.proxy_exit_code
    assert o.log_level == "info" and o.trace and o.agent_logs_socket == "/x"


@pytest.mark.parametrize("args,expected", [
    ([], True),
    (["--proxy-exit-code"], True),
    (["--no-proxy-exit-code"], False),
    (["-proxy-exit-code=false"], False),
    (["-proxy-exit-code=0"], False),
    (["--proxy-exit-code=true"], True),
    (["--no-proxy-exit-code", "--proxy-exit-code"], True),  # last one wins
])
def test_proxy_exit_code_switch(args, expected):
    assert parse(BASE + args).proxy_exit_code is expected


def test_equals_and_debug():
    o = parse(["--agent=unix:/p.sock", "--container=c", "--exec-id=e", "-debug", "--log-format=json",
               "--reconnect-timeout=0.5", "--log-file", "/tmp/x.log"])
    assert o.socket_path == "/p.sock" and o.log_level == "debug" and o.log_format == "json"
    assert o.reconnect_timeout == 0.5 and o.log_file == "/tmp/x.log"


def test_log_level_is_case_insensitive():
    assert parse(BASE + ["--log", "DEBUG"]).log_level == "debug"


@pytest.mark.parametrize("agent,path", [
    ("unix:///run/vc/sbs/x/proxy.sock", "/run/vc/sbs/x/proxy.sock"),
    ("unix:/run/p.sock", "/run/p.sock"),
    ("/run/p.sock", "/run/p.sock"),
    ("unix://relative.sock", "relative.sock"),
    ("relative.sock", "relative.sock"),  # as the Go shim's url.Parse: relative to the cwd
    ("unix://run/p.sock", "run/p.sock"),
])
def test_agent_addresses(agent, path):
    assert flags.socket_path(agent) == path


def test_agent_address_naming_no_path_is_a_usage_error():
    # url.Parse reads "unix:p.sock" as an opaque URL: no Host, no Path (the Go shim refuses it)
    with pytest.raises(UsageError, match="agent address 'unix:p.sock' has no socket path"):
        parse(["--agent", "unix:p.sock", "--container", "c", "--exec-id", "e"])


@pytest.mark.parametrize("argv,fragment", [
    (["--container", "c", "--exec-id", "e"], "missing required flag -agent"),
    (["--agent", "unix:///p", "--exec-id", "e"], "missing required flag -container"),
    (["--agent", "unix:///p", "--container", "c"], "missing required flag -exec-id"),
    (BASE + ["--bogus"], "flag provided but not defined: -bogus"),
    (BASE + ["-terminal=maybe"], "invalid boolean value"),
    (BASE + ["--no-terminal=true"], "takes no value"),
    (BASE + ["--log", "loud"], "unknown log level"),
    (BASE + ["--log-format", "xml"], "unknown log format"),
    (BASE + ["-terminal=yes"], "invalid boolean value 'yes' for flag -terminal"),
    (BASE + ["--reconnect-timeout", "soon"], "invalid --reconnect-timeout"),
    (BASE + ["--reconnect-timeout=-1"], "must be >= 0"),
    (BASE + ["extra"], "unexpected argument 'extra'"),
    (BASE + ["--", "extra"], "unexpected argument 'extra'"),
    (BASE + ["---agent", "x"], "bad flag syntax"),
    (["--agent"], "flag needs an argument: -agent"),
    (["--agent", "tcp://1.2.3.4:5", "--container", "c", "--exec-id", "e"], "unsupported agent scheme 'tcp'"),
    (["--agent", "unix://", "--container", "c", "--exec-id", "e"], "no socket path"),
])
def test_errors(argv, fragment):
    with pytest.raises(UsageError) as info:
        parse(argv)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_bool_flags_do_not_take_the_next_argument():
    # As with Go's flag package: "-terminal false" leaves "false" as a stray argument.
    with pytest.raises(UsageError, match="unexpected argument 'false'"):
        parse(BASE + ["-terminal", "false"])


def test_help_and_version_skip_validation():
    assert parse(["-h"]).help and parse(["--help"]).help and parse(["-version"]).version


def _run(*args):
    return subprocess.run([sys.executable, "-m", "kata_shim", *args], capture_output=True, text=True,
                          timeout=30, cwd=REPO)


def test_cli_bad_flag_is_one_line_and_status_2():
    r = _run("--agent", "unix:///nowhere.sock", "--container", "c", "--bogus")
    assert r.returncode == exits.USAGE == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("kata-shim: flag provided but not defined: -bogus")


def test_cli_missing_flag():
    r = _run("-container", "c", "-exec-id", "e")
    assert r.returncode == 2 and r.stderr.strip() == "kata-shim: missing required flag -agent (see kata-shim --help)"


def test_cli_version_and_help():
    r = _run("-version")
    assert r.returncode == 0 and r.stdout.startswith("kata-shim version ")
    r = _run("--help")
    assert r.returncode == 0 and "--proxy-exit-code" in r.stdout and "222" in r.stdout


def test_cli_unreachable_agent_fails_with_the_documented_status(tmp_path):
    # Nothing listens there: retried for --reconnect-timeout, then status 222 and one line.
    r = _run("--agent", f"unix://{tmp_path}/none.sock", "--container", "c", "--exec-id", "c",
             "--reconnect-timeout", "0.3")
    assert r.returncode == exits.SHIM_FAILURE == 222
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("kata-shim: lost the connection to the agent")
