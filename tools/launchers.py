"""Rewrite kata-py's console scripts so they start without the ``site`` module.

    python tools/launchers.py [--bin-dir DIR]

Run by ``make venv`` with the venv's interpreter, after ``pip install``. For each console script
of the kata-py distribution (kata-runtime, kata-proxy, kata-shim, kata-agent: read from its
installed entry points, so setup.cfg stays the one list) it writes ``DIR/<name>`` (default: the
directory of this interpreter, the venv's bin/):

    #!<this interpreter> -S
    import sys
    sys.path.extend([... the entries site added to sys.path in this interpreter ...])
    from <module> import <function>
    sys.exit(<function>())

Why: ``site`` is ~4 of the ~13 ms a bare interpreter takes to start here (site itself, the
venv's .pth files, setuptools' ``_distutils_hack`` and Debian's sitecustomize), and every
kata-runtime command is an interpreter start: containerd runs ``state`` several times per
container, and a create starts three more interpreters (kata-proxy, kata-shim, the process
sandbox's agent). pip writes a script's shebang itself and drops any flag on it (its
``fix_script`` keeps only ``#!<python>``), hence this step.

The paths are site's result at install time (site-packages and the .pth entries of the editable
install, in site's order, after the standard library); ``PYTHONPATH`` still comes first, as with
site. A later ``pip install`` that adds a .pth to the venv needs ``make venv`` again (the launchers
would not see it); a ``pip install`` of kata-py itself puts pip's ordinary scripts back, which work,
only slower. Where a module does not import that way (an editable install through an import hook,
setuptools' default), or where the interpreter's path does not fit a '#!' line (shebang_fits: not ASCII,
whitespace in it, or too long), pip's scripts are kept, with a warning. Exit status: 0, or 1 with a
one-line error if kata-py is not installed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import metadata

DISTRIBUTION = "kata-py"
#: Longest '#!' line written, in bytes: Linux before 5.1 read 127 of it (pip's limit too).
SHEBANG_MAX = 127


def site_paths(python: str) -> list[str]:
    """The sys.path entries ``site`` adds when ``python`` starts (ordered as site adds them):
    sys.path of a normal start minus that of a ``-S`` start."""
    def path(*flags: str) -> list[str]:
        out = subprocess.run([python, *flags, "-c", "import sys; print('\\n'.join(sys.path))"],
                             check=True, stdout=subprocess.PIPE, text=True, cwd="/", env=without_pythonpath())
        return out.stdout.splitlines()
    bare = set(path("-S"))
    return [p for p in path() if p not in bare and p]


def without_pythonpath() -> dict[str, str]:
    """This environment without PYTHONPATH (its entries are the caller's, not site's)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def shebang_fits(python: str) -> bool:
    """Whether ``#!<python> -S`` is a line every Linux reads whole and splits as meant: ASCII (the
    script is also Python source), no whitespace, at most SHEBANG_MAX bytes."""
    return python.isascii() and not any(c.isspace() for c in python) and len(f"#!{python} -S") <= SHEBANG_MAX


def importable(python: str, paths: list[str], module: str) -> bool:
    """Whether ``module`` imports in ``python -S`` with ``paths`` appended to sys.path (not so
    where a .pth installs an import hook, as setuptools' default editable finder does)."""
    code = f"import sys; sys.path.extend({paths!r}); import {module}"
    return subprocess.run([python, "-S", "-c", code], cwd="/", env=without_pythonpath(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def launcher(python: str, paths: list[str], entry_point: metadata.EntryPoint) -> str:
    """The text of one launcher script for ``entry_point`` (``module:function``)."""
    return (f"#!{python} -S\n"
            "# kata-py: written by tools/launchers.py (make venv); starts without the site module.\n"
            "import sys\n"
            f"sys.path.extend({ascii(paths)})\n"
            f"from {entry_point.module} import {entry_point.attr}\n"
            f"sys.exit({entry_point.attr}())\n")


def write_atomically(path: str, text: str) -> None:
    """``path`` replaced by ``text`` (mode 0755) with write + rename, so a running command that
    reads the script sees the old or the new one, never half."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(text)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin-dir", default=os.path.dirname(sys.executable),
                        help="where to write the launchers (default: this interpreter's directory)")
    args = parser.parse_args(argv)
    try:
        scripts = [ep for ep in metadata.distribution(DISTRIBUTION).entry_points if ep.group == "console_scripts"]
    except metadata.PackageNotFoundError:
        print(f"launchers: {DISTRIBUTION} is not installed in {sys.prefix}", file=sys.stderr)
        return 1
    python = sys.executable
    if not shebang_fits(python):
        # pip's scripts start through /bin/sh for such a path; a '#!' line cannot hold it
        print(f"launchers: {python!r} cannot be a '#!' line with a flag; pip's scripts kept", file=sys.stderr)
        return 0
    paths = site_paths(python)
    missing = [ep.module for ep in scripts if not importable(python, paths, ep.module)]
    if missing:
        print(f"launchers: {', '.join(missing)} do not import without site; pip's scripts kept", file=sys.stderr)
        return 0
    for ep in scripts:
        write_atomically(os.path.join(args.bin_dir, ep.name), launcher(python, paths, ep))
    print(f"launchers: {', '.join(ep.name for ep in scripts)} start without site ({args.bin_dir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
