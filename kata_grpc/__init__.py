"""kata_grpc: a small blocking gRPC client (unary calls over HTTP/2 on a unix socket), no grpcio.

* ``h2`` — a sans-IO HTTP/2 client core for unary gRPC calls (and the gRPC status codes);
* ``hpack`` — HPACK: a full decoder, a tiny encoder;
* ``pb`` — protobuf wire format by hand, for small messages;
* ``client`` — :class:`kata_grpc.client.Channel`: one connection, one call at a time.

Used by kata-shim (every call of its pumps) and kata-runtime (its unary agent calls): both
are processes whose start-up and memory matter more than a general client's features.
Imports nothing of ours (bottom level) and nothing beyond the standard library.
"""
