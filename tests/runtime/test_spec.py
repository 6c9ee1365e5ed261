"""`kata-runtime spec` writes exactly what the host's `runc spec` writes (kata_runtime.default_spec).

Every comparison is against the installed runc, run in the same test: bytes of
config.json (plain and --rootless, as root and as another user), the file mode,
and the error messages (existing config.json, missing bundle).
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner

from kata_runtime import default_spec
from kata_runtime.cli import spec as spec_cli
from tests.support.requirements import requires

RUNC = shutil.which("runc")
needs_runc = pytest.mark.skipif(RUNC is None, reason="needs runc (the reference)")
KATA_RUNTIME = [sys.executable, "-c", "import sys; from kata_runtime.cli import main; sys.exit(main())"]


def _runc(args, cwd, user=None):
    prefix = ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups"] if user else []
    return subprocess.run(prefix + [RUNC, *args], cwd=cwd, capture_output=True, text=True)


def _kata(args, cwd):
    return subprocess.run(KATA_RUNTIME + list(args), cwd=cwd, capture_output=True, text=True)


def _runc_error(stderr: str) -> str:
    """The msg of runc's logrus error line (time="..." level=error msg="...")."""
    found = re.search(r'msg="((?:[^"\\]|\\.)*)"', stderr)
    assert found, stderr
    return found.group(1).replace('\\"', '"')


@needs_runc
@pytest.mark.parametrize("flags", [[], ["--rootless"]], ids=["plain", "rootless"])
def test_spec_is_byte_identical_to_runc(tmp_path, flags):
    ours, theirs = tmp_path / "ours", tmp_path / "runc"
    ours.mkdir()
    theirs.mkdir()
    assert _kata(["spec", *flags], ours).returncode == 0
    assert _runc(["spec", *flags], theirs).returncode == 0
    assert (ours / "config.json").read_bytes() == (theirs / "config.json").read_bytes()
    mode = stat.S_IMODE((ours / "config.json").stat().st_mode)
    assert mode == stat.S_IMODE((theirs / "config.json").stat().st_mode)


@needs_runc
@requires(root="needs root and setpriv", tools=("setpriv",))
def test_rootless_spec_maps_the_effective_ids_as_runc_does(tmp_path):
    """runc --rootless run by uid 1000/gid 1001 maps root to 1000:1001; so do we for those ids."""
    os.chmod(tmp_path, 0o777)
    result = _runc(["spec", "--rootless"], tmp_path, user=(1000, 1001))
    assert result.returncode == 0, result.stderr
    ours = default_spec.marshal(default_spec.default_spec(rootless=True, euid=1000, egid=1001))
    assert ours == (tmp_path / "config.json").read_bytes()


@needs_runc
def test_bundle_flag_writes_into_the_bundle(tmp_path):
    for flag in ("--bundle", "-b"):
        bundle = tmp_path / flag.strip("-")
        bundle.mkdir()
        assert _kata(["spec", flag, str(bundle)], tmp_path).returncode == 0
        assert (bundle / "config.json").read_bytes() == default_spec.marshal(default_spec.default_spec())
    assert not (tmp_path / "config.json").exists()


@needs_runc
def test_existing_config_is_never_overwritten_and_the_message_is_runcs(tmp_path):
    (tmp_path / "config.json").write_text("mine")
    ours, theirs = _kata(["spec"], tmp_path), _runc(["spec"], tmp_path)
    assert (ours.returncode, theirs.returncode) == (1, 1)
    assert ours.stderr.strip() == _runc_error(theirs.stderr) == "File config.json exists. Remove it first"
    assert (tmp_path / "config.json").read_text() == "mine"


@needs_runc
def test_missing_bundle_message_is_runcs(tmp_path):
    missing = str(tmp_path / "nope")
    ours, theirs = _kata(["spec", "--bundle", missing], tmp_path), _runc(["spec", "--bundle", missing], tmp_path)
    assert (ours.returncode, theirs.returncode) == (1, 1)
    assert ours.stderr.strip() == _runc_error(theirs.stderr) == f"chdir {missing}: no such file or directory"


def test_dangling_symlink_named_config_json_is_refused(tmp_path):
    (tmp_path / "config.json").symlink_to(tmp_path / "elsewhere.json")
    result = CliRunner().invoke(spec_cli.command, ["--bundle", str(tmp_path)])
    assert result.exit_code == 1
    assert not (tmp_path / "elsewhere.json").exists()


def test_command_object_writes_the_default_spec(tmp_path):
    result = CliRunner().invoke(spec_cli.command, ["-b", str(tmp_path), "--rootless"])
    assert result.exit_code == 0, result.output
    written = (tmp_path / "config.json").read_bytes()
    assert written == default_spec.marshal(default_spec.default_spec(rootless=True))
    assert b'"type": "user"' in written and b'"gid=5"' not in written


def test_marshal_escapes_as_go_does():
    assert default_spec.marshal({"a": "<&>\u2028é", "b": [], "c": {}, "d": [1, True, None]}) == (
        '{\n\t"a": "\\u003c\\u0026\\u003e\\u2028é",\n\t"b": [],\n\t"c": {},\n'
        '\t"d": [\n\t\t1,\n\t\ttrue,\n\t\tnull\n\t]\n}').encode()


def test_each_call_returns_a_fresh_spec():
    first = default_spec.default_spec()
    first["process"]["args"].append("x")
    first["linux"]["maskedPaths"].clear()
    assert default_spec.default_spec() == default_spec.example_spec()
    assert default_spec.default_spec()["process"]["args"] == ["sh"]
