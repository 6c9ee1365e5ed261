"""Serving kata-agent's gRPC services (kata_agent.service) on a unix socket, with grpc.aio.

    server, sandbox = await start_grpc_server(socket_path, config)
    ...                      # the yamux bridge splices each stream to unix:<socket_path>
    await stop_grpc_server(server, sandbox)   # removes containers, unmounts

``start_grpc_server`` must be awaited in the main thread's running event loop (the standard
asyncio loop or uvloop): it starts the sandbox there (its child reaper: a SIGCHLD handler, and
PR_SET_CHILD_SUBREAPER when not PID 1), then serves on the unix socket ``socket_path``
(created; an existing file is replaced; mode 0600). From then on nothing else in the agent
process may wait for child processes: use ``sandbox.reaper.run(argv)``.
"""

from __future__ import annotations

import logging
import os

import grpc

from .config import AgentConfig
from .sandbox import Sandbox
from .service import Handler, RpcStatus, handlers

log = logging.getLogger("kata_agent.server")

MAX_MESSAGE = 64 << 20
_GRPC_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _behaviour(handler: Handler):
    """grpc.aio's unary behaviour for a Handler: raw bytes in and out, RpcStatus -> abort."""
    async def behaviour(request: bytes, context):
        try:
            return await handler(request)
        except RpcStatus as s:
            await context.abort(_GRPC_CODES[int(s.code)], s.message)
    return behaviour


def generic_handlers(table: dict[str, Handler]) -> list:
    """grpc generic handlers, one per service, of a path -> Handler table (no (de)serializer:
    the Handlers take and give bytes)."""
    services: dict[str, dict] = {}
    for path, handler in table.items():
        service, method = path.lstrip("/").split("/")
        services.setdefault(service, {})[method] = grpc.unary_unary_rpc_method_handler(_behaviour(handler))
    return [grpc.method_handlers_generic_handler(name, methods) for name, methods in services.items()]


async def start_grpc_server(socket_path: str, config: AgentConfig) -> tuple[grpc.aio.Server, Sandbox]:
    """Start the sandbox (its reaper), then serve AgentService + Health on unix:socket_path.
    Returns the started server and the Sandbox. Raises OSError when it cannot listen."""
    sandbox = Sandbox(config)
    sandbox.start()
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE),
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.so_reuseport", 0),
    ])
    server.add_generic_rpc_handlers(generic_handlers(handlers(sandbox)))
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(os.path.abspath(socket_path)), exist_ok=True)
    old = os.umask(0o077)
    try:
        if server.add_insecure_port("unix:" + socket_path) == 0:
            raise OSError(f"cannot listen on unix:{socket_path}")
        await server.start()
    finally:
        os.umask(old)
    log.info("agent gRPC service on unix:%s (runc %s, state %s)", socket_path, config.runc,
             config.state_dir)
    return server, sandbox


async def stop_grpc_server(server: grpc.aio.Server, sandbox: Sandbox, grace: float = 1.0) -> None:
    """Stop serving (``grace`` seconds for calls in flight), then remove every container and
    unmount storages."""
    await server.stop(grace)
    await sandbox.shutdown()
