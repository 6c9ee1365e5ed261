"""kata-shim's relay: threads, signals, terminal and exit.

Threads (each with its own agent connection, see client.py):

* ``stdout`` / ``stderr``: ReadStdout / ReadStderr -> fd 1 / fd 2 (no stderr
  pump with --terminal: a terminal has one output stream);
* ``stdin``: fd 0 -> WriteStdin, EOF -> CloseStdin;
* ``wait``: waits until both output pumps have reached EOF, THEN calls
  WaitProcess and exits with the process's status.  This order is the Kata 1.x
  contract (research/kata1x.md, "Order at exit"): the original agent's
  WaitProcess closes the process's pipes and forgets it once it returns, so a
  shim that waits while still reading loses the tail (kata agent#125).  It
  holds for init and exec'd processes alike;
* the main thread: every forwarded signal is blocked in all threads and taken
  synchronously with sigwaitinfo(): SIGWINCH -> TtyWinResize, anything else ->
  SignalProcess.  SIGCHLD and SIGPIPE are not forwarded (SIGPIPE stays ignored:
  a closed reader shows up as EPIPE on write), nor, of course, SIGKILL/SIGSTOP:
  the process of a shim killed before it relayed the process's end is killed by
  the shim's sentinel (sentinel.py: a shell spawned by run() before any thread
  starts), told "done" and reaped by exit().

An output stream ends only with EOF (:func:`is_eof`).  Any other error of a
read is a :class:`Failure`: output may be lost, so the shim says so on stderr
and exits with exits.SHIM_FAILURE, never with the process's status.

Exit goes through :meth:`Relay.exit` from whichever thread decides it: the
terminal is restored, a failure prints one ``kata-shim: ...`` line on stderr,
and the process ends with os._exit (the pump threads may be blocked in reads).
exit() never raises and never returns, and a watchdog ends the process after
EXIT_GRACE_S even if restoring the terminal or writing the line blocks.
"""

from __future__ import annotations

import _signal  # signal's C module: the signal module's Python layer imports enum (~3 ms of every shim's start)
import _thread
import os
import time

from kata_grpc import h2
from kata_grpc.h2 import RpcError
from kata_shim import exits, pumps, sentinel, tty
from kata_shim.client import RECV_SIZE, SMALL_RECV_SIZE, AgentClient, AgentLost

# How much one ReadStdout/ReadStderr asks for (the agent answers with what it has, up to
# this), and the most one WriteStdin carries.  Each pump holds at most one such chunk.
READ_CHUNK = 1 << 20
STDIN_CHUNK = 1 << 20
# Pipes on fds 0, 1 and 2 are grown to this (F_SETPIPE_SZ): one WriteStdin round trip
# then carries up to 1 MiB instead of the 64 KiB a pipe holds by default, and a reply is
# written with one wake-up of the reader instead of sixteen.  Still a bound, in the kernel.
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031

# The longest the exit path may take once decided (restoring the terminal, the failure line,
# the log): then the process ends anyway, with the status already chosen.
EXIT_GRACE_S = 2.0

NOT_FORWARDED = frozenset((_signal.SIGKILL, _signal.SIGSTOP, _signal.SIGCHLD, _signal.SIGPIPE,
                           _signal.SIGWINCH))


def forwarded_signals() -> set:
    """Every catchable signal except SIGCHLD, SIGPIPE and SIGWINCH."""
    return {s for s in _signal.valid_signals() if s not in NOT_FORWARDED}


def block_signals() -> set:
    """Block what the shim forwards (and SIGWINCH) in this thread and all later ones."""
    waited = forwarded_signals() | {_signal.SIGWINCH}
    _signal.pthread_sigmask(_signal.SIG_BLOCK, waited)
    return waited


def is_eof(error: RpcError) -> bool:
    """EOF of ReadStdout/ReadStderr: OUT_OF_RANGE (ours: "EOF"), or UNKNOWN "EOF" exactly (a
    Go agent's bare io.EOF).  Nothing else: "unexpected EOF", "file already closed" and
    NOT_FOUND are failures."""
    return error.code == h2.OUT_OF_RANGE or (error.code == h2.UNKNOWN and error.message == "EOF")


class Failure(Exception):
    """The shim must end with exits.SHIM_FAILURE; ``str()`` is the line for stderr."""


class Relay:
    """One relayed process: ``opts`` (kata_shim.flags.Options), ``log`` (kata_shim.log.Logger).

    run() starts the process's sentinel (sentinel.py) before any thread; exit() tells it "done".
    """

    def __init__(self, opts, log) -> None:
        self.opts = opts
        self.log = log
        self.sentinel: sentinel.Sentinel | None = None
        self._exit_lock = _thread.allocate_lock()
        self._tty_saved = None
        self._output_done: list = []
        self.progress = [0]

    def client(self, name: str) -> AgentClient:
        return AgentClient(self.opts.socket_path, self.opts.container, self.opts.exec_id,
                           reconnect_timeout=self.opts.reconnect_timeout, log=self.log, name=name,
                           recv_size=RECV_SIZE if name in ("stdout", "stderr") else SMALL_RECV_SIZE)

    # ------------------------------------------------------------------ exit

    def exit(self, status: int, message: str | None = None, *, process_done: bool = False) -> None:
        """Restore the terminal, print ``message`` (a failure), exit with ``status``.

        ``process_done``: the relay ended because the process did (its output drained, its
        status waited for); the sentinel is told so and reaped.  Any other end (the shim gives
        up: output lost, the agent gone, a bug) leaves the sentinel armed: once the shim is
        gone it kills the process, which nobody relays any more (the reaper has its status
        from us; an exec would otherwise live on unseen).

        The first caller wins; later callers block until the process ends.  Never raises,
        never returns, and ends the process within EXIT_GRACE_S whatever the terminal or
        stderr do (a hung-up terminal fails tcsetattr with termios.error, not OSError; a
        stderr nobody reads blocks the write).
        """
        self._exit_lock.acquire()  # never released
        watcher = self.sentinel if process_done else None
        try:
            _thread.start_new_thread(self._exit_after_grace, (status,))
            if watcher is not None:
                watcher.done()
            self._restore_terminal()
            if message:
                self._say(message)
            if watcher is not None:
                watcher.reap()
        finally:
            os._exit(status)

    @staticmethod
    def _exit_after_grace(status: int) -> None:
        time.sleep(EXIT_GRACE_S)
        os._exit(status)

    def _restore_terminal(self) -> None:
        if self._tty_saved is None:
            return
        try:
            tty.restore(0, self._tty_saved)
        except Exception as e:  # termios.error (hung up, no longer a tty) or OSError
            self.log.debug("terminal not restored", error=str(e))

    def _say(self, message: str) -> None:
        """The failure line: in the log and, as ``kata-shim: ...``, on stderr."""
        try:
            self.log.error(message)
        except Exception:
            pass
        try:
            os.write(2, f"kata-shim: {message}\n".encode("utf-8", "replace"))
        except OSError:
            pass

    def where(self) -> str:
        """``process E (container C)``, for messages."""
        return f"process {self.opts.exec_id} (container {self.opts.container})"

    def lost(self, error: AgentLost) -> None:
        self.exit(exits.SHIM_FAILURE,
                  f"lost the connection to the agent at {self.opts.agent} "
                  f"(container {self.opts.container}, exec {self.opts.exec_id}): {error}; "
                  f"gave up after retrying for {self.opts.reconnect_timeout:g}s")

    def _thread(self, name: str, fn, done=None) -> None:
        def body():
            try:
                fn()
            except Failure as e:
                self.exit(exits.SHIM_FAILURE, str(e))
            except AgentLost as e:
                self.lost(e)
            except BaseException as e:  # a bug: say so, do not hang
                self.exit(exits.SHIM_FAILURE, f"internal error in the {name} pump: {type(e).__name__}: {e}")
            finally:
                if done is not None:
                    done.release()
        _thread.start_new_thread(body, ())

    # ----------------------------------------------------------------- pumps

    def _output(self, name: str, fd: int) -> None:
        """Relay ``name`` (stdout/stderr) to ``fd`` until EOF.  Raises Failure on any other end."""
        client = self.client(name)
        self._grow_pipe(fd)
        call = client.read_stdout if fd == 1 else client.read_stderr
        relayed = [0]

        def read(n):
            try:
                data = call(n)
            except RpcError as e:
                if is_eof(e):
                    self.log.debug("output stream reached EOF", stream=name)
                    return None
                raise Failure(f"{name} of {self.where()} ended with an error, not EOF, after "
                              f"{relayed[0]} bytes: {e}; the rest of its {name}, if any, is lost") from None
            relayed[0] += len(data)
            return data

        total = pumps.pump_output(read, fd, READ_CHUNK, log=self.log, name=name, progress=self.progress)
        client.close()
        self.log.debug("output pump done", stream=name, bytes=total)

    def _grow_pipe(self, fd: int) -> None:
        try:
            import stat
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                import fcntl
                fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError as e:  # over /proc/sys/fs/pipe-max-size, or no such fd: keep the pipe as is
            self.log.debug("pipe not resized", fd=fd, error=e.strerror or str(e))

    def _stdin(self) -> None:
        client = self.client("stdin")
        self._grow_pipe(0)
        try:
            total = pumps.pump_stdin(0, client.write_stdin_into, client.close_stdin, STDIN_CHUNK,
                                     headroom=client.stdin_headroom, log=self.log)
            self.log.debug("stdin closed", bytes=total)
        except RpcError as e:
            # The process closed or no longer reads its stdin: stop reading ours,
            # so whoever writes to it sees the same back-pressure a real process gives.
            self.log.info("stdin relay stopped", error=str(e))
        client.close()

    def _wait(self) -> None:
        """Once stdout and stderr are at EOF: WaitProcess, then exit with the status.

        Not before: the Kata 1.x agent's WaitProcess closes the process's pipes and forgets
        it (agent grpc.go, WaitProcess), so whatever is not read by then is lost.
        """
        for done in self._output_done:
            done.acquire()
        self.log.debug("output drained; waiting for the process")
        client = self.client("wait")
        try:
            status = client.wait()
        except RpcError as e:
            raise Failure(f"the agent cannot wait for process {self.opts.exec_id} of container "
                          f"{self.opts.container}: {e}") from None
        client.close()
        self.log.info("process done", status=status)
        self.exit((status & 0xFF) if self.opts.proxy_exit_code else 0, process_done=True)

    # ---------------------------------------------------------------- signals

    def _resize(self, control: AgentClient) -> None:
        size = tty.window_size()
        if size is None:
            return
        try:
            control.resize(*size)
        except RpcError as e:
            self.log.warning("TtyWinResize failed", error=str(e), rows=size[0], columns=size[1])

    def _make_raw(self) -> None:
        """Raw mode on fd 0 if it is a usable terminal; a pipe, /dev/null or a hung-up
        terminal is relayed as it is (what a reaper gives a detached tty process)."""
        if not os.isatty(0):
            return
        try:
            self._tty_saved = tty.make_raw(0)
        except tty.ERRORS as e:
            self.log.warning("terminal left as it is: cannot make it raw", error=str(e))

    def run(self, waited: set) -> None:
        """Start the sentinel (sentinel.py) and the pumps, then relay signals in this (the
        main) thread forever."""
        opts = self.opts
        self.sentinel = sentinel.start(opts, self.log)
        control = self.client("signals")
        try:
            if opts.terminal:
                self._make_raw()
                self._resize(control)
            streams = [("stdout", 1)] if opts.terminal else [("stdout", 1), ("stderr", 2)]
            for name, fd in streams:
                done = _thread.allocate_lock()
                done.acquire()
                self._output_done.append(done)
                self._thread(name, lambda name=name, fd=fd: self._output(name, fd), done)
            self._thread("stdin", self._stdin)
            self._thread("wait", self._wait)
            while True:
                signum = _signal.sigwaitinfo(waited).si_signo
                if signum == _signal.SIGWINCH:
                    if opts.terminal:
                        self._resize(control)
                    continue
                try:
                    control.signal(signum)
                    self.log.debug("signal forwarded", signal=signum)
                except RpcError as e:
                    self.log.warning("SignalProcess failed", signal=signum, error=str(e))
        except AgentLost as e:
            self.lost(e)
        except BaseException as e:
            self.exit(exits.SHIM_FAILURE, f"internal error: {type(e).__name__}: {e}")
