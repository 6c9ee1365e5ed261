"""The guest root filesystem: a minimal Debian by mmdebstrap, then the agent and its Python deps.

    run_mmdebstrap(root, recipe, progress)        # bookworm minbase + python3, runc, procps
    install_agent(root, inputs, progress)         # pinned wheels + our packages into site-packages
    compile_bytecode(root, recipe)                # .pyc by the GUEST's python3 (chroot)

* mmdebstrap gets NO mirror argument: it then uses the host's apt sources, so no address is
  written by us anywhere. ``--mode=unshare`` (as root: a private mount namespace, real
  ownership) means the /proc, /sys and /dev it mounts while installing vanish with it, even
  when it is killed: a failed build never leaves a mount behind.
* Wheels are chosen for the recipe's interpreter and glibc (``--python-version 3.11 --abi cp311
  --platform manylinux_2_X_x86_64`` for X up to the suite's glibc), not the host's, with the
  host's pip and its configured indexes, and pinned to the versions installed on the host.
* Our packages (Recipe.agent_packages: kata_agent and what it imports of ours) are copied as ``*.py`` files only.
* Byte code: the image is mounted read-only, so Python could never cache a ``.pyc`` there and
  would compile grpc and the agent at every boot (seconds under TCG). The guest's own python3
  compiles them at build time with ``--invalidation-mode unchecked-hash`` (no source stat at
  import); Debian's postinst already compiled the standard library.
"""

from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
from typing import Callable

from kata_runtime.image.errors import ImageError
from kata_runtime.image.progress import Progress
from kata_runtime.image.recipe import Inputs, Recipe, package_files

TAIL_LINES = 20
#: The oldest manylinux_2_X tag tried: manylinux2014 is 2_17.
OLDEST_MANYLINUX = 17


def run_tool(argv: list[str], what: str, *, relay: Callable[[str], None] | None = None,
             env: dict[str, str] | None = None) -> str:
    """Run a build tool; stdout+stderr are collected (and each line passed to ``relay``).

    Returns the output. Raises ImageError naming ``what``, the exit status and the output's last
    lines when the tool fails or is missing.
    """
    if shutil.which(argv[0]) is None and not os.path.isabs(argv[0]):
        raise ImageError(f"{what}: {argv[0]} not found")
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    lines = []
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", env=env)
    except OSError as exc:
        raise ImageError(f"{what}: cannot run {argv[0]}: {exc.strerror}") from exc
    with proc:
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            lines.append(line)
            if relay is not None:
                relay(line)
    if proc.returncode != 0:
        raise ImageError(f"{what} failed (exit status {proc.returncode}): " + " | ".join(tail))
    return "\n".join(lines)


# ------------------------------------------------------------------ mmdebstrap


def mmdebstrap_argv(root: str, recipe: Recipe) -> list[str]:
    """The mmdebstrap command line (no mirror: the host's apt sources)."""
    argv = ["mmdebstrap", "--mode=unshare", f"--variant={recipe.variant}", f"--include={','.join(recipe.packages)}"]
    argv += [f"--dpkgopt={opt}" for opt in recipe.dpkg_options]
    return [*argv, recipe.suite, root]


def run_mmdebstrap(root: str, recipe: Recipe, progress: Progress) -> None:
    """Create ``root`` (must not exist or be empty) as the recipe's Debian tree. Raises ImageError."""
    relay = lambda line: progress.detail(line) if line.startswith(("I:", "W:", "E:")) else None  # noqa: E731
    run_tool(mmdebstrap_argv(root, recipe), "mmdebstrap", relay=relay)
    python = os.path.join(root, "usr", "bin", "python3")
    if not os.path.exists(python):
        raise ImageError(f"mmdebstrap made no /usr/bin/python3 in {root}")


# ------------------------------------------------------------------ the agent


def wheel_platforms(recipe: Recipe) -> list[str]:
    """``manylinux_2_X_x86_64`` tags the guest's glibc accepts, newest first, and manylinux2014."""
    major, minor = recipe.glibc
    tags = [f"manylinux_{major}_{m}_x86_64" for m in range(minor, OLDEST_MANYLINUX - 1, -1)]
    return [*tags, "manylinux2014_x86_64"]


def pip_argv(target: str, inputs: Inputs, python: str = sys.executable) -> list[str]:
    """``python -m pip install`` of the pinned requirements into ``target`` for the guest's python."""
    recipe = inputs.recipe
    abi = "cp" + recipe.python_version.replace(".", "")
    argv = [python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-warn-script-location", "--target", target,
            "--python-version", recipe.python_version, "--implementation", "cp", "--abi", abi]
    for tag in wheel_platforms(recipe):
        argv += ["--platform", tag]
    return [*argv, *(f"{name}=={version}" for name, version in inputs.requirements)]


def copy_packages(site: str, agent_dirs: dict[str, str]) -> int:
    """Copy each package's ``*.py`` files to ``site/<package>/``; returns the number of files."""
    count = 0
    for name, src in sorted(agent_dirs.items()):
        for rel in package_files(src):
            dest = os.path.join(site, name, rel)
            os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
            shutil.copyfile(os.path.join(src, rel), dest)
            os.chmod(dest, 0o644)
            count += 1
    return count


def site_packages(root: str, recipe: Recipe) -> str:
    return os.path.join(root, recipe.site_packages.lstrip("/"))


def install_agent(root: str, inputs: Inputs, progress: Progress) -> None:
    """The pinned wheels and our packages into the image's site-packages. Raises ImageError."""
    site = site_packages(root, inputs.recipe)
    os.makedirs(site, mode=0o755, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    run_tool(pip_argv(site, inputs), "pip install of the agent's dependencies", env=env)
    n = copy_packages(site, inputs.agent_dirs)
    pins = ", ".join(f"{name} {version}" for name, version in inputs.requirements)
    progress.detail(f"{pins}; {n} files of {', '.join(sorted(inputs.agent_dirs))}")


def compile_bytecode(root: str, recipe: Recipe) -> None:
    """Byte-compile site-packages with the guest's python3 inside ``root`` (chroot; needs root)."""
    if os.geteuid() != 0:
        raise ImageError("compiling the guest's byte code needs root (chroot into the image tree)")
    run_tool(["chroot", root, "/usr/bin/python3", "-m", "compileall", "-q", "--invalidation-mode", "unchecked-hash",
              recipe.site_packages], "compileall in the guest's python3",
             env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"})
