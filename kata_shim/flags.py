"""Command line of kata-shim: the original Go single-dash flags and GNU-style long flags.

Accepted spellings (every flag takes one or two dashes)::

    -agent unix:///run/vc/sbs/ID/proxy.sock    --agent=unix:///...
    -container ID       -exec-id ID            (both required)
    -terminal           --terminal=false       --no-terminal
    -proxy-exit-code=false                     --no-proxy-exit-code   (default: on)
    -log debug          --log-format json      -debug (= --log debug)
    -version            -h / --help

The syntax is Go's flag package's, read by :class:`kata_log.flags.GoFlags` as kata-proxy
reads its own: boolean flags never consume the next argument (``-terminal false`` is an
error, ``-terminal=false`` is not).  ``--no-NAME`` (GNU) is ours.  ``-trace`` and
``-agent-logs-socket`` of the original are accepted and ignored.  Extensions of ours:
``--log-format``, ``--log-file PATH`` and ``--reconnect-timeout SECONDS``.  Level and format
names are kata_log's; the agent address is read as the Go shim reads it (url.Parse: see
:func:`kata_log.flags.unix_socket_path`, relative paths included).
"""

from __future__ import annotations

from kata_log import parse_format, parse_level
from kata_log.flags import FlagError, GoFlags, parse_bool, unix_socket_path

DEFAULT_RECONNECT_TIMEOUT = 5.0

USAGE = """\
usage: kata-shim --agent unix:///PATH/proxy.sock --container ID --exec-id ID [options]

Relays one process of a Kata container: stdin -> WriteStdin, ReadStdout/ReadStderr ->
fd 1/2, signals -> SignalProcess, SIGWINCH -> TtyWinResize, exit status <- WaitProcess.
Flags take one or two dashes (-agent or --agent).

  --agent ADDR            agent (proxy) address: unix:///path, unix://relative/path or a path
  --container ID          container id
  --exec-id ID            process id within the container (the container id for its init)
  --terminal              the process has a terminal: raw mode, window size relayed
  --proxy-exit-code       exit with the process's status (default); --no-proxy-exit-code
                          or -proxy-exit-code=false: exit 0 once the process is done
  --log LEVEL             trace, debug, info, warn (default), error, fatal, panic
  --log-format FORMAT     text (logfmt, default; also: logfmt) or json
  --log-file PATH         append log lines here (default: syslog when /dev/log exists)
  --reconnect-timeout S   how long to retry a lost agent connection (default 5)
  --debug                 same as --log debug
  --version               print the version and exit

Exit status: the process's (128+N when it died of signal N); 2 bad flags;
222 the agent (proxy) connection was lost, or an output stream ended without EOF
    (output may be lost), or the agent refused to relay the process.
"""


#: A bad command line; the message is one line (kata_log's FlagError).
UsageError = FlagError


class Options:
    """The parsed command line: one attribute a flag (``socket_path`` is ``agent``'s path)."""

    __slots__ = (
        "agent", "socket_path", "container", "exec_id", "terminal", "proxy_exit_code",
        "log_level", "log_format", "log_file", "reconnect_timeout", "version", "help",
        "trace", "agent_logs_socket",
    )

    def __init__(self) -> None:
        self.agent = ""
        self.socket_path = ""
        self.container = ""
        self.exec_id = ""
        self.terminal = False
        self.proxy_exit_code = True
        self.log_level = "warn"
        self.log_format = "text"
        self.log_file = ""
        self.reconnect_timeout = DEFAULT_RECONNECT_TIMEOUT
        self.version = False
        self.help = False
        self.trace = False
        self.agent_logs_socket = ""

    def __repr__(self) -> str:
        return "Options(%s)" % ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)


# name -> (attribute, kind); kind "bool" or "str"
_FLAGS = {
    "agent": ("agent", "str"),
    "container": ("container", "str"),
    "exec-id": ("exec_id", "str"),
    "terminal": ("terminal", "bool"),
    "proxy-exit-code": ("proxy_exit_code", "bool"),
    "log": ("log_level", "str"),
    "log-format": ("log_format", "str"),
    "log-file": ("log_file", "str"),
    "reconnect-timeout": ("reconnect_timeout", "str"),
    "debug": (None, "bool"),
    "trace": ("trace", "bool"),
    "agent-logs-socket": ("agent_logs_socket", "str"),
    "version": ("version", "bool"),
    "help": ("help", "bool"),
    "h": ("help", "bool"),
}


def socket_path(agent: str) -> str:
    """The unix socket path of an --agent address (:func:`kata_log.flags.unix_socket_path`).

    Raises UsageError for another scheme or an address naming no path."""
    return unix_socket_path(agent, "agent")


def _takes_value(name: str) -> bool:
    return _FLAGS.get(name, ("", ""))[1] == "str"


def _flag(name: str, value: str | None) -> tuple[str | None, bool | str]:
    """(Options attribute, or None for -debug; its value) of one flag as GoFlags read it.

    ``--no-NAME`` is ``-NAME=false`` for a boolean flag.  Raises UsageError."""
    negated = False
    if name not in _FLAGS and name.startswith("no-") and _FLAGS.get(name[3:], ("", ""))[1] == "bool":
        if value is not None:
            raise UsageError(f"flag -{name} takes no value")
        name, negated = name[3:], True
    spec = _FLAGS.get(name)
    if spec is None:
        raise UsageError(f"flag provided but not defined: -{name}")
    attr, kind = spec
    if kind == "bool":
        return attr, not negated and (value is None or parse_bool(name, value))
    return attr, value


def parse(argv) -> Options:
    """Parse ``argv`` (without the program name).  Raises UsageError."""
    opts = Options()
    debug = False
    scan = GoFlags(argv, _takes_value)
    for flag in scan:
        attr, value = _flag(flag.name, flag.value)
        if attr is None:
            debug = value
        else:
            setattr(opts, attr, value)
    if scan.rest:
        raise UsageError(f"unexpected argument {scan.rest[0]!r}")

    if opts.help or opts.version:
        return opts
    if debug:
        opts.log_level = "debug"
    opts.log_level = opts.log_level.strip().lower()
    try:
        parse_level(opts.log_level)
        parse_format(opts.log_format)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if isinstance(opts.reconnect_timeout, str):
        try:
            opts.reconnect_timeout = float(opts.reconnect_timeout)
        except ValueError:
            raise UsageError(f"invalid --reconnect-timeout {opts.reconnect_timeout!r} (seconds)") from None
    if not opts.reconnect_timeout >= 0:  # also rejects nan
        raise UsageError("--reconnect-timeout must be >= 0")
    for flag, attr in (("agent", "agent"), ("container", "container"), ("exec-id", "exec_id")):
        if not getattr(opts, attr):
            raise UsageError(f"missing required flag -{flag}")
    opts.socket_path = socket_path(opts.agent)
    return opts
