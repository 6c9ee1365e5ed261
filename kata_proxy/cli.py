"""Command line of kata-proxy.

Both spellings are accepted: the project's ``--long-flags`` and the Go kata-proxy's single-dash
flags (``-listen-socket unix:///p``, ``-mux-socket p``, ``-sandbox id``, ``-log level``,
``-agent-logs-socket p``, ``-debug``, ``-version``, also ``-flag=value`` and ``-debug=true``), so
that kata-proxy can stand in for the Go binary.  :func:`normalise_argv` rewrites the Go spellings
before click parses them, reading them with kata-shim's reader (:class:`kata_log.flags.GoFlags`);
socket addresses are read as the Go proxy reads them (:func:`kata_log.flags.unix_socket_path`:
url.Parse, relative paths included).

``--log VALUE`` is a level name (debug, info, warn, error, fatal, panic: Go's ``-log``) or, when it
is not a level name, a file to append the log to.  ``--log-level`` and ``--log-file`` say the
same thing explicitly.  Exit codes: see kata_proxy/exits.py.

The command line kata-runtime gives every proxy it starts (:data:`PLAIN_FLAGS`, each once) is
read by :func:`parse_plain` without importing click (a sixth of the proxy's start-up); any other
line goes to click (:func:`parse`), which reads those flags the same way (the tests compare).
"""

from __future__ import annotations

import functools
import gc
import os
import sys

from kata_log.flags import FlagError, GoFlags, parse_bool, unix_socket_path
from kata_proxy import __version__, exits
from kata_proxy import log as klog

#: Long options that take a value (used to tell values from flags when normalising).
VALUE_OPTIONS = {
    "listen-socket", "mux-socket", "channel", "agent-logs-socket", "sandbox", "log",
    "log-level", "log-file", "log-format", "channel-timeout", "heartbeat",
}
#: Long options that are booleans; Go accepts ``-flag=true`` / ``-flag=false`` for them.
BOOL_OPTIONS = {"debug", "version", "help", "no-uvloop"}


def _long_name(name: str) -> str:
    """The click option name of a flag name: ``_`` read as ``-``, ``h`` as ``help``."""
    return "help" if name == "h" else name.replace("_", "-")


def normalise_argv(argv: list[str]) -> list[str]:
    """Rewrite Go-style flags (read by :class:`kata_log.flags.GoFlags`) into click's ``--long`` form.

    ``-name`` and ``-name=value`` become ``--name`` / ``--name=value`` (unknown names too, so that
    click reports them as ``--name``); ``-h`` becomes ``--help``; boolean flags given ``=true``
    lose the value and given ``=false`` are dropped.  The value that follows an option needing
    one is never rewritten, nor is anything after the flags (kept after a ``--``).  Raises
    FlagError (bad flag syntax, a missing value, a boolean's bad value).
    """
    out: list[str] = []
    scan = GoFlags(argv, lambda name: _long_name(name) in VALUE_OPTIONS)
    for flag in scan:
        name = _long_name(flag.name)
        if name in BOOL_OPTIONS and flag.joined:
            if parse_bool(name, flag.value):
                out.append("--" + name)
        elif flag.joined:
            out.append(f"--{name}={flag.value}")
        elif flag.value is None:
            out.append("--" + name)
        else:
            out += ["--" + name, flag.value]
    if scan.rest:
        out += ["--", *scan.rest]
    return out


def unix_path(address: str) -> str:
    """The socket path of an address (:func:`kata_log.flags.unix_socket_path`): ``unix:///p``,
    ``unix:/p`` and ``/p`` -> ``/p``; ``unix://rel`` and ``rel`` -> ``rel``.  Raises FlagError
    (a ValueError) for other schemes and addresses naming no path."""
    return unix_socket_path(address, "socket")


def strip_unix_scheme(address: str, what: str) -> str:
    """:func:`unix_path`, its errors as click's BadParameter for ``what`` (the flag)."""
    import click

    try:
        return unix_path(address)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=what) from None


#: The flags of the command line kata-runtime starts kata-proxy with -> Options fields.
PLAIN_FLAGS = {"--listen-socket": "listen_socket", "--mux-socket": "mux_socket",
               "--agent-logs-socket": "agent_logs_socket", "--sandbox": "sandbox", "--log-level": "log_level",
               "--log-file": "log_file"}
_LISTEN_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def parse_plain(argv: list[str], env=None):
    """Options for a plain command line, without click; None for anything else (click's).

    Plain: only :data:`PLAIN_FLAGS`, each at most once, as ``--name value`` or ``--name=value``
    with a value that does not look like a flag; both --mux-socket and --listen-socket; valid
    addresses and level; and no systemd LISTEN_* variables in ``env`` (os.environ)."""
    env = os.environ if env is None else env
    values = _plain_values(argv)
    if values is None or "mux_socket" not in values or "listen_socket" not in values:
        return None
    if any(key in env for key in _LISTEN_ENV):
        return None
    try:
        for key in ("mux_socket", "listen_socket", "agent_logs_socket"):
            if key in values:
                values[key] = unix_path(values[key])
        values["log_level"] = klog.parse_level(values.get("log_level", "warn"))
    except ValueError:
        return None
    from kata_proxy.proxy import Options

    return Options(**values)


def _plain_values(argv: list[str]) -> dict | None:
    """{Options field: value} of a line of PLAIN_FLAGS only, each once; else None."""
    values: dict = {}
    i = 0
    while i < len(argv):
        name, eq, value = argv[i].partition("=")
        key = PLAIN_FLAGS.get(name)
        if key is None or key in values:
            return None
        if not eq:
            i += 1
            if i >= len(argv) or argv[i].startswith("-"):
                return None
            value = argv[i]
        values[key] = value
        i += 1
    return values


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


@functools.cache
def _command():
    """The click command (click is imported here: only a line :func:`parse_plain` refuses needs it)."""
    import click

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

    return command


def parse(argv: list[str]):
    """Options for ``argv``, or an int exit code (``--version``, ``--help``).

    Raises click.ClickException for usage errors and ProxyExit for bad LISTEN_* variables.
    """
    import click

    try:
        args = normalise_argv(list(argv))
    except FlagError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        result = _command().main(args=args, prog_name="kata-proxy", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    if isinstance(result, _Result):
        return result.code if result.opts is None else result.opts
    return exits.OK if result is None else int(result)  # --help returns 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parse_reporting(argv: list[str]):
    """:func:`parse`, its errors reported (one line on stderr) as their exit code."""
    import click

    try:
        return parse(argv)
    except click.ClickException as exc:
        sys.stderr.write(f"kata-proxy: error: {_one_line(exc.format_message())}\n")
        return exits.USAGE
    except exits.ProxyExit as exc:
        sys.stderr.write(f"kata-proxy: error: {exc.message}\n")
        return exc.code
    except click.Abort:
        return exits.USAGE


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from yamux import tune_malloc

    tune_malloc()  # the console script enters here, not through __main__ (YAMUX_MALLOC_TUNING=0 skips it)
    gc.disable()  # while importing (many objects, no garbage): on again before the proxy runs
    try:
        parsed = parse_plain(argv)
        if parsed is None:
            parsed = _parse_reporting(argv)
        if isinstance(parsed, int):
            return parsed
        from kata_proxy.proxy import run
    finally:
        gc.enable()
    return run(parsed)


if __name__ == "__main__":
    sys.exit(main())
