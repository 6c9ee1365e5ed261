"""The same sequence of commands against the host's runc and against kata-runtime: what a
caller parses must match (state JSON keys, list and ps formats, events keys, exit codes of
run and exec, error exit codes). Process tier."""

from __future__ import annotations

import json

import pytest

from tests.support.oci import make_bundle
from tests.support.processes import wait_for

pytestmark = pytest.mark.sandbox

ANNOTATIONS = {"org.kata-py.test": "compat"}


def keys(obj):
    return list(obj) if isinstance(obj, dict) else obj


def starts(line: str) -> list[int]:
    """Where each column of a table line starts."""
    return [i for i, ch in enumerate(line) if ch != " " and (i == 0 or line[i - 1] == " ")]


def observe(cli, tmp_path, cid: str) -> dict:
    """Run the sequence with ``cli``; return what a caller would see (no values that differ
    by nature: pids, times, paths)."""
    seen = {}
    bundle = make_bundle(tmp_path / cli.name[0] / "bundle", ["sleep", "1000"], annotations=ANNOTATIONS)
    seen["create"] = cli.create(cid, bundle).returncode
    st = cli.state(cid)
    seen["state created keys"] = keys(st)
    seen["state created"] = (st["status"], st["annotations"], st["owner"], st["ociVersion"], st["pid"] > 0)
    table = cli.ok("list").splitlines()
    seen["list header"] = table[0].split()
    seen["list columns aligned"] = starts(table[0]) == starts(table[1])
    row = table[1].split()
    seen["list row"] = (row[0], row[2], row[3] == str(bundle), row[5], len(row))
    seen["list quiet"] = cli.ok("list", "--quiet")
    (item,) = json.loads(cli.ok("list", "--format", "json"))
    seen["list json keys"] = keys(item)
    seen["duplicate create"] = cli.create(cid, bundle).returncode
    cli.create(cid + "c", bundle)
    seen["delete created"] = (cli.run("delete", cid + "c").returncode, cli.run("state", cid + "c").returncode)

    seen["start"] = cli.run("start", cid).returncode
    seen["start again"] = cli.run("start", cid).returncode
    seen["state running"] = cli.state(cid)["status"]
    ps = cli.ok("ps", cid).splitlines()
    seen["ps header"] = ps[0].split()
    seen["ps rows"] = sum("sleep 1000" in line for line in ps[1:])
    seen["ps json"] = [type(p).__name__ for p in json.loads(cli.ok("ps", "--format", "json", cid))]

    p = cli.run("exec", cid, "sh", "-c", "echo out; exit 5")
    seen["exec status"] = (p.returncode, p.stdout)
    p = cli.run("exec", "--cwd", "/tmp", "--env", "A=b", cid, "sh", "-c", "echo $PWD $A")
    seen["exec cwd env"] = (p.returncode, p.stdout)
    seen["exec missing"] = cli.run("exec", cid, "no-such-program").returncode

    seen["pause"] = (cli.run("pause", cid).returncode, cli.state(cid)["status"])
    seen["pause again"] = cli.run("pause", cid).returncode
    seen["resume"] = (cli.run("resume", cid).returncode, cli.state(cid)["status"])
    seen["resume again"] = cli.run("resume", cid).returncode

    seen["update"] = cli.run("update", "--pids-limit", "20", cid).returncode
    event = json.loads(cli.ok("events", "--stats", cid))
    seen["events keys"] = (keys(event), event["type"], event["id"] == cid)
    seen["events pids limit"] = event["data"]["pids"].get("limit")
    seen["events memory usage keys"] = keys(event["data"]["memory"]["usage"])

    seen["delete running"] = cli.run("delete", cid).returncode
    seen["kill"] = cli.run("kill", cid, "KILL").returncode
    wait_for(lambda: cli.state(cid)["status"] == "stopped", what=f"{cli.name}: stopped")
    st = cli.state(cid)
    seen["state stopped"] = (keys(st), st["pid"])
    seen["kill stopped"] = cli.run("kill", cid, "TERM").returncode
    seen["exec stopped"] = cli.run("exec", cid, "true").returncode
    seen["delete"] = cli.run("delete", cid).returncode
    seen["state gone"] = cli.run("state", cid).returncode
    seen["delete gone"] = cli.run("delete", cid).returncode
    seen["delete --force gone"] = cli.run("delete", "--force", cid).returncode  # 0: runc's delete.go
    seen["delete --force invalid id"] = cli.run("delete", "--force", "bad/id").returncode
    seen["kill gone"] = cli.run("kill", cid).returncode
    seen["invalid id"] = cli.create("bad/id", bundle).returncode
    cli.ids.remove("bad/id")

    run_bundle = make_bundle(tmp_path / cli.name[0] / "run", ["sh", "-c", "read l; echo got:$l; exit 42"])
    p = cli.run("run", "--bundle", str(run_bundle), cid + "r", input=b"line\n")
    cli.ids.append(cid + "r")
    seen["run"] = (p.returncode, p.stdout)
    seen["run bad bundle"] = cli.run("run", "--bundle", str(tmp_path / "nope"), cid + "x").returncode
    return seen


def test_kata_runtime_answers_as_runc(kata, runc, tmp_path, new_id):
    cid = new_id("compat")  # the same id on both: the tables then have the same widths
    expected = observe(runc, tmp_path, cid)
    got = observe(kata, tmp_path, cid)
    differences = {k: (expected[k], got.get(k)) for k in expected if expected[k] != got.get(k)}
    assert not differences, "runc vs kata-runtime:\n" + "\n".join(f"  {k}: {v[0]!r} != {v[1]!r}"
                                                                  for k, v in differences.items())
