"""Process tier: an exec whose process leaves a background child still ends (issue 11, item 2).

    test <-pipes/pty-> kata-shim -> kata-proxy (yamux) -> kata-agent (process sandbox) -> runc

The shim drains stdout and stderr to EOF and only then calls WaitProcess, so it can end only
if the agent answers EOF once the process has exited, whoever else still holds the writing
end of its pipe or terminal (here a `sleep 300` the process started in the background).
"""

from __future__ import annotations

import os
import select
import subprocess
import time

import pytest

pytestmark = [pytest.mark.sandbox, pytest.mark.timeout(120)]

ENDS_WITHIN = 10.0  # seconds; the shim should end within a second or two


def read_pty_until_closed(master: int, shim: subprocess.Popen, timeout: float) -> bytes:
    """What the shim writes to its terminal until it exits (then what is left)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while shim.poll() is None and time.monotonic() < deadline:
        if select.select([master], [], [], 0.1)[0]:
            try:
                out += os.read(master, 65536)
            except OSError:  # EIO: no slave left open
                break
    while select.select([master], [], [], 0)[0]:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
    return bytes(out)


async def test_exec_leaving_a_background_child_ends(agent):
    agent.run("bg", ["sleep", "300"])
    agent.exec("bg", "x1", ["sh", "-c", "sleep 300 & echo started"])
    shim = agent.shim("bg", "x1")
    try:
        out, err = shim.communicate(timeout=ENDS_WITHIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the exec's shim did not end within {ENDS_WITHIN}s")
    assert (shim.returncode, out, err) == (0, b"started\n", b"")


async def test_tty_exec_of_a_shell_leaving_a_background_job_ends(agent):
    master, slave = os.openpty()
    try:
        agent.run("bgtty", ["sleep", "300"])
        agent.exec("bgtty", "x1", ["sh", "-i"], terminal=True)
        shim = agent.shim("bgtty", "x1", "--terminal", stdin=slave, stdout=slave, stderr=slave)
        # Typed ahead: the container's terminal queues the lines until sh reads them.
        os.write(master, b"sleep 300 &\recho job-$((6*7))\rexit\r")
        out = read_pty_until_closed(master, shim, ENDS_WITHIN)
        if shim.poll() is None:
            pytest.fail(f"the tty exec's shim did not end within {ENDS_WITHIN}s; it printed {out!r}")
        assert shim.returncode == 0, out
        assert b"job-42" in out
    finally:
        os.close(master)
        os.close(slave)
