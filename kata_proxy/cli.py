"""Command line of kata-proxy.

Both spellings are accepted: the project's ``--long-flags`` and the Go kata-proxy's single-dash
flags (``-listen-socket unix:///p``, ``-mux-socket p``, ``-sandbox id``, ``-log level``,
``-agent-logs-socket p``, ``-debug``, ``-version``, also ``-flag=value`` and ``-debug=true``), so
that kata-proxy can stand in for the Go binary.  :func:`normalise_argv` rewrites the Go spellings
before click parses them.

``--log VALUE`` is a level name (debug, info, warn, error, fatal, panic: Go's ``-log``) or, when it
is not a level name, a file to append the log to.  ``--log-level`` and ``--log-file`` say the
same thing explicitly.  Exit codes: see kata_proxy/exits.py.
"""

from __future__ import annotations

import re
import sys

import click

from kata_proxy import __version__, exits
from kata_proxy import log as klog

#: Long options that take a value (used to tell values from flags when normalising).
VALUE_OPTIONS = {
    "listen-socket", "mux-socket", "channel", "agent-logs-socket", "sandbox", "log",
    "log-level", "log-file", "log-format", "channel-timeout", "heartbeat",
}
#: Long options that are booleans; Go accepts ``-flag=true`` / ``-flag=false`` for them.
BOOL_OPTIONS = {"debug", "version", "help", "no-uvloop"}

_SINGLE_DASH = re.compile(r"^-([A-Za-z][A-Za-z0-9_-]+)(=.*)?$")
_DOUBLE_DASH = re.compile(r"^--([A-Za-z][A-Za-z0-9_-]*)(=.*)?$")
_TRUE = {"true", "t", "1", "yes"}
_FALSE = {"false", "f", "0", "no"}


def normalise_argv(argv: list[str]) -> list[str]:
    """Rewrite Go-style single-dash flags into click's ``--long`` form.

    ``-name`` and ``-name=value`` become ``--name`` / ``--name=value`` (any name longer than one
    letter, so that unknown ones are reported as ``--name``); ``-h`` becomes ``--help``; boolean
    flags given ``=true`` lose the value and given ``=false`` are dropped.  Values that follow an
    option needing one are never rewritten, nor is anything after ``--``.
    """
    out: list[str] = []
    expect_value = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if expect_value:
            out.append(arg)
            expect_value = False
            continue
        if arg == "--":
            out.append(arg)
            out.extend(argv[i:])
            break
        if arg == "-h":
            out.append("--help")
            continue
        name = value = None
        match = _SINGLE_DASH.match(arg) or _DOUBLE_DASH.match(arg)
        if match:
            name, value = match.group(1), match.group(2)
        if name is None:
            out.append(arg)
            continue
        name = name.replace("_", "-")
        if name in BOOL_OPTIONS and value is not None:
            word = value[1:].lower()
            if word in _TRUE:
                out.append("--" + name)
            elif word in _FALSE:
                pass
            else:
                out.append(f"--{name}{value}")  # click reports the bad value
            continue
        out.append(f"--{name}{value or ''}")
        if name in VALUE_OPTIONS and value is None:
            expect_value = True
    return out


def strip_unix_scheme(address: str, what: str) -> str:
    """``unix:///p`` / ``unix:/p`` / ``unix://p`` / ``/p`` -> ``/p``; other schemes are errors."""
    if address.startswith("unix://"):
        path = address[len("unix://"):]
    elif address.startswith("unix:"):
        path = address[len("unix:"):]
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", address):
        raise click.BadParameter(f"{address!r}: only unix:// addresses are supported", param_hint=what)
    else:
        path = address
    if not path:
        raise click.BadParameter("empty path", param_hint=what)
    return path


def _level_or_file(value: str):
    """``--log VALUE``: (level, None) for a level name, else (None, path)."""
    try:
        return klog.parse_level(value), None
    except ValueError:
        return None, value


class _Result:
    def __init__(self, opts=None, code=None):
        self.opts = opts
        self.code = code


@click.command(name="kata-proxy", context_settings={"help_option_names": ["--help"]},
               help="Per-VM multiplexing proxy: one yamux session to the guest agent, one stream "
                    "per client connection.")
@click.option("--listen-socket", metavar="PATH",
              help="Unix socket to serve clients on (unix:///PATH accepted). Omit under systemd "
                   "socket activation.")
@click.option("--mux-socket", metavar="PATH",
              help="Unix socket QEMU binds the agent's virtio-serial port to.")
@click.option("--channel", metavar="DEVICE", help="Serial or character device of the guest channel.")
@click.option("--agent-logs-socket", metavar="PATH", help="VM console socket: guest lines are logged.")
@click.option("--sandbox", metavar="ID", default=None, help="Sandbox id (added to every log line).")
@click.option("--log", "log_value", metavar="LEVEL|FILE",
              help="Log level (debug, info, warn, error, fatal, panic; default warn) or a file to log to.")
@click.option("--log-level", metavar="LEVEL", help="Log level (as --log LEVEL).")
@click.option("--log-file", metavar="FILE", help="Append the log to FILE instead of stderr.")
@click.option("--log-format", type=click.Choice(["text", "logfmt", "json"]), default="text",
              show_default=True, help="text is logfmt (key=value) lines.")
@click.option("--debug", is_flag=True, help="Same as --log-level debug.")
@click.option("--channel-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              metavar="SECONDS", help="How long to wait for the guest channel to appear.")
@click.option("--heartbeat", type=click.FloatRange(min=0), default=1.0, show_default=True,
              metavar="SECONDS", help="Ping the agent this often (0: never); failures are only logged.")
@click.option("--no-uvloop", is_flag=True, help="Use the standard asyncio event loop.")
@click.option("--version", is_flag=True, help="Print the version and exit.")
def command(listen_socket, mux_socket, channel, agent_logs_socket, sandbox, log_value, log_level,
            log_file, log_format, debug, channel_timeout, heartbeat, no_uvloop, version):
    from kata_proxy.proxy import Options

    if version:
        click.echo(f"kata-proxy version {__version__}")
        return _Result(code=exits.OK)
    if mux_socket and channel:
        raise click.UsageError("--mux-socket and --channel are mutually exclusive")
    if not mux_socket and not channel:
        raise click.UsageError("one of --mux-socket PATH or --channel DEVICE is required")
    if mux_socket:
        mux_socket = strip_unix_scheme(mux_socket, "--mux-socket")
    if agent_logs_socket:
        agent_logs_socket = strip_unix_scheme(agent_logs_socket, "--agent-logs-socket")
    if listen_socket:
        listen_socket = strip_unix_scheme(listen_socket, "--listen-socket")

    level = klog.parse_level("warn")
    if log_value:
        lv, lf = _level_or_file(log_value)
        if lv is not None:
            level = lv
        elif log_file and log_file != lf:
            raise click.UsageError(f"--log {log_value!r} is not a level, and --log-file is also given")
        else:
            log_file = lf
    if log_level:
        try:
            level = klog.parse_level(log_level)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--log-level") from None
    if debug:
        level = klog.parse_level("debug")

    from kata_proxy import listener as klistener

    try:
        fds, names = klistener.sd_listen_fds(unset_environment=True)
    except ValueError as exc:
        raise exits.ProxyExit(exits.LISTEN, f"systemd socket activation: {exc}") from None
    if fds and listen_socket:
        raise click.UsageError("--listen-socket given, but systemd also passed a socket "
                               "(LISTEN_FDS); use one or the other")
    if not fds and not listen_socket:
        raise click.UsageError("--listen-socket PATH is required (or start under systemd "
                               "socket activation)")

    return _Result(opts=Options(
        listen_socket=listen_socket, mux_socket=mux_socket, channel=channel,
        agent_logs_socket=agent_logs_socket, sandbox=sandbox, log_level=level, log_file=log_file,
        log_format=log_format, channel_timeout=channel_timeout, heartbeat=heartbeat,
        use_uvloop=not no_uvloop, listen_fds=fds, listen_fd_names=names))


def parse(argv: list[str]):
    """Options for ``argv``, or an int exit code (``--version``, ``--help``).

    Raises click.ClickException for usage errors and ProxyExit for bad LISTEN_* variables.
    """
    try:
        result = command.main(args=normalise_argv(list(argv)), prog_name="kata-proxy",
                              standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    if isinstance(result, _Result):
        return result.code if result.opts is None else result.opts
    return exits.OK if result is None else int(result)  # --help returns 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        parsed = parse(argv)
    except click.ClickException as exc:
        sys.stderr.write(f"kata-proxy: error: {_one_line(exc.format_message())}\n")
        return exits.USAGE
    except exits.ProxyExit as exc:
        sys.stderr.write(f"kata-proxy: error: {exc.message}\n")
        return exc.code
    except click.Abort:
        return exits.USAGE
    if isinstance(parsed, int):
        return parsed
    from kata_proxy.proxy import run

    return run(parsed)


if __name__ == "__main__":
    sys.exit(main())
