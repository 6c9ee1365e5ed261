"""Terminal handling of kata-shim: raw mode for --terminal and the window size."""

from __future__ import annotations

import termios


def make_raw(fd: int):
    """Put the terminal ``fd`` into raw mode (as cfmakeraw(3)); returns the old attributes."""
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
    # TCSANOW, not TCSADRAIN: a terminal nobody reads must not hold up the exit.
    termios.tcsetattr(fd, termios.TCSANOW, attrs)


def window_size(fds=(0, 1)):
    """(rows, columns) of the first terminal among ``fds``, or None."""
    for fd in fds:
        try:
            rows, columns = termios.tcgetwinsize(fd)
        except (OSError, AttributeError):
            continue
        return rows, columns
    return None
