"""OCI JSON (a bundle's config.json) <-> katapb (oci.proto) messages.

oci.proto mirrors the OCI runtime spec with Go's CamelCase field names
(``UIDMappings``, ``OOMScoreAdj``, ``CgroupsPath``); config.json uses the spec's own
(``uidMappings``, ``oomScoreAdj``, ``cgroupsPath``). :func:`oci_name` maps one to the
other in both directions: the runtime encodes messages from JSON (:func:`encode_message`,
over kata_oci.schema's table, without protobuf), the agent turns them back into the JSON
runc reads (:func:`message_to_oci`), so a spec sent to the agent is, there, the spec that
was read here.

proto3 cannot tell a zero from "unset": a JSON ``0`` / ``false`` / ``""`` arrives at the
agent as absent, which for the spec's optional (pointer) fields is the only safe
reading. JSON keys the proto does not have (extensions, ``solaris``/``windows``
content) are ignored, as runc ignores unknown fields. A value of the wrong type is a
:class:`SpecError` naming its place (``process.args[1]: expected a string``).
"""

from __future__ import annotations

import os

from kata_grpc.pb import key as wire_key, length_delimited, varint
from kata_oci.schema import is_map_field, is_repeated

#: Where the agent mounts the 9p share "kataShared" (CreateSandbox's Storage mount point).
GUEST_SHARED_DIR = "/run/kata-containers/shared/containers/"
#: The sandbox's shared memory in the guest: a tmpfs the agent mounts from CreateSandbox's
#: "ephemeral" Storage; containers' /dev/shm bind mounts point here (Kata 1.x: kataGuestSandboxDir
#: + "shm", virtcontainers kata_agent.go handleShm).
GUEST_SANDBOX_SHM = "/run/kata-containers/sandbox/shm"

#: What the leading run of oci_name's rule is made of (a set, not a regular expression: the
#: ``re`` import costs kata-runtime's create ~4 ms).
_RUN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")

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
    n = 0  # the leading run of capitals and digits
    while n < len(field) and field[n] in _RUN:
        n += 1
    if not n:
        return field
    run = field[:n]
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
    from kata_log import cjson  # json's C codec without json's imports (re, enum): ~2 ms of a create

    try:
        spec = cjson.loads(data)
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


# ------------------------------------------------------------------ messages (no protobuf)


def check_spec(spec: dict) -> None:
    """Check every config.json value oci.proto carries for its type and range, as
    :func:`container_spec` does (it is the same walk, its bytes dropped).

    Raises the SpecError container_spec would raise (``process.user.uid: expected an
    integer``); a spec that passes is one container_spec translates."""
    encode_message(spec, "Spec", "")


def container_spec(spec: dict, container_id: str) -> bytes:
    """config.json (a dict from :func:`load_bundle_config`) -> CreateContainer's ``oci.Spec``, encoded.

    Root.Path becomes the rootfs as the guest sees it (:func:`guest_rootfs`, where the
    runtime shares the bundle's rootfs); Root.Readonly is kept. Raises SpecError.
    """
    root = spec.get("root")
    if isinstance(root, dict):
        spec = {**spec, "root": {**root, "path": guest_rootfs(container_id)}}
    return _message_bytes(spec, "Spec", "")


def process_spec(process: dict) -> bytes:
    """An OCI process object (config.json's ``process``, or runc exec's process.json) ->
    ExecProcess's ``oci.Process``, encoded. Raises SpecError."""
    check_process(process, "process")
    return _message_bytes(process, "Process", "process")


def resources_spec(resources: dict) -> bytes:
    """An OCI ``linux.resources`` object (runc update's --resources) -> UpdateContainer's
    ``oci.LinuxResources``, encoded. Raises SpecError."""
    if not isinstance(resources, dict):
        raise SpecError("resources must be a JSON object")
    return _message_bytes(resources, "LinuxResources", "resources")


def _message_bytes(data: dict, message: str, where: str) -> bytes:
    """:func:`encode_message` for a message that is present even when no field is set (a
    request's OCI field): its encoding, empty then."""
    return bytes(encode_message(data, message, where) or b"")


def encode_message(data, message: str, where: str) -> bytearray | None:
    """The OCI JSON object ``data`` as oci.proto message ``message`` (its name) on the
    protobuf wire, from kata_oci.schema's table: no protobuf import, which would cost a
    kata-runtime command ~30 ms. ``where`` is its JSON path for error messages ("" for the
    top level). Keys are matched with :func:`oci_name`; ``null`` values and keys oci.proto
    lacks are skipped; a value of the wrong type raises SpecError naming its place.

    Returns None when no field was set, else the encoding, exactly what protobuf's
    deterministic ``SerializeToString()`` makes of the message filled field by field (the
    unit tests compare the two): fields in number order; proto3 zeros omitted, but a
    sub-message any field of which was set (even to its zero) is present, possibly empty;
    every repeated element and map entry (key and value) written; repeated integers packed.
    Map entries are sorted by key (protobuf's upb sorts them its own way, "ab" before "a":
    the order carries no meaning)."""
    from kata_oci.schema_table import SCHEMA

    if not isinstance(data, dict):
        raise SpecError(f"config.json: {where or 'the spec'} must be an object")
    out = bytearray()
    touched = False
    for key, kind, repeated, ref, number in SCHEMA[message]:
        value = data.get(key)
        if value is not None:
            place = f"{where}.{key}" if where else key
            touched = _encode_field(out, value, key, kind, repeated, ref, number, place) or touched
    return out if touched else None


def _encode_field(out: bytearray, value, key: str, kind: str, repeated: bool, ref, number: int, place: str) -> bool:
    """Append one field's encoding to ``out``; whether it set anything (protobuf's "modified")."""
    if kind == "map":
        if not isinstance(value, dict):
            raise SpecError(f"config.json: {place}: expected an object")
        vkind, vref = ("message", ref[len("message:"):]) if ref.startswith("message:") else (ref, None)
        entries = []
        for k, v in value.items():
            entry = (length_delimited(1, _utf8(k, f"{place} key {k!r}"))
                     + _always(2, v, key, vkind, vref, f"{place}.{k}"))
            entries.append((k, length_delimited(number, entry)))
        out += b"".join(e for _, e in sorted(entries, key=lambda e: e[0]))
        return bool(entries)
    if repeated:
        if not isinstance(value, list):
            raise SpecError(f"config.json: {place}: expected a list")
        if kind in _INT_RANGES:  # packed, as proto3 writes repeated scalars of varint type
            packed = b"".join(varint(_scalar(kind, key, v, f"{place}[{i}]")) for i, v in enumerate(value))
            if packed:
                out += length_delimited(number, packed)
        else:
            for i, item in enumerate(value):
                out += _always(number, item, key, kind, ref, f"{place}[{i}]")
        return bool(value)
    if kind == "message":
        body = encode_message(value, ref, place)
        if body is None:
            return False
        out += length_delimited(number, body)
        return True
    scalar = _scalar(kind, key, value, place)
    if scalar:
        out += _scalar_field(number, kind, scalar, place)
    return True


def _always(number: int, value, key: str, kind: str, ref, place: str) -> bytes:
    """A repeated element or map value: written even when empty or zero."""
    if kind == "message":
        return length_delimited(number, _message_bytes(value, ref, place))
    return _scalar_field(number, kind, _scalar(kind, key, value, place), place)


def _scalar_field(number: int, kind: str, value, place: str) -> bytes:
    """Field ``number`` holding ``value`` (what :func:`_scalar` returned for ``kind``)."""
    if kind == "string":
        return length_delimited(number, _utf8(value, place))
    if kind == "bytes":
        return length_delimited(number, value)
    return wire_key(number, 0) + varint(int(value))


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


def _utf8(text: str, place: str) -> bytes:
    """``text`` as protobuf carries it, UTF-8; SpecError when it cannot be (JSON's ``\\ud800``
    escapes make lone surrogates)."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise SpecError(f"config.json: {place}: not valid Unicode (a lone surrogate)") from None


def _scalar(kind: str, name: str, value, place: str):
    """A JSON value checked (and converted) for a field of ``kind`` (kata_oci.schema's names);
    ``name`` is the field's proto or JSON name. Raises SpecError naming ``place``."""
    if kind == "string":
        if not isinstance(value, str):
            raise SpecError(f"config.json: {place}: expected a string")
        return value  # checked as UTF-8 where it is encoded (_scalar_field)
    if kind == "bool":
        if not isinstance(value, bool):
            raise SpecError(f"config.json: {place}: expected true or false")
        return value
    if kind == "bytes":
        if not isinstance(value, str):
            raise SpecError(f"config.json: {place}: expected a string")
        return _utf8(value, place)
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
