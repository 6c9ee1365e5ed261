"""Exit codes of kata-proxy (also listed in kata_proxy/README.md and proxy.py).

| code | name             | when |
|------|------------------|------|
| 0    | OK               | SIGTERM/SIGINT: Go Away sent, clients closed, socket removed; also --version, --help |
| 1    | INTERNAL         | an unexpected exception (a bug): logged with its type |
| 2    | USAGE            | bad or conflicting flags, or the --log file cannot be opened (one line on stderr, nothing created) |
| 3    | LISTEN           | the client socket could not be set up: missing or unwritable parent directory, path in use or not a socket, bad systemd LISTEN_FDS |
| 4    | CHANNEL_OPEN     | the guest channel could not be opened: mux socket not connectable within --channel-timeout, device missing, unreadable or not pollable |
| 5    | CHANNEL_CLOSED   | the guest channel closed or failed while running (VM gone): clients saw EOF |
| 6    | PROTOCOL         | the guest sent bytes that are not yamux (or broke the protocol): Go Away sent, session closed |
"""

OK = 0
INTERNAL = 1
USAGE = 2
LISTEN = 3
CHANNEL_OPEN = 4
CHANNEL_CLOSED = 5
PROTOCOL = 6

NAMES = {
    OK: "ok",
    INTERNAL: "internal error",
    USAGE: "usage error",
    LISTEN: "cannot listen for clients",
    CHANNEL_OPEN: "cannot open the guest channel",
    CHANNEL_CLOSED: "guest channel closed",
    PROTOCOL: "protocol error from the guest",
}


class ProxyExit(Exception):
    """A failure that ends the proxy with ``code`` and the one-line ``message``."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
