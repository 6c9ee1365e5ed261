"""Pods: which sandbox a container belongs to, from the CRI annotations of its OCI spec.

A container engine that runs pods (containerd's CRI plugin, CRI-O, the kubelet's dockershim)
creates the pod's *sandbox container* first (the pause container) and then each of the pod's
containers, marking every spec with two annotations. Kata 1.x read them in this order
(virtcontainers/pkg/oci/utils.go, ``ContainerType`` and ``SandboxID``); so do we:

=================  ====================================  ============================  ===================
engine             container type key                    values (sandbox, container)   sandbox id key
=================  ====================================  ============================  ===================
containerd CRI     ``io.kubernetes.cri.container-type``  ``sandbox``, ``container``    ``io.kubernetes.cri.sandbox-id``
CRI-O              ``io.kubernetes.cri-o.ContainerType`` ``sandbox``, ``container``    ``io.kubernetes.cri-o.SandboxID``
dockershim         ``io.kubernetes.docker.type``         ``podsandbox``, ``container`` ``io.kubernetes.sandbox.id``
=================  ====================================  ============================  ===================

The first type key present decides. No type key at all: the container is a sandbox of its own
(``docker run``, ``ctr run``: one container, one VM). A sandbox container's sandbox id is its own
id (the CRI plugins name the pod sandbox after it). Standard library only.
"""

from __future__ import annotations

from kata_runtime.errors import InvalidArgument

SANDBOX = "sandbox"
CONTAINER = "container"

#: (type key, {value: role}, sandbox id key), in Kata 1.x's order.
CRI_KEYS = (
    ("io.kubernetes.cri.container-type", {"sandbox": SANDBOX, "container": CONTAINER},
     "io.kubernetes.cri.sandbox-id"),
    ("io.kubernetes.cri-o.ContainerType", {"sandbox": SANDBOX, "container": CONTAINER},
     "io.kubernetes.cri-o.SandboxID"),
    ("io.kubernetes.docker.type", {"podsandbox": SANDBOX, "container": CONTAINER},
     "io.kubernetes.sandbox.id"),
)


def pod_role(container_id: str, annotations: dict | None) -> tuple[str, str]:
    """``(SANDBOX, container_id)`` for a container that gets a sandbox (VM) of its own, or
    ``(CONTAINER, sandbox id)`` for one that joins a running sandbox.

    Raises InvalidArgument (one line) for an unknown container type, a joining container
    without a sandbox id, or one that names itself as its sandbox.
    """
    annotations = annotations or {}
    for type_key, roles, id_key in CRI_KEYS:
        if type_key not in annotations:
            continue
        value = annotations[type_key]
        role = roles.get(value)
        if role is None:
            raise InvalidArgument(f"unknown container type {value!r} in annotation {type_key} "
                                  f"(expected one of: {', '.join(roles)})")
        if role == SANDBOX:
            return SANDBOX, container_id
        return CONTAINER, _sandbox_id(container_id, annotations, type_key)
    return SANDBOX, container_id


def _sandbox_id(container_id: str, annotations: dict, type_key: str) -> str:
    """The sandbox a ``container``-type container joins: the first sandbox id key present."""
    for _, _, id_key in CRI_KEYS:
        sandbox_id = annotations.get(id_key)
        if sandbox_id:
            if sandbox_id == container_id:
                raise InvalidArgument(f"container {container_id} is of type container ({type_key}) but names "
                                      f"itself as its sandbox ({id_key})")
            return sandbox_id
    keys = ", ".join(id_key for _, _, id_key in CRI_KEYS)
    raise InvalidArgument(f"container {container_id} is of type container ({type_key}) but names no sandbox "
                          f"to join (none of: {keys})")
