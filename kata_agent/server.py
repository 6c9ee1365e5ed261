"""Serving kata-agent's gRPC services (kata_agent.service) with kata_grpc: no grpcio.

Two ways, one server (kata_grpc.aio) and one table of handlers:

* on the host's yamux streams (kata-agent, kata_agent.cli + kata_agent.bridge): each stream the
  host opens is one HTTP/2 connection, served on the stream itself::

      sandbox, table = start_service(config)
      Bridge(table).run(channel)               # serve_connection(stream, stream, table) per stream
      await sandbox.shutdown()                 # removes containers, unmounts

* on a unix socket (python -m kata_agent.standalone: tests, benchmarks, development)::

      server, sandbox = await start_grpc_server(socket_path, config)
      await stop_grpc_server(server, sandbox)

``start_service`` (and so ``start_grpc_server``) must run in the main thread's running event
loop (the standard asyncio loop or uvloop): it starts the sandbox there (its child reaper: a
SIGCHLD handler, and PR_SET_CHILD_SUBREAPER when not PID 1). From then on nothing else in the
agent process may wait for child processes: use ``sandbox.reaper.run(argv)``.
"""

from __future__ import annotations

import logging

from kata_grpc.aio import UnixServer, serve_unix

from .config import AgentConfig
from .sandbox import Sandbox
from .service import Handler, handlers

log = logging.getLogger("kata_agent.server")


def start_service(config: AgentConfig) -> tuple[Sandbox, dict[str, Handler]]:
    """Start the sandbox (its reaper, runc) and build the handlers of every method on it
    (path -> Handler). Raises OSError when the state directory cannot be made."""
    sandbox = Sandbox(config)
    sandbox.start()
    return sandbox, handlers(sandbox)


async def start_grpc_server(socket_path: str, config: AgentConfig) -> tuple[UnixServer, Sandbox]:
    """Start the sandbox, then serve AgentService + Health on the unix socket ``socket_path``
    (created mode 0600; an existing file is replaced). Returns the server and the Sandbox.
    Raises OSError when it cannot listen (the sandbox's reaper is uninstalled again)."""
    sandbox, table = start_service(config)
    try:
        server = await serve_unix(socket_path, table)
    except BaseException:
        sandbox.reaper.uninstall()
        raise
    log.info("agent gRPC service on unix:%s (runc %s, state %s)", socket_path, config.runc,
             config.state_dir)
    return server, sandbox


async def stop_grpc_server(server: UnixServer, sandbox: Sandbox) -> None:
    """Stop serving (the calls in flight are cancelled, the socket file removed), then remove
    every container and unmount storages."""
    await server.close()
    await sandbox.shutdown()
