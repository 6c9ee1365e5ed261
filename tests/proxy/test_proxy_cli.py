"""Unit tests: flag normalising (Go single-dash spellings) and option parsing."""

from __future__ import annotations

import logging

import click
import pytest

from kata_log.flags import FlagError
from kata_proxy import cli, exits


@pytest.mark.parametrize("argv, want", [
    (["-listen-socket", "unix:///p", "-mux-socket", "/m"], ["--listen-socket", "unix:///p", "--mux-socket", "/m"]),
    (["-sandbox", "abc", "-log", "debug"], ["--sandbox", "abc", "--log", "debug"]),
    (["-agent-logs-socket", "/c", "-debug"], ["--agent-logs-socket", "/c", "--debug"]),
    (["-version"], ["--version"]),
    (["-log=info", "-sandbox=x"], ["--log=info", "--sandbox=x"]),
    (["-debug=true", "-version=false"], ["--debug"]),
    (["--debug=1"], ["--debug"]),
    (["-h"], ["--help"]),
    (["--listen-socket", "/p"], ["--listen-socket", "/p"]),
    # values that look like flags are left alone
    (["-sandbox", "-weird-id"], ["--sandbox", "-weird-id"]),
    (["--channel-timeout", "-1"], ["--channel-timeout", "-1"]),
    # unknown single-dash names become --name so click names them properly
    (["-bogus"], ["--bogus"]),
    (["--", "-mux-socket"], ["--", "-mux-socket"]),
    (["-listen_socket", "/p"], ["--listen-socket", "/p"]),
])
def test_normalise_argv(argv, want):
    assert cli.normalise_argv(argv) == want


@pytest.mark.parametrize("argv, message", [
    (["-mux-socket"], "flag needs an argument: -mux-socket"),
    (["-debug=yes"], "invalid boolean value 'yes' for flag -debug"),
    (["---debug"], "bad flag syntax: ---debug"),
])
def test_go_flag_errors_are_usage_errors(argv, message):
    with pytest.raises(FlagError, match=message):
        cli.normalise_argv(argv)
    with pytest.raises(click.UsageError, match=message):
        cli.parse(argv)


@pytest.mark.parametrize("address", ["unix:///run/p.sock", "unix:/p", "/p", "unix://rel.sock", "rel.sock",
                                     "unix://rel/p.sock", "unix:///a%20b", "unix:rel", "unix://", "",
                                     "tcp://h:1", "vsock://3:1024"])
def test_the_proxy_reads_addresses_as_the_shim_does(address):
    """One rule (kata_log.flags.unix_socket_path, the Go components' url.Parse) for both."""
    from kata_shim import flags as shim_flags

    def read(parse):
        try:
            return parse(address)
        except ValueError:
            return "refused"

    assert read(cli.unix_path) == read(shim_flags.socket_path)


def test_relative_socket_paths_are_kept_relative(monkeypatch):
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(key, raising=False)
    argv = ["--listen-socket", "unix://proxy.sock", "--mux-socket", "kata.sock"]
    plain = cli.parse_plain(argv)
    assert (plain.listen_socket, plain.mux_socket) == ("proxy.sock", "kata.sock")
    assert cli.parse(argv) == plain


def test_go_spelling_parses_like_long_flags(monkeypatch):
    for key in ("LISTEN_PID", "LISTEN_FDS"):
        monkeypatch.delenv(key, raising=False)
    go = cli.parse(["-listen-socket", "unix:///run/p.sock", "-mux-socket", "/run/kata.sock",
                    "-sandbox", "sb1", "-log", "info", "-agent-logs-socket", "/run/console.sock"])
    long = cli.parse(["--listen-socket", "/run/p.sock", "--mux-socket", "/run/kata.sock",
                      "--sandbox", "sb1", "--log-level", "info",
                      "--agent-logs-socket", "/run/console.sock"])
    assert go == long
    assert go.listen_socket == "/run/p.sock"
    assert go.log_level == logging.INFO
    assert go.sandbox == "sb1"
    assert go.log_file is None


def test_log_value_level_or_file(monkeypatch):
    monkeypatch.delenv("LISTEN_PID", raising=False)
    base = ["--listen-socket", "/p", "--mux-socket", "/m"]
    assert cli.parse(base + ["-log", "warn"]).log_level == logging.WARNING
    assert cli.parse(base + ["-log", "panic"]).log_level == logging.CRITICAL
    opts = cli.parse(base + ["--log", "/tmp/proxy.log"])
    assert opts.log_file == "/tmp/proxy.log" and opts.log_level == logging.WARNING
    assert cli.parse(base + ["-debug"]).log_level == logging.DEBUG
    assert cli.parse(base).log_level == logging.WARNING  # Go's default


def test_version_and_help():
    assert cli.parse(["-version"]) == exits.OK
    assert cli.parse(["--help"]) == exits.OK


@pytest.mark.parametrize("argv, words", [
    (["--mux-socket", "/m"], "--listen-socket"),
    (["--listen-socket", "/p"], "--mux-socket"),
    (["--listen-socket", "/p", "--mux-socket", "/m", "--channel", "/dev/x"], "mutually exclusive"),
    (["--listen-socket", "vsock://3:1024", "--mux-socket", "/m"], "unix://"),
    (["--listen-socket", "/p", "--mux-socket", "/m", "--log-format", "xml"], "xml"),
    (["--listen-socket", "/p", "--mux-socket", "/m", "--log-level", "loud"], "loud"),
    (["-bogus-flag", "x"], "--bogus-flag"),
])
def test_usage_errors(argv, words, monkeypatch):
    monkeypatch.delenv("LISTEN_PID", raising=False)
    with pytest.raises(click.ClickException) as info:
        cli.parse(argv)
    assert words in info.value.format_message()


def test_main_usage_error_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("LISTEN_PID", raising=False)
    assert cli.main(["-mux-socket"]) == exits.USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("kata-proxy: error: ")


def test_listen_fds_zero_needs_listen_socket(monkeypatch):
    import os

    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "0")
    with pytest.raises(click.UsageError):
        cli.parse(["--mux-socket", "/m"])  # LISTEN_FDS=0: no socket passed
    assert "LISTEN_PID" not in os.environ  # unset after reading, as sd_listen_fds(1)


def test_bad_listen_env_is_listen_error(monkeypatch):
    import os

    monkeypatch.setenv("LISTEN_PID", str(os.getpid()))
    monkeypatch.setenv("LISTEN_FDS", "many")
    with pytest.raises(exits.ProxyExit) as info:
        cli.parse(["--mux-socket", "/m"])
    assert info.value.code == exits.LISTEN


@pytest.mark.parametrize("argv", [
    ["--mux-socket", "/run/vc/vm/s/kata.sock", "--listen-socket", "/run/vc/vm/s/proxy.sock", "--sandbox", "s",
     "--log-file", "/run/vc/vm/s/proxy.log", "--log-level", "info"],
    ["--mux-socket=unix:///m", "--listen-socket", "unix:/p", "--log-level=debug", "--agent-logs-socket", "/c"],
    ["--listen-socket", "/p", "--mux-socket", "/m", "--sandbox=", "--log-file="],
    ["--listen-socket", "/p", "--mux-socket", "/m", "--log-level", "WARN"],
])
def test_the_runtimes_command_line_parses_without_click_as_with_it(argv, monkeypatch):
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(key, raising=False)
    plain = cli.parse_plain(argv)
    assert plain is not None and plain == cli.parse(argv)


@pytest.mark.parametrize("argv", [
    ["--mux-socket", "/m"], ["--listen-socket", "/p"], ["--listen-socket", "/p", "--mux-socket", "/m", "--debug"],
    ["--listen-socket", "/p", "--mux-socket", "/m", "--mux-socket", "/n"], ["-listen-socket", "/p", "-mux-socket", "/m"],
    ["--listen-socket", "vsock://3:1024", "--mux-socket", "/m"], ["--listen-socket", "/p", "--mux-socket", "/m",
                                                                 "--log-level", "loud"],
    ["--listen-socket", "/p", "--mux-socket", "/m", "--sandbox", "-x"], ["--listen-socket", "/p", "--mux-socket", "/m",
                                                                       "--agent-logs-socket="],
    ["--listen-socket", "/p", "--mux-socket"], ["--help"], ["--version"],
])
def test_anything_else_goes_to_click(argv, monkeypatch):
    for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        monkeypatch.delenv(key, raising=False)
    assert cli.parse_plain(argv) is None


def test_systemd_activation_goes_to_click(monkeypatch):
    monkeypatch.setenv("LISTEN_FDNAMES", "x")
    assert cli.parse_plain(["--listen-socket", "/p", "--mux-socket", "/m"]) is None
