"""kata-shim: relays one container process (stdio, signals, tty size, exit status).

    kata-shim --agent unix:///run/vc/sbs/ID/proxy.sock --container ID --exec-id ID
              [--terminal] [--no-proxy-exit-code] [--log LEVEL] [--log-format text|json]

The Go single-dash spellings of the original (``-agent``, ``-exec-id``,
``-proxy-exit-code=false``, ``-log``, ``-debug``, ``-version``) work too; see
kata_shim/flags.py.  The reaper (containerd-shim) treats this process as the
container process: it writes its stdin, reads its stdout/stderr, signals it and
waits for its exit status.  The shim makes that true for a process that lives
in the guest, over the agent API behind kata-proxy (plain gRPC on a unix socket).

Exit status: the process's own (128+N when signal N killed it; 0 with
--no-proxy-exit-code); 2 for bad flags; **222** when the connection to the
agent (proxy) is lost and not back within --reconnect-timeout (default 5 s), when
an output stream ends with an error other than EOF (output may be lost), or when
the agent refuses to relay the process.  A failure prints exactly one line
``kata-shim: ...`` on stderr.  See kata_shim/README.md.

Start-up imports only the standard library and this package (no grpcio, no
protobuf runtime): the shim speaks gRPC through a small HTTP/2 client (kata_grpc:
h2.py, hpack.py, client.py; its messages in pb.py); README.md has the measurements
behind that choice.
"""

import sys

VERSION = "0.1.0"


def main(argv=None) -> int:
    from kata_shim import exits, flags

    try:
        opts = flags.parse(sys.argv[1:] if argv is None else argv)
    except flags.UsageError as e:
        sys.stderr.write(f"kata-shim: {e} (see kata-shim --help)\n")
        return exits.USAGE
    if opts.help:
        sys.stdout.write(flags.USAGE)
        return exits.OK
    if opts.version:
        sys.stdout.write(f"kata-shim version {VERSION} (kata-py)\n")
        return exits.OK

    from kata_shim import shim  # imports signal, socket, termios: only when relaying

    waited = shim.block_signals()  # first: a SIGTERM from now on is forwarded, not fatal
    from kata_shim.log import Logger
    try:
        log = Logger(opts.log_level, opts.log_format, file=opts.log_file,
                     container=opts.container, exec_id=opts.exec_id)
    except OSError as e:
        sys.stderr.write(f"kata-shim: cannot open log file {opts.log_file}: {e.strerror}\n")
        return exits.USAGE
    log.debug("starting", agent=opts.agent, terminal=opts.terminal,
              proxy_exit_code=opts.proxy_exit_code)
    shim.Relay(opts, log).run(waited)  # never returns: the relay ends with os._exit
    return exits.SHIM_FAILURE


if __name__ == "__main__":
    sys.exit(main())
