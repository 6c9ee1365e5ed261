"""The asyncio core of kata-proxy.

One proxy per VM.  It owns the only yamux session to the guest agent (yamux CLIENT role, the
agent is the server) and gives every host client its own stream:

    client socket --accept--> open_stream() --> yamux.splice(stream, client socket)

- yamux keepalive is off (a paused VM must not kill the session); instead a heartbeat pings the
  agent every ``--heartbeat`` seconds (1 s) and only *logs* failures.
- Ready: once the client socket listens and the session is up, ``READY=1`` goes to systemd
  (NOTIFY_SOCKET) or, without systemd, as one line on stdout.
- SIGUSR1 logs one ``stats`` line: ``clients`` (client connections being served), ``streams``
  (live yamux streams), ``accepted`` (total), ``fds`` (open fds), ``rss_kb``.
- SIGTERM/SIGINT: Go Away to the agent, stop accepting, remove the socket, close the clients,
  close the session, exit 0.
- The guest channel closing (VM gone): every client sees EOF, one ``error`` line, exit 5.
- The guest sending garbage (a yamux protocol error): Go Away, one ``error`` line, exit 6.

Exit codes (kata_proxy/exits.py, kata_proxy/README.md):

    0 OK              SIGTERM/SIGINT; --version; --help
    1 INTERNAL        unexpected exception (a bug)
    2 USAGE           bad or conflicting flags; --log file cannot be opened
    3 LISTEN          client socket cannot be set up (parent dir, path in use, bad LISTEN_FDS)
    4 CHANNEL_OPEN    guest channel cannot be opened (timeout, missing/unreadable/unpollable device)
    5 CHANNEL_CLOSED  guest channel closed while running (VM gone)
    6 PROTOCOL        guest broke the yamux protocol (garbage on the channel)
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys

from kata_proxy import exits, notify
from kata_proxy import log as klog
from kata_proxy import listener as klistener
from kata_proxy.channel import open_device, open_mux_socket
from kata_proxy.console import ConsoleForwarder

log = logging.getLogger("kata_proxy")

SHUTDOWN_GRACE = 1.0


@dataclasses.dataclass
class Options:
    listen_socket: str | None = None
    mux_socket: str | None = None
    channel: str | None = None
    agent_logs_socket: str | None = None
    sandbox: str | None = None
    log_level: int = logging.WARNING
    log_file: str | None = None
    log_format: str = "text"
    channel_timeout: float = 30.0
    heartbeat: float = 1.0
    use_uvloop: bool = True
    # Filled in by the CLI from LISTEN_PID/LISTEN_FDS (sd_listen_fds).
    listen_fds: list = dataclasses.field(default_factory=list)
    listen_fd_names: list = dataclasses.field(default_factory=list)


def yamux_config():
    from yamux import Config

    # Kata 1.x: keepalive off on both ends; the heartbeat below replaces it and is never fatal.
    return Config(enable_keepalive=False)


def heartbeat_timeout(interval: float) -> float:
    """How long one heartbeat ping may take: twice the interval, within [1 s, 10 s]."""
    return min(10.0, max(1.0, 2.0 * interval))


def open_fd_count() -> int:
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # minus the fd of the listing itself
    except OSError:
        return -1


def rss_kb() -> int:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return -1


class Proxy:
    def __init__(self, opts: Options):
        self.opts = opts
        self.session = None
        self.listener: klistener.Listener | None = None
        self.clients: set[asyncio.Task] = set()
        self.accepted = 0
        self.stop_signal: str | None = None
        self._stop: asyncio.Event | None = None
        self._background: list[asyncio.Task] = []
        self._accept_task: asyncio.Task | None = None

    # ------------------------------------------------------------------ stats, signals

    def stats(self) -> dict:
        session = self.session
        return {
            "clients": len(self.clients),
            "streams": getattr(session, "num_streams", -1) if session is not None else 0,
            "accepted": self.accepted,
            "fds": open_fd_count(),
            "rss_kb": rss_kb(),
        }

    def log_stats(self) -> None:
        level = max(logging.INFO, logging.getLogger().getEffectiveLevel())
        log.log(level, "stats", extra=klog.fields(**self.stats()))

    def _on_signal(self, signum: int) -> None:
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(signum).name
        if self._stop is not None:
            self._stop.set()

    # ------------------------------------------------------------------ setup

    def _open_listener(self) -> klistener.Listener:
        if self.opts.listen_fds:
            return klistener.from_fds(self.opts.listen_fds, self.opts.listen_fd_names)
        return klistener.bind_unix(self.opts.listen_socket)

    async def _open_channel(self):
        config = yamux_config()
        if self.opts.mux_socket:
            return await open_mux_socket(self.opts.mux_socket, self.opts.channel_timeout, config)
        return await open_device(self.opts.channel, self.opts.channel_timeout, config)

    # ------------------------------------------------------------------ data path

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        lsock = self.listener.sock
        warned = False
        while True:
            try:
                conn, _ = await loop.sock_accept(lsock)
            except asyncio.CancelledError:
                raise
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: the connection stays queued; do not spin on it.
                if not warned:
                    log.warning("accept failed: %s; retrying", exc.strerror or exc)
                    warned = True
                await asyncio.sleep(0.1)
                continue
            warned = False
            conn.setblocking(False)
            self.accepted += 1
            task = asyncio.get_running_loop().create_task(self._serve_client(conn, self.accepted))
            self.clients.add(task)
            task.add_done_callback(self.clients.discard)

    async def _serve_client(self, conn, number: int) -> None:
        from yamux import splice

        stream = None
        try:
            try:
                stream = await self.session.open_stream()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("client %d refused: cannot open a stream to the agent: %s", number, exc)
                return
            log.debug("client %d -> stream %s", number, stream.id)
            await splice(stream, conn)
            log.debug("client %d done", number)
        except asyncio.CancelledError:
            if stream is not None:
                try:
                    stream.reset()
                except Exception:
                    pass
            raise
        except Exception as exc:  # splice reports errors by returning; this is belt and braces
            log.debug("client %d ended: %s: %s", number, type(exc).__name__, exc)
        finally:
            try:
                conn.close()
            except OSError:
                pass

    async def _heartbeat(self) -> None:
        interval = self.opts.heartbeat
        failing = 0
        while True:
            await asyncio.sleep(interval)
            session = self.session
            if session is None or session.closed:
                return
            try:
                await asyncio.wait_for(session.ping(), timeout=heartbeat_timeout(interval))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if session.closed:
                    return
                failing += 1
                if failing == 1:
                    log.warning("heartbeat: agent did not answer a ping (%s); still waiting",
                                type(exc).__name__ if isinstance(exc, asyncio.TimeoutError) else exc)
                else:
                    log.debug("heartbeat: ping failed %d times in a row", failing)
                continue
            if failing:
                log.info("heartbeat: agent answers pings again after %d failures", failing)
                failing = 0

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGUSR1, self.log_stats)
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
                loop.remove_signal_handler(sig)

    async def _run(self) -> int:
        opts = self.opts
        self.listener = self._open_listener()
        try:
            if opts.agent_logs_socket:
                console = ConsoleForwarder(opts.agent_logs_socket,
                                           level=max(logging.getLogger().getEffectiveLevel(), logging.DEBUG),
                                           timeout=opts.channel_timeout)
                self._background.append(asyncio.ensure_future(console.run()))

            opening = asyncio.ensure_future(self._open_channel())
            stopped = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({opening, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not opening.done():
                opening.cancel()
                await asyncio.gather(opening, return_exceptions=True)
                log.info("%s before the guest channel was up; exiting", self.stop_signal)
                return exits.OK
            stopped.cancel()
            self.session = opening.result()  # raises ChannelError (exit 4)
            log.info("guest channel up", extra=klog.fields(
                channel=opts.mux_socket or opts.channel, listen=self.listener.describe()))

            self._accept_task = asyncio.ensure_future(self._accept_loop())
            if opts.heartbeat > 0:
                self._background.append(asyncio.ensure_future(self._heartbeat()))
            how = notify.ready(f"serving {self.listener.describe()}")
            log.debug("ready (notified on %s)", how)

            closed = asyncio.ensure_future(self.session.wait_closed())
            stopped = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if self._stop.is_set():
                closed.cancel()
                return await self._graceful()
            stopped.cancel()
            return await self._channel_lost()
        finally:
            await self._teardown()

    async def _stop_accepting(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.gather(self._accept_task, return_exceptions=True)
            self._accept_task = None
        if self.listener is not None:
            self.listener.close()

    async def _close_clients(self, timeout: float) -> None:
        tasks = list(self.clients)
        if not tasks:
            return
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=timeout)

    async def _graceful(self) -> int:
        notify.stopping()
        clients = len(self.clients)
        await self._stop_accepting()
        try:
            await asyncio.wait_for(self.session.go_away(0), timeout=SHUTDOWN_GRACE)
        except Exception as exc:
            log.debug("go away not sent: %s", exc)
        await self._close_clients(SHUTDOWN_GRACE)
        log.info("%s: sent Go Away to the agent, closed %d client(s), exiting",
                 self.stop_signal or "stop", clients)
        return exits.OK

    async def _channel_lost(self) -> int:
        from yamux import ProtocolError

        error = getattr(self.session, "error", None)
        clients = len(self.clients)
        await self._stop_accepting()
        # The session is closed: every splice ends and its client socket is closed (EOF).
        if self.clients:
            await asyncio.wait(list(self.clients), timeout=SHUTDOWN_GRACE)
        if isinstance(error, ProtocolError):
            log.error("protocol error from the guest: %s; sent Go Away and closed the channel, "
                      "%d client(s) disconnected, exiting", error, clients,
                      extra=klog.fields(exit_code=exits.PROTOCOL))
            return exits.PROTOCOL
        reason = f"{error}" if error is not None else "end of file"
        log.error("guest channel closed (%s): VM gone, %d client(s) disconnected, exiting",
                  reason, clients, extra=klog.fields(exit_code=exits.CHANNEL_CLOSED))
        return exits.CHANNEL_CLOSED

    async def _teardown(self) -> None:
        await self._stop_accepting()
        for task in self._background:
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        self._background.clear()
        await self._close_clients(SHUTDOWN_GRACE)
        if self.session is not None:
            try:
                await asyncio.wait_for(self.session.close(), timeout=SHUTDOWN_GRACE)
            except Exception as exc:
                log.debug("session close: %s", exc)


def _runner(use_uvloop: bool) -> asyncio.Runner:
    if use_uvloop and os.environ.get("KATA_PROXY_NO_UVLOOP", "") in ("", "0"):
        try:
            import uvloop

            return asyncio.Runner(loop_factory=uvloop.new_event_loop)
        except ImportError:
            pass
    return asyncio.Runner()


def run(opts: Options) -> int:
    """Run the proxy until it stops; returns the exit code (never raises)."""
    try:
        setup = klog.setup(level=opts.log_level, fmt=opts.log_format, file=opts.log_file,
                           sandbox=opts.sandbox)
    except OSError as exc:
        sys.stderr.write(f"kata-proxy: error: log file {opts.log_file}: {exc.strerror or exc}\n")
        return exits.USAGE
    code = exits.INTERNAL
    try:
        with _runner(opts.use_uvloop) as runner:
            code = runner.run(Proxy(opts).run())
    except exits.ProxyExit as exc:
        code = exc.code
        log.error("%s", exc.message, extra=klog.fields(exit_code=code))
        if not setup.to_stderr:
            sys.stderr.write(f"kata-proxy: error: {exc.message}\n")
    except KeyboardInterrupt:
        code = exits.OK
    except Exception as exc:
        code = exits.INTERNAL
        log.critical("internal error: %s: %s", type(exc).__name__, exc,
                     exc_info=log.isEnabledFor(logging.DEBUG), extra=klog.fields(exit_code=code))
        if not setup.to_stderr:
            sys.stderr.write(f"kata-proxy: internal error: {type(exc).__name__}: {exc}\n")
    finally:
        setup.handler.flush()
        setup.close()
    return code
