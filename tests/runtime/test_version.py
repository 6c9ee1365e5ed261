"""`kata-runtime version` / `--version` / `-v`: Kata 1.x's block plus runc's machine lines."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from kata_runtime.cli import version as version_cli
from kata_runtime.default_spec import OCI_SPEC_VERSION
from tests.support.processes import python_prints

KATA_RUNTIME = [sys.executable, "-c", "import sys; from kata_runtime.cli import main; sys.exit(main())"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

KATA_BLOCK = re.compile(r"kata-runtime  : (?P<version>\S+)\n"
                        r"   commit   : (?P<commit>\S+)\n"
                        r"   OCI specs: (?P<spec>\S+)\n"
                        r"commit: (?P=commit)\n"
                        r"spec: (?P=spec)\n\Z")


def _run(*args):
    return subprocess.run(KATA_RUNTIME + list(args), capture_output=True, text=True)


def test_version_command_and_flags_print_the_same_block():
    outputs = [_run(*args) for args in (["version"], ["--version"], ["-v"])]
    assert [o.returncode for o in outputs] == [0, 0, 0]
    assert outputs[0].stdout == outputs[1].stdout == outputs[2].stdout
    found = KATA_BLOCK.match(outputs[0].stdout)
    assert found, outputs[0].stdout
    assert found["version"] == importlib.metadata.version("kata-py")
    assert found["spec"] == OCI_SPEC_VERSION


@pytest.mark.skipif(not shutil.which("git") or not os.path.isdir(os.path.join(REPO, ".git")),
                    reason="needs a git checkout")
def test_commit_is_the_checkouts_head():
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert version_cli.source_commit() == head


@pytest.mark.skipif(not shutil.which("runc"), reason="needs runc")
def test_spec_version_is_the_one_runc_reports():
    """We write runc's default spec, so we report the runtime-spec version runc does."""
    runc = subprocess.run(["runc", "--version"], capture_output=True, text=True, check=True).stdout
    assert f"spec: {OCI_SPEC_VERSION}" in runc.splitlines()


def _docker_parse_runtime_version(output: str):
    """dockerd's parseRuntimeVersion (daemon/info_unix.go), ported: (runtime, version, commit, error)."""
    runtime = version = commit = ""
    for line in output.strip().split("\n"):
        if "version" in line:
            parts = line.split("version")
            runtime, version = parts[0].strip(), parts[-1].strip()
            continue
        if line.startswith("commit:"):
            commit = line[len("commit:"):].strip()
    error = None if version or commit else f"unknown output format: {output}"
    return runtime, version, commit, error


def test_docker_reads_the_commit_without_an_error():
    out = version_cli.version_text(commit="0123456789abcdef0123456789abcdef01234567")
    assert _docker_parse_runtime_version(out)[2:] == ("0123456789abcdef0123456789abcdef01234567", None)
    kata_only = "".join(out.splitlines(keepends=True)[:3])
    assert _docker_parse_runtime_version(kata_only)[3] is not None  # why the runc-style lines are there


def _fake_checkout(tmp_path, head: str, refs: dict | None = None, packed: dict | None = None):
    package = tmp_path / "repo" / "kata_runtime"
    package.mkdir(parents=True)
    git = tmp_path / "repo" / ".git"
    (git / "refs" / "heads").mkdir(parents=True)
    (git / "HEAD").write_text(head + "\n")
    for ref, sha in (refs or {}).items():
        (git / ref).write_text(sha + "\n")
    if packed:
        (git / "packed-refs").write_text("# pack-refs with: peeled fully-peeled sorted\n" + "".join(
            f"{sha} {ref}\n" for ref, sha in packed.items()))
    return str(package), git


SHA1, SHA2 = "a" * 40, "b" * 40


def test_commit_from_a_loose_ref_a_packed_ref_and_a_detached_head(tmp_path):
    package, _ = _fake_checkout(tmp_path / "loose", "ref: refs/heads/main", refs={"refs/heads/main": SHA1})
    assert version_cli.source_commit(package) == SHA1
    package, _ = _fake_checkout(tmp_path / "packed", "ref: refs/heads/main", packed={"refs/heads/main": SHA2})
    assert version_cli.source_commit(package) == SHA2
    package, _ = _fake_checkout(tmp_path / "detached", SHA2)
    assert version_cli.source_commit(package) == SHA2


def test_commit_of_a_worktree(tmp_path):
    _, main_git = _fake_checkout(tmp_path / "main", "ref: refs/heads/main", refs={"refs/heads/topic": SHA2})
    worktree_git = main_git / "worktrees" / "wt"
    worktree_git.mkdir(parents=True)
    (worktree_git / "HEAD").write_text("ref: refs/heads/topic\n")
    (worktree_git / "commondir").write_text("../..\n")
    package = tmp_path / "wt" / "kata_runtime"
    package.mkdir(parents=True)
    (tmp_path / "wt" / ".git").write_text(f"gitdir: {worktree_git}\n")
    assert version_cli.source_commit(str(package)) == SHA2


@pytest.mark.parametrize("head", ["", "ref: refs/heads/gone", "not-a-sha"])
def test_commit_is_unknown_when_it_cannot_be_read(tmp_path, head):
    package, _ = _fake_checkout(tmp_path, head)
    assert version_cli.source_commit(package) == "unknown"
    assert version_cli.source_commit(str(tmp_path / "nowhere" / "kata_runtime")) == "unknown"


def test_command_object_and_unknown_fields():
    result = CliRunner().invoke(version_cli.command, [])
    assert result.exit_code == 0 and KATA_BLOCK.match(result.output)
    assert version_cli.version_text(version="", commit="", spec="") == (
        "kata-runtime  : unknown\n   commit   : unknown\n   OCI specs: unknown\ncommit: unknown\nspec: unknown\n")


def test_version_imports_nothing_heavy():
    """containerd and docker call --version; it must not load grpc, the probe or the state store."""
    code = ("import sys, io, contextlib; from kata_runtime.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    status = main(['--version'])\n"
            "heavy = [m for m in ('grpc', 'google.protobuf', 'kata_runtime.kvm', 'kata_runtime.state', "
            "'asyncio', 'subprocess') if m in sys.modules]\n"
            "print(status, heavy)")
    assert python_prints(code) == "0 []"
