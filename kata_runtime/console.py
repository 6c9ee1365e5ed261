"""Terminals: a host pty for a container process, its master sent to ``--console-socket``.

As runc: the caller listens on a unix stream socket; the runtime connects and sends ONE
message whose data is the pty's name (``/dev/pts/N``) and whose SCM_RIGHTS control
message carries the master fd (runc's utils.SendFd). The caller then reads and writes the
container's terminal through that master; the slave is the shim's stdio and controlling
terminal. The size from the spec's ``process.consoleSize`` is set on the pty before the
shim starts (the shim relays its terminal's size to the agent at once, and runc in the
guest applies consoleSize to the container's own pty), so the process sees it from its
first instruction.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import termios

from kata_runtime.errors import KataError

#: sun_path holds 108 bytes including the NUL.
UNIX_PATH_MAX = 107


class ConsoleError(KataError):
    """The pty or the console socket failed; the message names the socket."""


def open_pty(size: tuple[int, int] | None = None) -> tuple[int, int, str]:
    """A new pty: (master fd, slave fd, slave name). ``size``: (rows, columns) to set on it."""
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    name = os.ttyname(slave)
    if size and size[0] and size[1]:
        set_size(slave, *size)
    return master, slave, name


def set_size(fd: int, rows: int, columns: int) -> None:
    """TIOCSWINSZ on a terminal fd."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def console_size(process: dict) -> tuple[int, int] | None:
    """(rows, columns) from an OCI process's ``consoleSize`` ({"height", "width"}), if set."""
    size = process.get("consoleSize") or {}
    rows, columns = size.get("height") or 0, size.get("width") or 0
    return (int(rows), int(columns)) if rows and columns else None


def check_socket_path(path: str) -> None:
    """A console socket path must fit a unix socket address."""
    if len(os.fsencode(path)) > UNIX_PATH_MAX:
        raise ConsoleError(f"console socket path is too long ({len(path)} > {UNIX_PATH_MAX} bytes): {path}")


def send_master(socket_path: str, master: int, name: str) -> None:
    """Connect to ``socket_path`` and send the pty master with its name (runc's SendFd)."""
    check_socket_path(socket_path)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(socket_path)
            socket.send_fds(sock, [os.fsencode(name)], [master])
    except OSError as e:
        raise ConsoleError(f"console socket {socket_path}: {e.strerror or e}") from None
