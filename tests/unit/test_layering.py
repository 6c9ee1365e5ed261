"""The import rule of DESIGN.md, checked on the source: "a folder is a room: it imports only what
sits below it".

Every module of our packages is parsed (nothing is imported) and each import of one of our
top-level packages, at module level or inside a function, is checked against what its package may
import:

    kata_log, yamux, katapb, kata_cgroups,  nothing of ours (the bottom; kata_log also holds the
    kata_grpc                               command-line vocabulary proxy and shim share)
    kata_oci                                katapb, kata_grpc (its protobuf wire format), kata_log
    kata_proxy                              yamux, kata_log
    kata_shim                               kata_log, katapb, kata_grpc
    kata_agent (the guest)                  yamux, kata_log, katapb, kata_oci, kata_cgroups, kata_grpc
    kata_runtime (the host)                 kata_log, katapb, kata_oci, kata_cgroups, kata_grpc: never the
                                            guest package, yamux, the proxy or the shim (it runs them)

Nobody imports kata_runtime but its own modules (and bench/, tests). bench/ and make demo import
no test module: of tests/ only tests.support, and not its pytest fixtures; tests.support imports no
tier, and pytest only in fixtures.py (requirements.skip_items imports it when called). The guest
image copies every package of ours the agent needs, setup.cfg lists every package, and a new
top-level package must be given its place here.
"""

from __future__ import annotations

import ast
import configparser
from pathlib import Path

import pytest

from tests.support.processes import REPO

#: top-level package -> its directory (katapb is built from proto/, setup.cfg's package_dir)
PACKAGES = {"kata_log": "kata_log", "yamux": "yamux", "katapb": "proto/katapb", "kata_cgroups": "kata_cgroups",
            "kata_grpc": "kata_grpc", "kata_oci": "kata_oci", "kata_proxy": "kata_proxy", "kata_shim": "kata_shim",
            "kata_agent": "kata_agent", "kata_runtime": "kata_runtime"}
#: what each package may import of ours (besides itself)
MAY_IMPORT = {
    "kata_log": set(),
    "yamux": set(),
    "katapb": set(),
    "kata_cgroups": set(),
    "kata_grpc": set(),
    "kata_oci": {"katapb", "kata_grpc", "kata_log"},
    "kata_proxy": {"yamux", "kata_log"},
    "kata_shim": {"kata_log", "katapb", "kata_grpc"},
    "kata_agent": {"yamux", "kata_log", "katapb", "kata_oci", "kata_cgroups", "kata_grpc"},
    "kata_runtime": {"kata_log", "katapb", "kata_oci", "kata_cgroups", "kata_grpc"},
}
OURS = set(PACKAGES) | {"bench", "tests"}


def modules(directory: str) -> list[Path]:
    return sorted(p for p in (REPO / directory).rglob("*.py") if "__pycache__" not in p.parts)


def imports(path: Path, *, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, dotted module) of every absolute import in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = []
    for node in nodes:
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def ours_imported(directory: str) -> list[tuple[str, int, str]]:
    """(module path, line, dotted name) of the imports of our packages in ``directory``."""
    return [(str(path.relative_to(REPO)), line, name)
            for path in modules(directory) for line, name in imports(path) if name.split(".")[0] in OURS]


def package_graph() -> dict[str, set[str]]:
    """package -> the other packages of ours its modules import."""
    return {pkg: {name.split(".")[0] for _, _, name in ours_imported(directory)} - {pkg}
            for pkg, directory in PACKAGES.items()}


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_a_package_imports_only_what_sits_below_it(package):
    allowed = MAY_IMPORT[package] | {package}
    wrong = [f"{path}:{line}: import {name}" for path, line, name in ours_imported(PACKAGES[package])
             if name.split(".")[0] not in allowed]
    assert not wrong, f"{package} may import only {sorted(MAY_IMPORT[package])} of ours:\n" + "\n".join(wrong)


def test_the_rule_has_no_cycle_and_the_host_never_imports_the_guest():
    graph = package_graph()
    assert "kata_agent" not in graph["kata_runtime"]
    assert not any("kata_runtime" in deps for deps in graph.values() if deps is not graph["kata_runtime"])
    done: set[str] = set()

    def visit(pkg: str, path: tuple[str, ...]) -> None:
        assert pkg not in path, "import cycle: " + " -> ".join((*path, pkg))
        if pkg not in done:
            for dep in graph[pkg]:
                visit(dep, (*path, pkg))
            done.add(pkg)

    for pkg in graph:
        visit(pkg, ())


def test_bench_and_the_demo_import_no_test_module():
    wrong = [f"{path}:{line}: import {name}" for path, line, name in ours_imported("bench")
             if name.split(".")[0] == "tests" and (not name.startswith("tests.support")
                                                   or name == "tests.support.fixtures")]
    assert not wrong, "bench/ may import only tests.support (not its fixtures):\n" + "\n".join(wrong)


def test_the_support_package_imports_no_tier_and_no_pytest_outside_its_fixtures():
    wrong = [f"{path}:{line}: import {name}" for path, line, name in ours_imported("tests/support")
             if name.split(".")[0] == "tests" and not name.startswith("tests.support")]
    for path in modules("tests/support"):
        if path.name != "fixtures.py":
            wrong += [f"{path.relative_to(REPO)}:{line}: import {name} (module level)"
                      for line, name in imports(path, top_level_only=True) if name.split(".")[0] == "pytest"]
    assert not wrong, "\n".join(wrong)


def test_the_guest_image_copies_every_package_the_agent_imports():
    from kata_runtime.image.recipe import Recipe

    graph = package_graph()
    needed, todo = set(), ["kata_agent"]
    while todo:
        pkg = todo.pop()
        if pkg not in needed:
            needed.add(pkg)
            todo += graph[pkg]
    assert needed <= set(Recipe().agent_packages), f"missing from the guest image: {needed - set(Recipe().agent_packages)}"


def test_setup_cfg_lists_every_package():
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    listed = set(cfg["options"]["packages"].split())
    found = set()
    for pkg, directory in PACKAGES.items():
        for init in (REPO / directory).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / directory)
            found.add(".".join((pkg, *rel.parts)))
    assert found <= listed, f"packages missing from setup.cfg [options] packages: {sorted(found - listed)}"


def test_every_top_level_package_has_its_place_in_the_rule():
    found = {path.parent.name for path in REPO.glob("*/__init__.py")} - {"bench"}
    assert found <= set(PACKAGES), f"place these in PACKAGES and MAY_IMPORT: {sorted(found - set(PACKAGES))}"
