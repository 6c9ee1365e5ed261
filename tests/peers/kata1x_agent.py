"""A test peer that keeps the Kata 1.x agent's stdio and wait rules (tests only).

    python tests/peers/kata1x_agent.py --listen SOCK

Serves ``grpc.AgentService`` (grpcio, katapb) on the unix socket SOCK, so kata-shim can use
it directly (``kata-shim --agent unix://SOCK ...``: plain gRPC, as to kata-proxy).  Prints
``READY`` on stdout once listening; SIGTERM ends it and kills the processes it started.

Each container process is a real host subprocess running the args of the OCI process given
in CreateContainer (started by StartContainer) or ExecProcess; no container, no runc.  A
terminal process (``Process.Terminal``) runs on a real pty, as its session's controlling
terminal.  Every child dies with the peer (PR_SET_PDEATHSIG, which follows the thread that
spawned it: a worker of the server's pool, alive as long as the server).

The rules kept from the Kata 1.x agent (kata-containers/agent grpc.go and agent.go, 1.x):

* ReadStdout / ReadStderr read straight from the process's pipe (a terminal process: its
  pty master, for both calls), blocking until data, up to ``len`` bytes.  End of stream is
  the error status OUT_OF_RANGE "EOF".  A pty master that reports EIO (every slave closed:
  the process is gone) ends with EOF as well, as the original's epoller did.
* WaitProcess waits for the exit (status, or 128+N for a death by signal N), then closes the
  process's pipe ends (or pty master) and forgets the process, before it answers.  Whatever
  was still in the pipe is lost; later calls about the process answer NOT_FOUND "Process ...
  not found (container ...)"; a read in flight fails with UNKNOWN "read |0: file already
  closed", the error Go's os.File.Read returns when the file is closed under it.
* WriteStdin writes all of ``data`` (blocking while the pipe or pty is full) and answers its
  length; after CloseStdin it is ignored (len 0); a pipe whose reader is gone fails with
  UNKNOWN "write |1: broken pipe".  CloseStdin closes the stdin pipe; for a terminal process
  it does nothing.
* SignalProcess: exec_id "" signals every process of the container; a process that has
  exited is not signalled (the init's signal is discarded, an exec'd process answers UNKNOWN
  "os: process already finished").  TtyWinResize sets the pty size, FAILED_PRECONDITION
  without a terminal.  A pty starts at 0x0, as the original's did.
* Unknown container: NOT_FOUND "Container ... not found".  Methods not listed here answer
  UNIMPLEMENTED (katapb's base servicer).
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
from concurrent import futures

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for path in (REPO, os.path.join(REPO, "proto")):
    if path not in sys.path:
        sys.path.insert(0, path)

# Children are spawned with fork+exec: gRPC's own fork handlers are not wanted (and warn).
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import grpc  # noqa: E402
from katapb import agent_pb2, agent_pb2_grpc  # noqa: E402
from google.protobuf import empty_pb2  # noqa: E402

EMPTY = empty_pb2.Empty()
PR_SET_PDEATHSIG = 1
POLL_S = 0.05  # how often a blocked read or write looks whether its file was closed


class Closed(Exception):
    """The file was closed by WaitProcess while (or before) it was used; args: ("read"|"write",)."""


class File:
    """One parent-side fd of a process (pipe end or pty master), used like a Go os.File.

    A read or write blocks until done; :meth:`close` makes one in flight (in another thread)
    fail with :class:`Closed` within POLL_S seconds, as Go's poller does.  The fd itself is
    closed by the last user, so its number is never reused under a reader.
    """

    def __init__(self, fd: int, *, is_pty: bool = False) -> None:
        os.set_blocking(fd, False)
        self.fd = fd
        self.is_pty = is_pty
        self.closed = False
        self._users = 0
        self._lock = threading.Lock()

    def _enter(self, op: str) -> None:
        with self._lock:
            if self.closed:
                raise Closed(op)
            self._users += 1

    def _leave(self) -> None:
        with self._lock:
            self._users -= 1
            if self.closed and not self._users:
                os.close(self.fd)

    def _wait(self, events: int, op: str) -> None:
        """Wait until the fd is ready for ``events``; Closed if closed meanwhile."""
        poller = select.poll()
        poller.register(self.fd, events)
        while not poller.poll(POLL_S * 1000) or self.closed:
            if self.closed:
                raise Closed(op)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes, waiting for some; b"" at EOF (EIO of a pty master too)."""
        self._enter("read")
        try:
            while True:
                self._wait(select.POLLIN, "read")
                try:
                    return os.read(self.fd, n)
                except BlockingIOError:
                    continue
                except OSError as e:
                    if self.is_pty and e.errno == errno.EIO:
                        return b""
                    raise
        finally:
            self._leave()

    def write(self, data: bytes) -> int:
        """Write all of ``data``; returns its length.  BrokenPipeError when the reader is gone."""
        self._enter("write")
        try:
            view = memoryview(data)
            while view:
                self._wait(select.POLLOUT, "write")
                try:
                    view = view[os.write(self.fd, view):]
                except BlockingIOError:
                    continue
            return len(data)
        finally:
            self._leave()

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if not self._users:
                os.close(self.fd)


def _child_setup(terminal: bool):
    """preexec_fn of a child: die with the peer; a terminal child takes its pty as ctty."""
    def setup():
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if terminal:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    return setup


class Process:
    """A container process: its stdio made at creation, the child spawned by :meth:`start`."""

    def __init__(self, exec_id: str, oci_process) -> None:
        self.exec_id = exec_id
        self.args = list(oci_process.Args)
        self.env = dict(e.split("=", 1) for e in oci_process.Env if "=" in e) or None
        self.cwd = oci_process.Cwd or "/"
        self.terminal = oci_process.Terminal
        self.popen: subprocess.Popen | None = None
        self.started = threading.Event()
        self.stdin_closed = False
        if self.terminal:
            master, self._child_fds = self._pty()
            self.master = File(master, is_pty=True)
            self.stdin = None
            self.stdout = self.stderr = self.master
        else:
            self.master = None
            (in_r, in_w), (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe(), os.pipe()
            self._child_fds = (in_r, out_w, err_w)
            self.stdin, self.stdout, self.stderr = File(in_w), File(out_r), File(err_r)

    @staticmethod
    def _pty():
        master, slave = os.openpty()
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        return master, (slave, slave, slave)

    def start(self) -> None:
        """Spawn the child on the stdio made at creation; the peer keeps only its own ends."""
        stdin, stdout, stderr = self._child_fds
        try:
            self.popen = subprocess.Popen(
                self.args, stdin=stdin, stdout=stdout, stderr=stderr, env=self.env, cwd=self.cwd,
                start_new_session=True, preexec_fn=_child_setup(self.terminal))
        finally:
            for fd in set(self._child_fds):
                os.close(fd)
            self._child_fds = ()
        self.started.set()

    def wait(self) -> int:
        """The exit status: the code, or 128+N for a death by signal N."""
        self.started.wait()
        code = self.popen.wait()
        return 128 - code if code < 0 else code

    def files(self):
        return {f for f in (self.stdin, self.stdout, self.stderr) if f is not None}

    def close(self) -> None:
        """What WaitProcess does once the process has exited: close the peer's ends."""
        for f in self.files():
            f.close()
        for fd in set(self._child_fds):  # never started
            os.close(fd)
        self._child_fds = ()

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()


class Container:
    def __init__(self, container_id: str) -> None:
        self.id = container_id
        self.init_id = ""
        self.processes: dict[str, Process] = {}


class AgentError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def rpc(method):
    """Turn AgentError into the call's status, and a Closed file into Go's error text."""
    def handler(self, request, context):
        try:
            return method(self, request, context)
        except AgentError as e:
            context.abort(e.code, e.message)
        except Closed as e:
            context.abort(grpc.StatusCode.UNKNOWN, f"{e.args[0]} |0: file already closed")
        except BrokenPipeError:
            context.abort(grpc.StatusCode.UNKNOWN, "write |1: broken pipe")
    handler.__name__ = method.__name__
    return handler


class Kata1xAgent(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.containers: dict[str, Container] = {}

    # ---- lookups, as the original's sandbox.getContainer / getProcess

    def container(self, container_id: str) -> Container:
        with self.lock:
            c = self.containers.get(container_id)
        if c is None:
            raise AgentError(grpc.StatusCode.NOT_FOUND, f"Container {container_id} not found")
        return c

    def process(self, container_id: str, exec_id: str) -> tuple[Container, Process]:
        c = self.container(container_id)
        with self.lock:
            p = c.processes.get(exec_id)
        if p is None:
            raise AgentError(grpc.StatusCode.NOT_FOUND,
                             f"Process {exec_id} not found (container {container_id})")
        return c, p

    def forget(self, c: Container, p: Process) -> None:
        with self.lock:
            if c.processes.get(p.exec_id) is p:
                del c.processes[p.exec_id]

    def kill_all(self) -> None:
        with self.lock:
            processes = [p for c in self.containers.values() for p in c.processes.values()]
        for p in processes:
            p.kill()

    # ---- lifecycle

    @rpc
    def CreateSandbox(self, request, context):
        return EMPTY

    @rpc
    def DestroySandbox(self, request, context):
        self.kill_all()
        return EMPTY

    @rpc
    def CreateContainer(self, request, context):
        cid = request.container_id
        with self.lock:
            if cid in self.containers:
                raise AgentError(grpc.StatusCode.ALREADY_EXISTS, f"Container {cid} already exists")
            c = self.containers[cid] = Container(cid)
            c.init_id = request.exec_id
            c.processes[request.exec_id] = Process(request.exec_id, request.OCI.Process)
        return EMPTY

    @rpc
    def StartContainer(self, request, context):
        c = self.container(request.container_id)
        _, p = self.process(c.id, c.init_id)
        p.start()
        return EMPTY

    @rpc
    def ExecProcess(self, request, context):
        c = self.container(request.container_id)
        p = Process(request.exec_id, request.process)
        with self.lock:
            if request.exec_id in c.processes:
                p.close()
                raise AgentError(grpc.StatusCode.ALREADY_EXISTS, f"Process {request.exec_id} already exists")
            c.processes[request.exec_id] = p
        try:
            p.start()
        except OSError as e:
            self.forget(c, p)
            p.close()
            raise AgentError(grpc.StatusCode.UNKNOWN, f"exec: {e}")
        return EMPTY

    @rpc
    def RemoveContainer(self, request, context):
        c = self.container(request.container_id)
        with self.lock:
            processes = list(c.processes.values())
            del self.containers[c.id]
        for p in processes:
            p.kill()
            p.close()
        return EMPTY

    @rpc
    def WaitProcess(self, request, context):
        c, p = self.process(request.container_id, request.exec_id)
        try:
            status = p.wait()
        finally:  # the original's deferred closePostExitFDs + deleteProcess
            p.close()
            self.forget(c, p)
        return agent_pb2.WaitProcessResponse(status=status)

    @rpc
    def SignalProcess(self, request, context):
        c = self.container(request.container_id)
        signum = request.signal
        if request.exec_id == "":
            with self.lock:
                targets = list(c.processes.values())
            for p in targets:
                if p.popen is not None:
                    p.popen.send_signal(signum)  # nothing once exited
            return EMPTY
        _, p = self.process(c.id, request.exec_id)
        if p.popen is None or p.popen.poll() is not None:
            if request.exec_id == c.init_id:
                return EMPTY  # "discarding signal as container stopped"
            raise AgentError(grpc.StatusCode.UNKNOWN, "os: process already finished")
        p.popen.send_signal(signum)
        return EMPTY

    # ---- stdio

    def _read(self, request, stderr: bool):
        _, p = self.process(request.container_id, request.exec_id)
        data = (p.stderr if stderr else p.stdout).read(request.len)
        if not data:
            raise AgentError(grpc.StatusCode.OUT_OF_RANGE, "EOF")
        return agent_pb2.ReadStreamResponse(data=data)

    @rpc
    def ReadStdout(self, request, context):
        return self._read(request, stderr=False)

    @rpc
    def ReadStderr(self, request, context):
        return self._read(request, stderr=True)

    @rpc
    def WriteStdin(self, request, context):
        _, p = self.process(request.container_id, request.exec_id)
        if p.stdin_closed:
            return agent_pb2.WriteStreamResponse()
        target = p.master if p.terminal else p.stdin
        return agent_pb2.WriteStreamResponse(len=target.write(request.data))

    @rpc
    def CloseStdin(self, request, context):
        _, p = self.process(request.container_id, request.exec_id)
        if p.stdin is not None:
            p.stdin.close()
            p.stdin_closed = True
        return EMPTY

    @rpc
    def TtyWinResize(self, request, context):
        _, p = self.process(request.container_id, request.exec_id)
        if p.master is None:
            raise AgentError(grpc.StatusCode.FAILED_PRECONDITION, "Terminal is not set, impossible to resize it")
        fcntl.ioctl(p.master.fd, termios.TIOCSWINSZ, struct.pack("HHHH", request.row, request.column, 0, 0))
        return EMPTY


def serve(socket_path: str, workers: int = 64):
    """Start the server on ``socket_path``; returns (grpc server, Kata1xAgent)."""
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", 16 << 20)])
    agent = Kata1xAgent()
    agent_pb2_grpc.add_AgentServiceServicer_to_server(agent, server)
    server.add_insecure_port(f"unix:{socket_path}")
    server.start()
    return server, agent


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True, help="unix socket path to serve on")
    args = ap.parse_args(argv)
    server, agent = serve(args.listen)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    print("READY", flush=True)
    while not done.wait(0.5):
        pass
    agent.kill_all()
    server.stop(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
