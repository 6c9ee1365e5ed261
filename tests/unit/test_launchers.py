"""tools/launchers.py: kata-py's console scripts rewritten to start without the site module.

Real interpreters: the launchers are written into a temp dir by the venv's Python and run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.processes import REPO

SCRIPTS = ("kata-runtime", "kata-proxy", "kata-shim", "kata-agent")


@pytest.fixture(scope="module")
def bin_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bin")
    subprocess.run([sys.executable, str(REPO / "tools" / "launchers.py"), "--bin-dir", str(path)],
                   check=True, cwd="/", env=_env(), stdout=subprocess.DEVNULL)
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


def test_every_console_script_gets_a_launcher_without_site(bin_dir):
    for name in SCRIPTS:
        first = (bin_dir / name).read_text().splitlines()[0]
        assert first == f"#!{sys.executable} -S", (name, first)
        assert os.access(bin_dir / name, os.X_OK)


def test_a_launcher_finds_the_project_and_its_dependencies_from_any_directory(bin_dir):
    out = subprocess.run([str(bin_dir / "kata-runtime"), "--version"], cwd="/", env=_env(),
                         stdout=subprocess.PIPE, text=True, check=True).stdout
    assert out.startswith("kata-runtime")
    # kata-proxy imports uvloop, a site-packages dependency
    subprocess.run([str(bin_dir / "kata-proxy"), "--help"], cwd="/", env=_env(), check=True,
                   stdout=subprocess.DEVNULL)


def test_pythonpath_comes_first_and_site_is_never_imported(bin_dir, tmp_path):
    """PYTHONPATH shadows the installed package, as with site (bench --baseline relies on it),
    and the command runs with no site module loaded."""
    fake = tmp_path / "kata_runtime"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "cli.py").write_text("import sys\ndef main():\n    print('shadowed', 'site' in sys.modules)\n    return 3\n")
    proc = subprocess.run([str(bin_dir / "kata-runtime")], cwd="/", env=_env(PYTHONPATH=str(tmp_path)),
                          stdout=subprocess.PIPE, text=True)
    assert (proc.returncode, proc.stdout) == (3, "shadowed False\n")


def test_an_interpreter_path_that_cannot_be_a_shebang_keeps_pips_scripts(tmp_path, monkeypatch, capsys):
    """Whitespace in the interpreter's path (pip starts such scripts through /bin/sh), a
    non-ASCII path, or one too long for a '#!' line (127 bytes before Linux 5.1): nothing is
    written, and make venv goes on with pip's scripts."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("launchers", REPO / "tools" / "launchers.py")
    launchers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launchers)
    for python in ("/opt/my venv/bin/python", "/opt/tab\tvenv/python", "/opt/\u00e9/python",
                   "/" + "v" * (launchers.SHEBANG_MAX - 12) + "/python"):  # "#!<it> -S": 128 bytes
        monkeypatch.setattr(sys, "executable", python)
        assert launchers.main(["--bin-dir", str(tmp_path)]) == 0
        assert list(tmp_path.iterdir()) == []
        assert "pip's scripts kept" in capsys.readouterr().err
