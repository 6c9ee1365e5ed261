"""Child processes of the tests and benchmarks: how our components are run, their environment,
their ready lines, bounded waits, and /proc lookups. Only processes started here are signalled
(by pid); nothing is found or killed by name.

    argv = [*command("kata-shim"), "--agent", ...]   # the venv's script, else python -m kata_shim
    popen = subprocess.Popen(argv, stdout=PIPE, env=child_env())
    wait_line(popen, "READY", 30)                     # select()-bounded
    proc = Proc(popen, "peer"); proc.stop()           # SIGTERM, then SIGKILL
    wait_for(lambda: os.path.exists(path), 10, "the socket")
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: console script -> module of each component (kata_runtime.procs.component_command decides).
_MODULES = {"kata-proxy": "kata_proxy", "kata-shim": "kata_shim", "kata-runtime": "kata_runtime",
            "kata-agent": "kata_agent"}


def python_prints(code: str, *, stdin: str | None = None) -> str:
    """What a fresh interpreter (this one's, in the repository) prints running ``code``, stripped:
    how the tests see which modules a start path imports. CalledProcessError if it fails."""
    return subprocess.run([sys.executable, "-c", code], input=stdin, capture_output=True, text=True,
                          cwd=str(REPO), check=True).stdout.strip()


def command(script: str) -> list[str]:
    """How a kata-py component is run: the ``script`` installed beside this interpreter (the
    venv's bin/), else ``python -m <module>`` (the runtime's own rule)."""
    from kata_runtime.procs import component_command

    return component_command("", script, _MODULES[script])


def runs_kata_agent(command_line: str) -> bool:
    """Whether a command line (its arguments joined) runs kata-agent: the kata-agent script
    (``python -S .../kata-agent``: the process sandbox's default) or ``python -m kata_agent``."""
    return "/kata-agent " in command_line + " " or " kata_agent " in f" {command_line} "


def child_env(extra: dict | None = None) -> dict:
    """Our environment for a child: the repository first on PYTHONPATH, no systemd hand-over
    variables (NOTIFY_SOCKET, LISTEN_*) of our own caller; then ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for key in ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        env.pop(key, None)
    if extra:
        env.update(extra)
    return env


def wait_for(predicate, timeout: float = 30, what: str = "condition"):
    """Call ``predicate()`` every 50 ms until it returns something true, and return that;
    AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


def wait_line(proc: subprocess.Popen, want: str, timeout: float) -> str:
    """Read proc.stdout until a line equal to ``want``; returns everything read.  Raises
    TimeoutError after ``timeout`` seconds, RuntimeError when the process exits first."""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while True:
        lines = buf.decode(errors="replace").splitlines()
        if want in lines:
            return buf.decode(errors="replace")
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {want!r} line within {timeout}s; got {buf!r}")
        ready, _, _ = select.select([fd], [], [], min(left, 0.2))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                code = proc.wait(timeout=5)
                raise RuntimeError(f"process exited with {code} before {want!r}; got {buf!r}")
            buf += chunk


class Proc:
    """A child we started: signalled only while it runs, by its pid."""

    def __init__(self, popen: subprocess.Popen, name: str):
        self.popen = popen
        self.name = name

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            self.popen.send_signal(signum)

    def wait(self, timeout: float = 10.0) -> int:
        return self.popen.wait(timeout=timeout)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; only this process, by its pid."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=timeout)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        return self.popen.returncode


def dump(path: str, title: str) -> None:
    """Print the end of a log file (at a fixture's teardown: a failing test shows it)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return
    sys.stdout.write(f"\n----- {title} ({path}) -----\n{text[-20000:]}\n")


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes other than this one whose command line contains
    ``text`` (zombies have none)."""
    found = []
    needle = os.fsencode(text)
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if needle in cmdline and int(name) != os.getpid():
            found.append((int(name), cmdline.replace(b"\0", b" ").decode(errors="replace")))
    return found


def kill_pid(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal ``pid`` (one the test started or was told about); gone already is fine."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
