"""Command line of kata-shim: the original Go single-dash flags and GNU-style long flags.

Accepted spellings (every flag takes one or two dashes)::

    -agent unix:///run/vc/sbs/ID/proxy.sock    --agent=unix:///...
    -container ID       -exec-id ID            (both required)
    -terminal           --terminal=false       --no-terminal
    -proxy-exit-code=false                     --no-proxy-exit-code   (default: on)
    -log debug          --log-format json      -debug (= --log debug)
    -version            -h / --help

Boolean flags never consume the next argument (as in Go): ``-terminal false``
is an error, ``-terminal=false`` is not.  ``-trace`` and ``-agent-logs-socket``
of the original are accepted and ignored.  Extensions of ours: ``--log-format``,
``--log-file PATH`` and ``--reconnect-timeout SECONDS``.
"""

from __future__ import annotations

DEFAULT_RECONNECT_TIMEOUT = 5.0

LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "fatal", "panic")
LOG_FORMATS = ("text", "json")

USAGE = """\
usage: kata-shim --agent unix:///PATH/proxy.sock --container ID --exec-id ID [options]

Relays one process of a Kata container: stdin -> WriteStdin, ReadStdout/ReadStderr ->
fd 1/2, signals -> SignalProcess, SIGWINCH -> TtyWinResize, exit status <- WaitProcess.
Flags take one or two dashes (-agent or --agent).

  --agent ADDR            agent (proxy) address: unix:///path, unix:path or /path
  --container ID          container id
  --exec-id ID            process id within the container (the container id for its init)
  --terminal              the process has a terminal: raw mode, window size relayed
  --proxy-exit-code       exit with the process's status (default); --no-proxy-exit-code
                          or -proxy-exit-code=false: exit 0 once the process is done
  --log LEVEL             trace, debug, info, warn (default), error, fatal, panic
  --log-format FORMAT     text (logfmt, default) or json
  --log-file PATH         append log lines here (default: syslog when /dev/log exists)
  --reconnect-timeout S   how long to retry a lost agent connection (default 5)
  --debug                 same as --log debug
  --version               print the version and exit

Exit status: the process's (128+N when it died of signal N); 2 bad flags;
222 the agent (proxy) connection was lost, or an output stream ended without EOF
    (output may be lost), or the agent refused to relay the process.
"""


class UsageError(Exception):
    """Bad command line; the message is one line."""


class Options:
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

_TRUE = ("1", "t", "T", "true", "TRUE", "True")
_FALSE = ("0", "f", "F", "false", "FALSE", "False")


def _parse_bool(name: str, text: str) -> bool:
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise UsageError(f"invalid boolean value {text!r} for flag -{name}")


def socket_path(agent: str) -> str:
    """The unix socket path of an --agent address (unix:///p, unix://p, unix:p or /p)."""
    if agent.startswith("unix://"):
        path = agent[len("unix://"):]
    elif agent.startswith("unix:"):
        path = agent[len("unix:"):]
    elif agent.startswith("/"):
        path = agent
    else:
        scheme = agent.split(":", 1)[0] if ":" in agent else ""
        what = f"scheme {scheme!r}" if scheme else "address"
        raise UsageError(f"unsupported agent {what} in {agent!r} (want unix:///path/to/proxy.sock)")
    if not path:
        raise UsageError(f"agent address {agent!r} has no socket path")
    return path


def parse(argv) -> Options:
    """Parse ``argv`` (without the program name).  Raises UsageError."""
    opts = Options()
    debug = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        i += 1
        if arg == "--":
            if i < len(args):
                raise UsageError(f"unexpected argument {args[i]!r}")
            break
        if not arg.startswith("-") or arg == "-":
            raise UsageError(f"unexpected argument {arg!r}")
        body = arg[2:] if arg.startswith("--") else arg[1:]
        if body.startswith("-") or not body:
            raise UsageError(f"bad flag syntax: {arg}")
        name, eq, value = body.partition("=")
        negated = False
        if name not in _FLAGS and name.startswith("no-") and _FLAGS.get(name[3:], ("", ""))[1] == "bool":
            if eq:
                raise UsageError(f"flag -{name} takes no value")
            name, negated = name[3:], True
        spec = _FLAGS.get(name)
        if spec is None:
            raise UsageError(f"flag provided but not defined: -{name}")
        attr, kind = spec
        if kind == "bool":
            flag = False if negated else (_parse_bool(name, value) if eq else True)
            if attr is None:
                debug = flag
            else:
                setattr(opts, attr, flag)
            continue
        if not eq:
            if i >= len(args):
                raise UsageError(f"flag needs an argument: -{name}")
            value = args[i]
            i += 1
        setattr(opts, attr, value)

    if opts.help or opts.version:
        return opts
    if debug:
        opts.log_level = "debug"
    opts.log_level = opts.log_level.lower()
    if opts.log_level not in LOG_LEVELS:
        raise UsageError(f"unknown log level {opts.log_level!r} (one of: {', '.join(LOG_LEVELS)})")
    if opts.log_format not in LOG_FORMATS:
        raise UsageError(f"unknown log format {opts.log_format!r} (text or json)")
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
