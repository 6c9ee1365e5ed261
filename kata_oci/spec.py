"""OCI JSON (a bundle's config.json) <-> katapb (oci.proto) messages.

oci.proto mirrors the OCI runtime spec with Go's CamelCase field names
(``UIDMappings``, ``OOMScoreAdj``, ``CgroupsPath``); config.json uses the spec's own
(``uidMappings``, ``oomScoreAdj``, ``cgroupsPath``). :func:`oci_name` maps one to the
other in both directions: the runtime fills messages from JSON (:func:`message_from_dict`),
the agent turns them back into the JSON runc reads (:func:`message_to_oci`), so a spec
sent to the agent is, there, the spec that was read here.

proto3 cannot tell a zero from "unset": a JSON ``0`` / ``false`` / ``""`` arrives at the
agent as absent, which for the spec's optional (pointer) fields is the only safe
reading. JSON keys the proto does not have (extensions, ``solaris``/``windows``
content) are ignored, as runc ignores unknown fields. A value of the wrong type is a
:class:`SpecError` naming its place (``process.args[1]: expected a string``).
"""

from __future__ import annotations

import os
import re

from kata_oci.schema import field_kind, is_map_field, is_repeated

#: Where the agent mounts the 9p share "kataShared" (CreateSandbox's Storage mount point).
GUEST_SHARED_DIR = "/run/kata-containers/shared/containers/"
#: The sandbox's shared memory in the guest: a tmpfs the agent mounts from CreateSandbox's
#: "ephemeral" Storage; containers' /dev/shm bind mounts point here (Kata 1.x: kataGuestSandboxDir
#: + "shm", virtcontainers kata_agent.go handleShm).
GUEST_SANDBOX_SHM = "/run/kata-containers/sandbox/shm"

# Names the generic rule gets wrong.
_SPECIAL = {
    ("Spec", "Version"): "ociVersion",
    ("LinuxHugepageLimit", "Pagesize"): "pageSize",
}

#: (low, high) of each integer kind of oci.proto (kata_oci.schema's names).
_INT_RANGES = {
    "uint32": (0, (1 << 32) - 1),
    "int32": (-(1 << 31), (1 << 31) - 1),
    "uint64": (0, (1 << 64) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1),
}


class SpecError(ValueError):
    """The bundle or its config.json cannot be used; the message names the place."""


def oci_name(message: str, field: str) -> str:
    """The config.json key of oci.proto field ``message.field`` (``Linux.UIDMappings`` -> ``uidMappings``).

    The leading run of capitals is lower-cased, except its last letter when a
    lower-case letter follows (``OOMScoreAdj`` -> ``oomScoreAdj``, ``HostID`` ->
    ``hostID``, ``CPU`` -> ``cpu``); ``Spec.Version`` is ``ociVersion`` and
    ``LinuxHugepageLimit.Pagesize`` is ``pageSize``.
    """
    special = _SPECIAL.get((message, field))
    if special:
        return special
    m = re.match(r"^[A-Z0-9]+", field)
    if not m:
        return field
    run = m.group(0)
    if len(run) == len(field):
        return field.lower()
    if len(run) == 1:
        return field[0].lower() + field[1:]
    return run[:-1].lower() + field[len(run) - 1:]


# ------------------------------------------------------------------ bundle


def load_bundle_config(bundle: str) -> dict:
    """Read and check ``<bundle>/config.json``; returns the parsed spec (a dict).

    Checks what runc checks before it creates anything: the bundle is a directory,
    config.json is a JSON object, ``process`` exists with non-empty ``args`` and an
    absolute ``cwd``, ``root.path`` is set and names a directory (relative paths are
    relative to the bundle). Raises SpecError with a one-line message.
    """
    if not os.path.isdir(bundle):
        raise SpecError(f"bundle {bundle}: no such directory")
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SpecError(f"bundle {bundle}: config.json: no such file") from None
    except OSError as e:
        raise SpecError(f"bundle {bundle}: config.json: {e.strerror}") from None
    import json  # not at import: kata-agent imports this module on its start path

    try:
        spec = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise SpecError(f"bundle {bundle}: config.json is not valid JSON: {e}") from None
    if not isinstance(spec, dict):
        raise SpecError(f"bundle {bundle}: config.json must hold a JSON object")
    check_process(spec.get("process"), "process")
    root = spec.get("root")
    if not isinstance(root, dict) or not isinstance(root.get("path"), str) or not root["path"]:
        raise SpecError(f"bundle {bundle}: config.json: root.path must be set")
    rootfs = rootfs_path(bundle, spec)
    if not os.path.isdir(rootfs):
        raise SpecError(f"bundle {bundle}: rootfs {rootfs} does not exist")
    return spec


def rootfs_path(bundle: str, spec: dict) -> str:
    """The host path of the container's root filesystem (``root.path``, relative to the bundle)."""
    return os.path.normpath(os.path.join(os.path.abspath(bundle), spec["root"]["path"]))


def check_process(process, where: str) -> None:
    """A process object as runc requires it: ``args`` non-empty strings, ``cwd`` absolute."""
    if not isinstance(process, dict):
        raise SpecError(f"config.json: {where} must be an object")
    args = process.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args) or not args[0]:
        raise SpecError(f"config.json: {where}.args must be a non-empty list of strings")
    cwd = process.get("cwd", "/")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise SpecError(f"config.json: {where}.cwd must be an absolute path (got {cwd!r})")


def guest_rootfs(container_id: str) -> str:
    """Where the agent sees a container's rootfs: ``/run/kata-containers/shared/containers/<id>/rootfs``."""
    return f"{GUEST_SHARED_DIR}{container_id}/rootfs"


def guest_shared_path(name: str) -> str:
    """Where the agent sees an entry ``name`` of the sandbox's shared dir (a host file or directory
    the runtime bind-mounted there for a container's mount): ``/run/kata-containers/shared/containers/<name>``."""
    return f"{GUEST_SHARED_DIR}{name}"


# ------------------------------------------------------------------ checks (no protobuf)


def check_spec(spec: dict) -> None:
    """Check every config.json value oci.proto carries for its type and range, as
    :func:`container_spec` would, without loading protobuf (kata_oci.schema's table).

    Raises the SpecError container_spec would raise (``process.user.uid: expected an
    integer``); a spec that passes is one container_spec translates."""
    check_message(spec, "Spec", "")


def check_message(data, message: str, where: str) -> None:
    """Check the OCI JSON object ``data`` against oci.proto message ``message`` (its name);
    ``where`` is its JSON path ("" for the top level). Raises SpecError."""
    from kata_oci.schema_table import SCHEMA

    if not isinstance(data, dict):
        raise SpecError(f"config.json: {where or 'the spec'} must be an object")
    for key, kind, repeated, ref in SCHEMA[message]:
        value = data.get(key)
        if value is not None:
            _check_value(value, key, kind, repeated, ref, f"{where}.{key}" if where else key)


def _check_value(value, key: str, kind: str, repeated: bool, ref, place: str) -> None:
    if kind == "map":
        if not isinstance(value, dict):
            raise SpecError(f"config.json: {place}: expected an object")
        for k, v in value.items():
            _check_one(v, key, *_map_value(ref), f"{place}.{k}")
    elif repeated:
        if not isinstance(value, list):
            raise SpecError(f"config.json: {place}: expected a list")
        for i, item in enumerate(value):
            _check_one(item, key, kind, ref, f"{place}[{i}]")
    else:
        _check_one(value, key, kind, ref, place)


def _map_value(ref: str) -> tuple[str, str | None]:
    return ("message", ref[len("message:"):]) if ref.startswith("message:") else (ref, None)


def _check_one(value, key: str, kind: str, ref, place: str) -> None:
    if kind == "message":
        check_message(value, ref, place)
    else:
        _scalar(kind, key, value, place)


# ------------------------------------------------------------------ messages


def container_spec(spec: dict, container_id: str):
    """config.json (a dict from :func:`load_bundle_config`) -> ``oci_pb2.Spec`` for CreateContainer.

    Root.Path becomes the rootfs as the guest sees it (:func:`guest_rootfs`, where the
    runtime shares the bundle's rootfs); Root.Readonly is kept. Raises SpecError.
    """
    from katapb import oci_pb2

    pb = message_from_dict(spec, oci_pb2.Spec(), "")
    pb.Root.Path = guest_rootfs(container_id)
    return pb


def process_spec(process: dict):
    """An OCI process object (config.json's ``process``, or runc exec's process.json) -> ``oci_pb2.Process``."""
    from katapb import oci_pb2

    check_process(process, "process")
    return message_from_dict(process, oci_pb2.Process(), "process")


def resources_spec(resources: dict):
    """An OCI ``linux.resources`` object (runc update's --resources) -> ``oci_pb2.LinuxResources``."""
    from katapb import oci_pb2

    if not isinstance(resources, dict):
        raise SpecError("resources must be a JSON object")
    return message_from_dict(resources, oci_pb2.LinuxResources(), "resources")


def message_from_dict(data: dict, msg, where: str):
    """Fill protobuf message ``msg`` from the OCI JSON object ``data``; returns ``msg``.

    ``where`` is the JSON path of ``data`` for error messages ("" for the top level).
    Keys are matched with :func:`oci_name`; ``null`` values are skipped.
    """
    if not isinstance(data, dict):
        raise SpecError(f"config.json: {where or 'the spec'} must be an object")
    mname = msg.DESCRIPTOR.name
    for field in msg.DESCRIPTOR.fields:
        key = oci_name(mname, field.name)
        value = data.get(key)
        if value is None:
            continue
        place = f"{where}.{key}" if where else key
        _set_field(msg, field, value, place)
    return msg


def message_to_oci(msg) -> dict:
    """A katapb OCI message -> its OCI JSON object (the agent's direction).

    Fields at their proto3 default are omitted, which for the spec's optional (pointer)
    fields means "unset" -- the only safe reading of a proto3 zero."""
    out = {}
    mname = msg.DESCRIPTOR.name
    for field, value in msg.ListFields():
        key = oci_name(mname, field.name)
        if is_map_field(field):
            vfield = field.message_type.fields_by_name["value"]
            if vfield.message_type is not None:
                out[key] = {k: message_to_oci(v) for k, v in value.items()}
            else:
                out[key] = dict(value)
        elif is_repeated(field):
            if field.message_type is not None:
                out[key] = [message_to_oci(v) for v in value]
            else:
                out[key] = list(value)
        elif field.message_type is not None:
            out[key] = message_to_oci(value)
        else:
            out[key] = value
    return out


def _set_field(msg, field, value, place: str) -> None:
    if is_map_field(field):
        _set_map(getattr(msg, field.name), field.message_type, value, place)
    elif is_repeated(field):
        if not isinstance(value, list):
            raise SpecError(f"config.json: {place}: expected a list")
        target = getattr(msg, field.name)
        for i, item in enumerate(value):
            if field.message_type is not None:
                message_from_dict(item, target.add(), f"{place}[{i}]")
            else:
                target.append(_scalar(field_kind(field), field.name, item, f"{place}[{i}]"))
    elif field.message_type is not None:
        message_from_dict(value, getattr(msg, field.name), place)
    else:
        setattr(msg, field.name, _scalar(field_kind(field), field.name, value, place))


def _set_map(target, entry_type, value, place: str) -> None:
    if not isinstance(value, dict):
        raise SpecError(f"config.json: {place}: expected an object")
    vfield = entry_type.fields_by_name["value"]
    for k, v in value.items():
        if vfield.message_type is not None:
            message_from_dict(v, target[k], f"{place}.{k}")
        else:
            target[k] = _scalar(field_kind(vfield), vfield.name, v, f"{place}.{k}")


def _scalar(kind: str, name: str, value, place: str):
    """A JSON value checked (and converted) for a field of ``kind`` (kata_oci.schema's names);
    ``name`` is the field's proto or JSON name. Raises SpecError naming ``place``."""
    if kind == "string":
        if not isinstance(value, str):
            raise SpecError(f"config.json: {place}: expected a string")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise SpecError(f"config.json: {place}: expected true or false")
        return value
    if kind == "bytes":
        if not isinstance(value, str):
            raise SpecError(f"config.json: {place}: expected a string")
        return value.encode()
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise SpecError(f"config.json: {place}: expected an integer")
    if name in ("OOMScoreAdj", "oomScoreAdj") and -1000 <= value < 0:
        # oci.proto carries the signed oomScoreAdj as uint32: the agent unwraps it.
        return value + (1 << 32)
    lo, hi = _INT_RANGES[kind]
    if not lo <= value <= hi:
        raise SpecError(f"config.json: {place}: {value} is out of range")
    return value
