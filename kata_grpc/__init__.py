"""kata_grpc: unary gRPC over HTTP/2 without grpcio: a small blocking client and an asyncio server.

* ``protocol`` — the gRPC level (PROTOCOL-HTTP2.md): status codes, :class:`RpcError`, message
  framing, grpc-message percent-encoding, grpc-timeout;
* ``frames`` — the HTTP/2 frame layer both sides share (RFC 9113): parsing and dispatch by
  frame type, SETTINGS/PING/WINDOW_UPDATE/GOAWAY/RST_STREAM, padding, CONTINUATION, windows;
* ``hpack`` — HPACK: a full decoder, a tiny encoder;
* ``h2`` — the sans-IO client core (and, importable from it as before, the names above);
* ``client`` — :class:`kata_grpc.client.Channel`: one blocking connection, one call at a time;
* ``server`` — the sans-IO server core for unary calls (events in, frames out);
* ``aio`` — its asyncio skin: ``serve_connection`` (a stream pair or a yamux Stream) and
  ``serve_unix``, with handlers ``async def (request: bytes) -> bytes``;
* ``pb`` — protobuf wire format by hand, for small messages.

The client serves kata-shim (every call of its pumps) and kata-runtime (its unary agent calls),
the server kata-agent: processes whose start-up, memory and CPU per call matter more than a
general library's features.  Imports nothing of ours (bottom level) and nothing beyond the
standard library.
"""
