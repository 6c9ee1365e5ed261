"""Terminal handling of kata-shim: raw mode for --terminal and the window size.

termios calls fail with ``termios.error`` (not an OSError): ENOTTY when the fd is a
pipe or /dev/null, EIO once the terminal has hung up.  :data:`ERRORS` names both, for
callers that must carry on whatever state the terminal is in.
"""

from __future__ import annotations

import termios

ERRORS = (termios.error, OSError)


def make_raw(fd: int):
    """Put the terminal ``fd`` into raw mode (as cfmakeraw(3)); returns the old attributes.

    Raises one of :data:`ERRORS` when ``fd`` is not a usable terminal.
    """
    old = termios.tcgetattr(fd)
    new = list(old)
    new[6] = list(old[6])
    new[0] &= ~(termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
                | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON)
    new[1] &= ~termios.OPOST
    new[2] &= ~(termios.CSIZE | termios.PARENB)
    new[2] |= termios.CS8
    new[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    new[6][termios.VMIN] = 1
    new[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, new)
    return old


def restore(fd: int, attrs) -> None:
    """Put back ``attrs`` (from make_raw).  Raises one of :data:`ERRORS` (e.g. hung up)."""
    # TCSANOW, not TCSADRAIN: a terminal nobody reads must not hold up the exit.
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def window_size(fds=(0, 1, 2)):
    """(rows, columns) of the first terminal among ``fds``, or None when none is one.

    Never raises: a pipe, /dev/null, a closed fd or a hung-up terminal is skipped.
    """
    for fd in fds:
        try:
            rows, columns = termios.tcgetwinsize(fd)
        except (*ERRORS, AttributeError):
            continue
        return rows, columns
    return None
