"""kata-agent: the guest agent (and the process sandbox's "guest").

    kata-agent [--channel-fd N | --channel-socket PATH] [--shared-dir PATH]
               [--state-dir DIR] [--log LEVEL] [--log-format text|json]

Without a channel flag the channel is the virtio-serial port named
``agent.channel.0`` (a VM). Where it runs decides the set-up (kata_agent.init):

* PID 1 with the virtio port: a VM guest; mount the system, read
  ``agent.log=<level>`` (and other ``agent.*`` options) from /proc/cmdline.
* PID 1 with --channel-fd/--channel-socket: the process sandbox (fresh
  mount/pid/uts/ipc namespaces made by the driver); private tmpfs on
  /run/kata-containers, state in /run/kata-containers/agent by default.
* otherwise: a developer's run on the host; nothing is mounted (the service's
  reaper makes the agent a child subreaper).

Each yamux stream the host opens is one HTTP/2 connection, served on the stream
itself by kata_grpc (kata_agent.bridge, kata_agent.server): no grpcio, no private
socket. A socket channel ends the agent when the host hangs up,
with one log line saying so; the virtio port is waited on again instead (PID 1
of a VM must not exit).

protobuf and the service are imported only once the system is set up and the
channel found; nothing before that needs them.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import sys
import time

from kata_log import FORMATS, LEVELS
from kata_log.formatter import LineFormatter

log = logging.getLogger("kata_agent")

SANDBOX_STATE_DIR = "/run/kata-containers/agent"
SHUTDOWN_TIMEOUT = 4.0


# -------------------------------------------------------------------- logging


class _Formatter(LineFormatter):
    """kata_log's line as the Go agent's logrus logger wrote it: name=kata-agent source=agent,
    subsystem= the logger name's rest (kata_agent.channel -> channel).  ValueError for ``fmt``."""

    def __init__(self, fmt: str):
        super().__init__(fmt, name="kata-agent", source="agent", subsystem=True)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt if fmt in FORMATS else "text"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS.get(level.lower(), logging.INFO))
    if level.lower() not in LEVELS:
        log.warning("unknown log level %r; using info (known: %s)", level, ", ".join(LEVELS))
    if fmt not in FORMATS:
        log.warning("unknown log format %r; using text (known: %s)", fmt, ", ".join(FORMATS))


# ------------------------------------------------------------------------ cli


class Args:
    """The agent's flags (the dests of :func:`build_parser`) with their defaults.  A VM's PID 1
    is started with no argument at all: then these defaults are the answer and argparse is not
    even imported (with the shutil, gettext and compression modules it pulls in, ~0.1 s of a
    TCG guest's boot)."""

    channel_fd: int | None = None
    channel_socket: str | None = None
    shared_dir: str | None = None
    state_dir: str | None = None
    cgroup_parent: str | None = None
    log: str | None = None
    log_format: str | None = None
    ready_fd: int | None = None
    sysfs_root: str = "/sys"
    dev_root: str = "/dev"


#: The flags a plain command line may carry (what the process sandbox driver passes): dest, and
#: the value's type or its choices.
_PLAIN_FLAGS = {"--channel-fd": ("channel_fd", int), "--channel-socket": ("channel_socket", str),
                "--shared-dir": ("shared_dir", str), "--state-dir": ("state_dir", str),
                "--cgroup-parent": ("cgroup_parent", str), "--log": ("log", str),
                "--log-format": ("log_format", ("text", "json")), "--ready-fd": ("ready_fd", int)}


def parse_args(argv: list[str]) -> Args:
    """``argv`` (the arguments after the program name) as :class:`Args`; exits with a usage
    message (status 2) on a bad command line, as argparse does.

    A plain command line (``--flag value`` pairs of :data:`_PLAIN_FLAGS`, each at most once,
    not both channel flags) is read without argparse; anything else goes to argparse, which
    accepts the same and more, and says what is wrong."""
    args = _parse_plain(argv)
    if args is None:
        args = build_parser().parse_args(argv, namespace=Args())
    return args


def _parse_plain(argv: list[str]) -> Args | None:
    args = Args()
    seen = set()
    if len(argv) % 2:
        return None
    for flag, value in zip(argv[::2], argv[1::2]):
        known = _PLAIN_FLAGS.get(flag)
        if known is None or flag in seen or value.startswith("-"):
            return None
        seen.add(flag)
        dest, kind = known
        if kind is int:
            if not value.isdigit():
                return None
            value = int(value)
        elif kind is not str and value not in kind:
            return None
        setattr(args, dest, value)
    if {"--channel-fd", "--channel-socket"} <= seen:
        return None
    return args


def build_parser():
    """The agent's argparse parser (defaults: :class:`Args`)."""
    import argparse

    p = argparse.ArgumentParser(prog="kata-agent", description="kata-py guest agent: yamux server + gRPC AgentService")
    ch = p.add_mutually_exclusive_group()
    ch.add_argument("--channel-fd", type=int, metavar="N",
                    help="inherited channel fd: a listening unix socket (accept one connection), "
                         "a connected stream socket or a character device")
    ch.add_argument("--channel-socket", metavar="PATH", help="listen on this unix socket and accept one connection")
    p.add_argument("--shared-dir", metavar="PATH",
                   help="process sandbox: host directory bind-mounted where CreateSandbox asks for the 9p share")
    p.add_argument("--state-dir", metavar="DIR", help="agent state (runc root, consoles, containers)")
    p.add_argument("--cgroup-parent", metavar="NAME",
                   help="cgroup (below the agent's own) that holds the containers' cgroups (default: kata)")
    p.add_argument("--log", metavar="LEVEL", help="debug, info, warn, error (default: agent.log= on the kernel "
                                                   "command line in a VM, else info)")
    p.add_argument("--log-format", choices=("text", "json"))
    p.add_argument("--ready-fd", type=int, metavar="N",
                   help="write READY=1 to this fd and close it once serving (process sandbox driver)")
    p.add_argument("--sysfs-root", help=argparse.SUPPRESS)
    p.add_argument("--dev-root", help=argparse.SUPPRESS)
    return p


def detect_mode(explicit_channel: bool, pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    if pid != 1:
        return "host"
    return "sandbox" if explicit_channel else "vm"


def main(argv=None) -> int:
    """kata-agent; returns the exit status. The cycle collector is off until the server is up
    (see _started), and on again whichever way this returns."""
    gc.disable()
    try:
        return _main(argv)
    finally:
        gc.enable()


def _main(argv) -> int:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    explicit = args.channel_fd is not None or args.channel_socket is not None
    mode = detect_mode(explicit)
    if args.ready_fd is not None:
        try:
            os.set_inheritable(args.ready_fd, False)  # never leaks into runc or containers
        except OSError:
            args.ready_fd = None
    setup_logging(args.log or "info", args.log_format or "text")

    from kata_agent import init
    from kata_agent.channel import ChannelError, open_channel

    cmdline: dict[str, str] = {}
    try:
        if mode == "vm":
            cmdline = init.setup_guest()
        elif mode == "sandbox":
            init.setup_process_sandbox()
        # else (host): nothing to mount; the sandbox's reaper makes us a child subreaper.
    except OSError as exc:
        log.critical("system set-up failed: %s", exc)
        return _fail(mode)
    level = args.log or cmdline.get("log") or "info"
    fmt = args.log_format or cmdline.get("log_format") or "text"
    setup_logging(level, fmt)

    try:
        channel = open_channel(fd=args.channel_fd, socket_path=args.channel_socket,
                               sysfs_root=args.sysfs_root, dev_root=args.dev_root)
    except ChannelError as exc:
        log.critical("channel: %s", exc)
        return _fail(mode)

    from kata_agent.config import AgentConfig

    state_dir = args.state_dir or (SANDBOX_STATE_DIR if mode == "sandbox" else AgentConfig.state_dir)
    config = AgentConfig(
        state_dir=state_dir,
        shared_dir_source=os.path.abspath(args.shared_dir) if args.shared_dir else None,
        log_level=level,
        manage_system=mode != "host",
        **({"cgroup_parent": args.cgroup_parent} if args.cgroup_parent else {}),
        **cmdline_config(cmdline, AgentConfig),
    )
    log.info("kata-agent starting: mode=%s pid=%d channel=%s state=%s", mode, os.getpid(), channel.description, state_dir)

    import uvloop

    try:
        rc = uvloop.run(serve(config, channel, ready_fd=args.ready_fd))
    except KeyboardInterrupt:
        rc = 0
    except Exception as exc:
        log.critical("kata-agent failed: %s", exc, exc_info=True)
        rc = 1
    if mode == "vm" and rc != 0:
        return _fail(mode)
    return rc


def cmdline_config(cmdline: dict[str, str], config_class) -> dict:
    """AgentConfig fields set by kernel command line options (the Kata 1.x names)."""
    import dataclasses

    known = {f.name for f in dataclasses.fields(config_class)}
    out = {}
    if "container_pipe_size" in cmdline and "container_pipe_size" in known:
        try:
            out["container_pipe_size"] = int(cmdline["container_pipe_size"])
        except ValueError:
            log.warning("agent.container_pipe_size=%r is not a number; ignored", cmdline["container_pipe_size"])
    return out


def _fail(mode: str) -> int:
    if mode == "vm":
        # PID 1 exiting panics the kernel; leave time for the console to show why.
        time.sleep(1)
    return 1


async def serve(config, channel, *, ready_fd: int | None = None) -> int:
    """Start the sandbox and serve gRPC on the channel's yamux streams until the channel is gone
    or SIGTERM/SIGINT; returns the exit status (1 when the channel failed)."""
    from kata_agent.bridge import Bridge

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    t0 = time.monotonic()
    from kata_agent.server import start_service  # protobuf, katapb and kata_grpc: no grpcio

    sandbox, table = start_service(config)
    log.info("gRPC service ready (%.0f ms)", (time.monotonic() - t0) * 1000)
    if ready_fd is not None:
        _notify_ready(ready_fd)
    _started()
    try:
        return await _serve_until_done(Bridge(table), channel, stopping)
    finally:
        channel.close()
        await _shutdown(sandbox)


async def _serve_until_done(bridge, channel, stopping: asyncio.Event) -> int:
    """Run the bridge until the channel ends (0; 1 if it failed) or ``stopping`` is set (0)."""
    bridge_task = asyncio.ensure_future(bridge.run(channel))
    stop_task = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({bridge_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if not bridge_task.done():
            log.info("signal received: shutting down")
            bridge_task.cancel()  # serve_session closes the session on its way out
            await asyncio.wait({bridge_task}, timeout=3)
            return 0
        exc = bridge_task.exception()
        if exc is not None:
            log.error("channel failed: %s; exiting", exc)
            return 1
        log.warning("channel closed: %s; exiting", bridge_task.result())
        return 0
    finally:
        stop_task.cancel()


def _started() -> None:
    """The server is up: the cycle collector, off while the agent imported and started (it made
    many objects and no garbage), is turned on, with what exists so far frozen out of its scans."""
    gc.freeze()
    gc.enable()


def _notify_ready(fd: int) -> None:
    try:
        os.write(fd, b"READY=1\n")
    except OSError as exc:
        log.warning("--ready-fd %d: %s", fd, exc)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass


async def _shutdown(sandbox) -> None:
    """Remove every container and unmount storages (bounded by SHUTDOWN_TIMEOUT)."""
    try:
        await asyncio.wait_for(sandbox.shutdown(), SHUTDOWN_TIMEOUT)
    except asyncio.TimeoutError:
        log.warning("shutdown: containers not removed within %gs", SHUTDOWN_TIMEOUT)
    except Exception as exc:
        log.warning("shutdown: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
