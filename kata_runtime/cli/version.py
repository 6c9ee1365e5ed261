"""`kata-runtime version` (and the group's `--version`): Kata 1.x's version block.

What it prints (stdout, exit 0)::

    kata-runtime  : 0.1.0
       commit   : 3f2c...e1
       OCI specs: 1.0.2-dev
    commit: 3f2c...e1
    spec: 1.0.2-dev

The first three lines are Kata 1.x's `makeVersionString` (cli/main.go of
kata-containers/runtime; its `--version` and `version` print the same). The two
last lines are runc's machine-readable lines (runc prints `runc version X`,
`commit: X`, `spec: X`): dockerd's parseRuntimeVersion needs a `commit:` line
(or a line containing "version") or it reports "unknown output format";
containerd's go-runc `Version()` only fills its fields after a first line
`runc version ...`, which we do not claim to be, and returns no error either
way. "unknown" stands for a commit that cannot be found, as in Kata.

The commit is read from the checkout the package runs from (.git/HEAD and
its ref, without running git); installed without a checkout it is unknown.
"""

from __future__ import annotations

import os

import click

#: kata-py's version (setup.cfg's `version`; a test keeps them equal).
VERSION = "0.1.0"
NAME = "kata-runtime"
UNKNOWN = "unknown"


def _git_dir(start: str) -> str | None:
    """The git directory of the checkout containing `start` (a `.git` dir, or the one a `.git`
    file of a worktree points to), or None. Only the package's parent directory is looked at."""
    dot_git = os.path.join(start, ".git")
    if os.path.isdir(dot_git):
        return dot_git
    try:
        with open(dot_git) as f:
            line = f.read().strip()
    except OSError:
        return None
    if line.startswith("gitdir:"):
        path = line[len("gitdir:"):].strip()
        return path if os.path.isabs(path) else os.path.join(start, path)
    return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _resolve_ref(git_dir: str, ref: str) -> str | None:
    """The commit a ref ("refs/heads/main") names: loose ref file first, then packed-refs.
    A worktree's refs live in its `commondir`."""
    common = git_dir
    commondir = _read(os.path.join(git_dir, "commondir"))
    if commondir:
        common = commondir if os.path.isabs(commondir) else os.path.join(git_dir, commondir)
    for base in (git_dir, common):
        sha = _read(os.path.join(base, ref))
        if sha:
            return sha
    for line in (_read(os.path.join(common, "packed-refs")) or "").splitlines():
        sha, _, name = line.partition(" ")
        if name == ref:
            return sha
    return None


def source_commit(package_dir: str | None = None) -> str:
    """The commit (40 hex digits) of the checkout this package runs from, else "unknown".

    Reads `<repo>/.git/HEAD` (a detached sha or `ref: refs/heads/...`) and the
    ref; never runs git (start-up time). `package_dir` defaults to kata_runtime/.
    """
    package_dir = package_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git_dir = _git_dir(os.path.dirname(package_dir))
    head = _read(os.path.join(git_dir, "HEAD")) if git_dir else None
    if not head:
        return UNKNOWN
    sha = _resolve_ref(git_dir, head[4:].strip()) if head.startswith("ref:") else head
    return sha if sha and len(sha) == 40 and all(c in "0123456789abcdef" for c in sha) else UNKNOWN


def version_text(version: str = VERSION, commit: str | None = None, spec: str | None = None) -> str:
    """The version block (five lines, final newline included); see the module docstring."""
    if spec is None:
        from kata_runtime.default_spec import OCI_SPEC_VERSION as spec
    commit = commit if commit is not None else source_commit()
    return (f"{NAME}  : {version or UNKNOWN}\n"
            f"   commit   : {commit or UNKNOWN}\n"
            f"   OCI specs: {spec or UNKNOWN}\n"
            f"commit: {commit or UNKNOWN}\n"
            f"spec: {spec or UNKNOWN}\n")


def print_version(ctx: click.Context, _param, value: bool) -> None:
    """Eager-option callback for the group's `--version` / `-v` (as runc and Kata): print, exit 0."""
    if not value or ctx.resilient_parsing:
        return
    click.echo(version_text(), nl=False)
    ctx.exit(0)


@click.command("version", short_help="display version details",
               help="Print kata-runtime's version, the commit it was built from and the OCI "
                    "runtime-spec version it supports (same as --version).")
def command() -> None:
    click.echo(version_text(), nl=False)
