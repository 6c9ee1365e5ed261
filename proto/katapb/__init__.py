"""Generated Python code of the kata-py agent API (Kata Containers 1.x wire format).

Services (proto package ``grpc``):

* ``grpc.AgentService`` -- containers, processes, stdio, guest networking and
  sandbox calls (``agent_pb2`` / ``agent_pb2_grpc``);
* ``grpc.Health`` -- ``Check`` and ``Version`` (``health_pb2`` / ``health_pb2_grpc``).

Messages of the OCI spec are in ``oci_pb2``; guest network types (proto package
``types``) in ``types_pb2``. Sources: ``proto/katapb/*.proto``; regenerate with
``make proto``.
"""
