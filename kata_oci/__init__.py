"""OCI runtime spec <-> katapb (oci.proto) translation, shared by the host and the guest.

Below both kata_runtime and kata_agent: imports only the standard library and katapb
(the agent's direction reads katapb messages). The runtime reads a bundle's config.json and
sends the container's spec to the agent as an encoded ``oci.Spec``, never importing protobuf:

    spec = load_bundle_config(bundle)                 # dict, validated
    check_spec(spec)                                  # every value typed
    spec_bytes = container_spec(spec, container_id)   # oci.Spec on the wire, Root.Path in the guest

The agent goes the other way, ``message_to_oci(oci_pb2.Spec.FromString(...))`` (then
kata_agent/spec.py fits the spec to the guest); both follow one naming rule, :func:`oci_name`.
"""

from kata_oci.spec import (
    GUEST_SANDBOX_SHM,
    GUEST_SHARED_DIR,
    SpecError,
    check_spec,
    container_spec,
    guest_rootfs,
    guest_shared_path,
    encode_message,
    load_bundle_config,
    message_to_oci,
    oci_name,
    process_spec,
    resources_spec,
)

__all__ = [
    "GUEST_SANDBOX_SHM",
    "GUEST_SHARED_DIR",
    "SpecError",
    "check_spec",
    "container_spec",
    "guest_rootfs",
    "guest_shared_path",
    "encode_message",
    "load_bundle_config",
    "message_to_oci",
    "oci_name",
    "process_spec",
    "resources_spec",
]
