"""kata_oci: config.json -> oci.Spec on the wire, and the agent's translation back (unit tests).

The runtime and the agent translate in opposite directions with one naming rule; a spec
sent to the agent and turned back into JSON there must be the spec the bundle holds. The
runtime encodes without protobuf (kata_oci.encode_message): its bytes are checked against
protobuf's own for messages filled field by field with protobuf's setters."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from kata_agent.spec import message_to_oci, oci_name as agent_oci_name
from kata_oci import (SpecError, check_spec, container_spec, encode_message, guest_rootfs, load_bundle_config,
                      oci_name, process_spec, resources_spec)
from kata_oci.schema import field_kind, is_map_field, is_repeated, render, schema_from_descriptors
from kata_oci.schema_table import SCHEMA
from katapb import oci_pb2
from tests.support.oci import make_bundle
from tests.support.processes import python_prints


def all_fields():
    seen, todo, out = set(), [oci_pb2.Spec.DESCRIPTOR], []
    while todo:
        desc = todo.pop()
        if desc.full_name in seen:
            continue
        seen.add(desc.full_name)
        for f in desc.fields:
            out.append((desc.name, f.name))
            if f.message_type is not None:
                todo.append(f.message_type)
    return out


@pytest.mark.parametrize("message, field", all_fields())
def test_naming_rule_is_the_agents(message, field):
    assert oci_name(message, field) == agent_oci_name(message, field)


@pytest.mark.parametrize("message, field, name", [
    ("Linux", "UIDMappings", "uidMappings"), ("Process", "OOMScoreAdj", "oomScoreAdj"),
    ("LinuxIDMapping", "HostID", "hostID"), ("LinuxResources", "CPU", "cpu"), ("Spec", "Version", "ociVersion"),
    ("LinuxHugepageLimit", "Pagesize", "pageSize"), ("Mount", "destination", "destination"),
    ("Linux", "CgroupsPath", "cgroupsPath"), ("LinuxBlockIO", "ThrottleReadIOPSDevice", "throttleReadIOPSDevice"),
])
def test_known_names(message, field, name):
    assert oci_name(message, field) == name


def bundle_config(tmp_path) -> dict:
    b = make_bundle(tmp_path / "b", ["sh", "-c", "echo hi"], terminal=True, console_size=(30, 100),
                    annotations={"a": "1"})
    spec = load_bundle_config(str(b))
    spec["process"]["oomScoreAdj"] = -500
    spec["process"]["user"]["additionalGids"] = [5, 6]
    spec["linux"]["sysctl"] = {"net.ipv4.ip_forward": "1"}
    spec["linux"]["uidMappings"] = [{"containerID": 1, "hostID": 1000, "size": 10}]
    spec["linux"]["resources"].update(memory={"limit": 1 << 26, "swap": -1}, cpu={"shares": 512, "cpus": "0"},
                                      pids={"limit": 10}, hugepageLimits=[{"pageSize": "2MB", "limit": 4096}])
    return spec


def test_container_spec_round_trips_through_the_agent(tmp_path):
    spec = bundle_config(tmp_path)
    back = message_to_oci(oci_pb2.Spec.FromString(container_spec(spec, "c1")))
    assert back["root"] == {"path": guest_rootfs("c1")}  # readonly false is proto3's "unset"
    assert back["root"]["path"] == "/run/kata-containers/shared/containers/c1/rootfs"
    back["process"]["oomScoreAdj"] -= 1 << 32  # uint32 on the wire; the agent unwraps it
    # uid 0 / gid 0 are proto3 zeros: absent on the wire, the agent's defaults (0) again.
    assert back["process"] == spec["process"] | {"user": {"additionalGids": [5, 6]}}
    assert back["mounts"] == spec["mounts"] and back["annotations"] == {"a": "1"}
    assert back["linux"]["resources"] == spec["linux"]["resources"] | {"devices": [{"access": "rwm"}]}
    assert back["linux"]["sysctl"] == spec["linux"]["sysctl"]
    assert back["linux"]["uidMappings"] == spec["linux"]["uidMappings"]
    assert back["ociVersion"] == "1.0.2-dev" and back["hostname"] == "kata-test"


@pytest.mark.parametrize("change, message", [
    ({"args": "sh"}, "process.args must be a non-empty list of strings"),
    ({"args": []}, "process.args must be a non-empty list of strings"),
    ({"cwd": "tmp"}, "process.cwd must be an absolute path"),
    ({"terminal": "yes"}, "process.terminal: expected true or false"),
    ({"env": "A=1"}, "process.env: expected a list"),
    ({"user": {"uid": -1}}, "process.user.uid: -1 is out of range"),
    ({"rlimits": [{"type": 1}]}, "process.rlimits[0].type: expected a string"),
    ({"consoleSize": [1, 2]}, "process.consoleSize must be an object"),
])
def test_wrong_types_name_their_place(tmp_path, change, message):
    spec = bundle_config(tmp_path)
    spec["process"].update(change)
    with pytest.raises(SpecError) as info:
        process_spec(spec["process"]) if "args" in change or "cwd" in change else container_spec(spec, "c")
    assert message in str(info.value)


def test_resources_spec():
    pb = oci_pb2.LinuxResources.FromString(
        resources_spec({"pids": {"limit": 20}, "memory": {"limit": 1 << 26}, "cpu": {"quota": 50000, "period": 100000}}))
    assert message_to_oci(pb) == {"pids": {"limit": 20}, "memory": {"limit": 1 << 26},
                                  "cpu": {"quota": 50000, "period": 100000}}
    with pytest.raises(SpecError, match="resources.pids.limit: expected an integer"):
        resources_spec({"pids": {"limit": "many"}})


@pytest.mark.parametrize("breakage, message", [
    (lambda b: (b / "config.json").unlink(), "config.json: no such file"),
    (lambda b: (b / "config.json").write_text("[]"), "config.json must hold a JSON object"),
    (lambda b: (b / "config.json").write_text('{"process": {"args": ["x"]}}'), "root.path must be set"),
    (lambda b: (b / "config.json").write_text('{"root": {"path": "r"}}'), "process must be an object"),
])
def test_bundle_errors(tmp_path, breakage, message):
    b = make_bundle(tmp_path / "b", ["true"])
    breakage(b)
    with pytest.raises(SpecError, match=message.replace("(", r"\(")):
        load_bundle_config(str(b))


scalars = st.one_of(st.text(max_size=5), st.integers(-5, 5), st.booleans(), st.none())
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=10)


@given(st.dictionaries(st.sampled_from(["terminal", "args", "env", "cwd", "user", "rlimits", "capabilities",
                                        "consoleSize", "oomScoreAdj", "noNewPrivileges", "x-extension"]),
                       json_values, max_size=6))
def test_any_process_json_is_translated_or_refused_with_a_spec_error(process):
    try:
        pb = oci_pb2.Process.FromString(process_spec(process))
    except SpecError as e:
        assert "\n" not in str(e)
        return
    assert list(pb.Args) == process["args"]


def _outcome(fn, *args):
    try:
        fn(*args)
    except SpecError as e:
        return str(e)
    return None


# -- the encoding against protobuf's own


def protobuf_filled(data, msg, where: str):
    """The reference: protobuf message ``msg`` filled from the OCI JSON object ``data`` with
    protobuf's own setters (so its presence rules are the library's), field by field in
    number order, values converted by kata_oci's scalar rule; returns ``msg``."""
    from kata_oci.spec import _scalar

    if not isinstance(data, dict):
        raise SpecError(f"config.json: {where or 'the spec'} must be an object")
    for field in sorted(msg.DESCRIPTOR.fields, key=lambda f: f.number):
        key = oci_name(msg.DESCRIPTOR.name, field.name)
        value = data.get(key)
        if value is None:
            continue
        place = f"{where}.{key}" if where else key
        if is_map_field(field):
            if not isinstance(value, dict):
                raise SpecError(f"config.json: {place}: expected an object")
            vfield = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                getattr(msg, field.name)[k] = _scalar(field_kind(vfield), key, v, f"{place}.{k}")
        elif is_repeated(field):
            if not isinstance(value, list):
                raise SpecError(f"config.json: {place}: expected a list")
            for i, item in enumerate(value):
                if field.message_type is not None:
                    protobuf_filled(item, getattr(msg, field.name).add(), f"{place}[{i}]")
                else:
                    getattr(msg, field.name).append(_scalar(field_kind(field), key, item, f"{place}[{i}]"))
        elif field.message_type is not None:
            protobuf_filled(value, getattr(msg, field.name), place)
        else:
            setattr(msg, field.name, _scalar(field_kind(field), key, value, place))
    return msg


_INTS = {"uint32": (0, (1 << 32) - 1), "int32": (-(1 << 31), (1 << 31) - 1),
         "uint64": (0, (1 << 64) - 1), "int64": (-(1 << 63), (1 << 63) - 1)}


def _scalar_values(kind: str):
    if kind == "string":
        return st.text(max_size=4)
    if kind == "bool":
        return st.booleans()
    lo, hi = _INTS[kind]
    return st.one_of(st.sampled_from([0, 1, lo, hi]), st.integers(lo, hi))


def oci_objects(message: str):
    """OCI JSON objects of oci.proto message ``message``: any subset of its fields, each with a
    value of its type (zeros, empties and nulls included)."""
    optional = {}
    for key, kind, repeated, ref, _number in SCHEMA[message]:
        if kind == "map":
            values = st.dictionaries(st.text(max_size=3), _scalar_values(ref), max_size=3)
        else:
            values = oci_objects(ref) if kind == "message" else _scalar_values(kind)
            if repeated:
                values = st.lists(values, max_size=2)
        optional[key] = st.one_of(st.none(), values)
    return st.fixed_dictionaries({}, optional=optional)


SPECS = oci_objects("Spec")


@given(SPECS)
def test_encoded_spec_is_protobufs_serialisation(spec):
    """Every field kind, zeros, empty sub-objects, repeated and map entries: the bytes are
    protobuf's (deterministic) for the message filled with its setters. Map entries are sorted
    by key; upb's deterministic order differs (it puts "ab" before "a"), so with two entries or
    more the message is compared after protobuf re-serialises ours."""
    ours = bytes(encode_message(spec, "Spec", "") or b"")
    expected = protobuf_filled(spec, oci_pb2.Spec(), "").SerializeToString(deterministic=True)
    assert oci_pb2.Spec.FromString(ours).SerializeToString(deterministic=True) == expected
    if len(spec.get("annotations") or {}) < 2 and len((spec.get("linux") or {}).get("sysctl") or {}) < 2:
        assert ours == expected


@given(st.dictionaries(st.sampled_from(["terminal", "env", "user", "rlimits", "capabilities", "consoleSize",
                                        "oomScoreAdj", "noNewPrivileges", "x-extension"]),
                       json_values, max_size=6),
       st.dictionaries(st.sampled_from(["sysctl", "uidMappings", "resources", "cgroupsPath", "namespaces"]),
                       json_values, max_size=3))
def test_any_json_is_encoded_as_protobuf_would_or_refused_with_its_error(process, linux):
    spec = {"ociVersion": "1.0.2", "process": {"args": ["true"], "cwd": "/", **process},
            "root": {"path": "rootfs"}, "linux": linux, "annotations": {"a": "1"}}
    try:
        expected = protobuf_filled(spec, oci_pb2.Spec(), "").SerializeToString(deterministic=True)
    except SpecError as e:
        expected = str(e)
    assert _outcome(check_spec, spec) == (expected if isinstance(expected, str) else None)
    try:
        ours = bytes(encode_message(spec, "Spec", "") or b"")
        ours = oci_pb2.Spec.FromString(ours).SerializeToString(deterministic=True)
    except SpecError as e:
        ours = str(e)
    assert ours == expected


def test_zeros_and_presence_on_the_wire():
    """proto3: a zero is absent, but a sub-message with a field set to zero is present (empty);
    repeated integers are packed; a negative oomScoreAdj travels as uint32."""
    assert encode_message({"root": {"readonly": False}}, "Spec", "") == b"\x1a\x00"
    assert encode_message({"root": {}}, "Spec", "") is None
    assert encode_message({"process": {"user": {"additionalGids": [5, 300]}}}, "Spec", "") == \
        b"\x12\x07\x1a\x05\x1a\x03\x05\xac\x02"  # Spec.Process(2).User(3).AdditionalGids(3), packed
    assert oci_pb2.Process.FromString(bytes(encode_message({"oomScoreAdj": -5}, "Process", ""))).OOMScoreAdj == \
        (1 << 32) - 5
    assert encode_message({"annotations": {"b": "", "a": "1"}}, "Spec", "") == \
        b":\x06\n\x01a\x12\x011:\x05\n\x01b\x12\x00"  # sorted; an empty value written


def test_check_spec_passes_a_full_bundle(tmp_path):
    check_spec(bundle_config(tmp_path))


def test_schema_table_is_generated_from_oci_proto():
    """kata_oci/schema_table.py is ``python -m kata_oci.schema``'s output for today's oci.proto."""
    import kata_oci.schema_table as table

    with open(table.__file__) as f:
        assert f.read() == render(schema_from_descriptors(oci_pb2.Spec.DESCRIPTOR))


def test_check_and_encode_load_no_protobuf(tmp_path):
    spec = bundle_config(tmp_path)
    code = ("import json, sys; from kata_oci import check_spec, container_spec; s = json.loads(sys.stdin.read()); "
            "check_spec(s); container_spec(s, 'c'); "
            "print(sorted(m for m in sys.modules if m.startswith(('google', 'katapb'))))")
    assert python_prints(code, stdin=json.dumps(spec)) == "[]"


def test_map_fields_are_found_without_descriptor_options():
    """kata_oci.schema.is_map_field reads the descriptors' structure; GetOptions().map_entry
    (which imports descriptor_pb2) must agree on every field of every katapb message."""
    from katapb import agent_pb2, cache_pb2, health_pb2, oci_pb2, types_pb2

    from kata_oci.schema import is_map_field

    def messages(descriptor):
        yield descriptor
        for nested in descriptor.nested_types:
            yield from messages(nested)

    checked = maps = 0
    for module in (agent_pb2, cache_pb2, health_pb2, oci_pb2, types_pb2):
        for top in module.DESCRIPTOR.message_types_by_name.values():
            for message in messages(top):
                for field in message.fields:
                    expected = field.message_type is not None and field.message_type.GetOptions().map_entry
                    assert is_map_field(field) == expected, field.full_name
                    checked += 1
                    maps += expected
    assert checked > 300 and maps >= 4


@pytest.mark.parametrize("spec, place", [
    ({"hostname": "\ud800"}, "hostname"),
    ({"process": {"args": ["sh", "x\udfff"]}}, "process.args[1]"),
    ({"annotations": {"\ud800": "v"}}, "annotations key"),
    ({"annotations": {"k": "\ud800"}}, "annotations.k"),
])
def test_a_lone_surrogate_is_a_spec_error_naming_its_place(spec, place):
    """JSON's \\ud800 escapes make strings protobuf cannot carry (UTF-8): the runtime said
    "internal error: UnicodeEncodeError" (and, before kata_oci encoded by itself, only after
    the guest had started)."""
    with pytest.raises(SpecError) as info:
        check_spec(spec)
    assert str(info.value).startswith(f"config.json: {place}") and "not valid Unicode" in str(info.value)
    str(info.value).encode()  # the message itself can be printed
