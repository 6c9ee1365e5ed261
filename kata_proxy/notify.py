"""Readiness notification: sd_notify(3) when NOTIFY_SOCKET is set, else one line on stdout.

The stdout line is exactly ``READY=1`` (the same words as sd_notify), written once when the
client socket is listening and the yamux session to the guest is up.
"""

from __future__ import annotations

import os
import socket
import sys

READY_LINE = "READY=1"


def _notify_address(value: str):
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def sd_notify(state: str, env=None) -> bool:
    """Send ``state`` to $NOTIFY_SOCKET; False when unset or unsupported (never raises)."""
    env = os.environ if env is None else env
    target = env.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = _notify_address(target)
    if address is None:  # vsock: and other forms are not needed here
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(state.encode(), address)
        return True
    except OSError:
        return False


def ready(status: str = "") -> str:
    """Tell whoever started us that we are ready; returns how ("systemd" or "stdout")."""
    message = "READY=1\nMAINPID=%d" % os.getpid()
    if status:
        message += "\nSTATUS=" + status.replace("\n", " ")
    if os.environ.get("NOTIFY_SOCKET"):
        if sd_notify(message):
            return "systemd"
    try:
        sys.stdout.write(READY_LINE + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    return "stdout"


def stopping() -> None:
    if os.environ.get("NOTIFY_SOCKET"):
        sd_notify("STOPPING=1")
