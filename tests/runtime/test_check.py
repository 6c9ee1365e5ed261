"""`kata-runtime check`: what the configured hypervisor needs, and exactly why KVM is (not) usable.

Runs the real command (a subprocess, as a user would) against configuration
files written by the tests. The KVM verdict comes from the real probe; its
cache is the session-wide one test_kvm_probe.py uses, so the boot (about
10-20 s here) is paid once per session.
"""

from __future__ import annotations

import json
import os
import sys

import pytest

from kata_runtime import kvm
from kata_runtime.cli import check as check_cli
from tests.support.requirements import requires

KATA_RUNTIME = [sys.executable, "-c", "import sys; from kata_runtime.cli import main; sys.exit(main())"]
needs_root = requires(root="a capable host needs root")


@pytest.fixture(scope="session")
def probe_cache_dir(tmp_path_factory):
    """The session-wide KVM-probe cache (same path as in test_kvm_probe.py)."""
    path = tmp_path_factory.getbasetemp() / "kvm-probe-cache"
    path.mkdir(exist_ok=True)
    return str(path)


def _config(tmp_path, text: str) -> str:
    path = tmp_path / "configuration.toml"
    path.write_text(text)
    return str(path)


def _check(root: str, config: str, *flags):
    import subprocess
    bound = kvm.DEFAULT_KVM_TIMEOUT + kvm.DEFAULT_TCG_TIMEOUT + 30
    return subprocess.run(KATA_RUNTIME + ["--root", root, "--kata-config", config, "check", *flags],
                          capture_output=True, text=True, timeout=bound)


def _lines(output: str) -> dict[str, tuple[str, str]]:
    """{name: (status, detail)} of the item lines of the text report."""
    items = {}
    for line in output.splitlines()[1:]:
        parts = line.split(None, 2)
        if len(parts) == 3 and parts[0] in ("ok", "FAIL", "warn", "-"):
            items[parts[1]] = (parts[0], parts[2])
    return items


@pytest.fixture(scope="module")
def process_report(tmp_path_factory, probe_cache_dir):
    """`check` with the process hypervisor (the first run may pay the real probe), and the verdict.

    The guest files are named (the host's kernel), so `check` probes the kernel the verdict here
    is read for: with none named it would probe the image build's kernel, if this machine has
    one in the default cache (after `make demo`), and its verdict differs in the TCG timing."""
    where = tmp_path_factory.mktemp("process")
    config = _config(where, '[runtime]\nhypervisor = "process"\n[hypervisor.qemu]\n' + _guest_files(where))
    result = _check(probe_cache_dir, config)
    return result, kvm.probe_cached(probe_cache_dir), config


@needs_root
def test_check_prints_why_kvm_is_or_is_not_usable(process_report):
    result, verdict, config = process_report
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[0] == f'kata-runtime check: {config}: hypervisor "process", accel auto'
    items = _lines(result.stdout)
    expected = ("ok", f"usable: {verdict.reason}") if verdict.usable else ("warn", f"not usable: {verdict.reason}")
    assert items["kvm"] == expected
    for name in ("root", "kata-proxy", "kata-shim", "kata-agent", "unshare", "runc", "cgroups"):
        assert items[name][0] == "ok", (name, items[name])
    for name in ("kernel", "initrd", "image"):  # the image build's, if any: not needed by the process sandbox
        assert items[name][0] in ("ok", "warn"), (name, items[name])
    assert result.stdout.splitlines()[-1] == ('System is capable of running kata-py with hypervisor "process" '
                                              "(process sandbox: no VM isolation, for tests and development)")
    if "kvm_pvm" in verdict.facts["modules"] and verdict.checks[-1].ok:
        assert "did not reach its initrd" in items["kvm"][1] and "PVM host" in items["kvm"][1]


@needs_root
def test_check_json_and_the_cached_verdict(process_report, probe_cache_dir):
    _, verdict, config = process_report
    result = _check(probe_cache_dir, config, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["config"], report["hypervisor"], report["accel"], report["capable"]) == \
        (config, "process", "auto", True)
    assert [i["name"] for i in report["items"]] == ["root", "kata-proxy", "kata-shim", "kata-agent", "unshare",
                                                     "runc", "cgroups", "qemu", "kernel", "initrd", "image", "kvm"]
    assert report["kvm"]["reason"] == verdict.reason and report["kvm"]["usable"] == verdict.usable
    if verdict.checks[-1].ok and verdict.kvm_boot is not None:
        assert report["kvm"]["cached"] is True


@needs_root
def test_check_verbose_shows_the_probe_steps(process_report, probe_cache_dir):
    _, verdict, config = process_report
    out = _check(probe_cache_dir, config, "--verbose").stdout
    probe_part = out[out.index("KVM probe:"):]
    for check in verdict.checks:
        assert f"{'ok' if check.ok else 'FAIL':<5} {check.name}: {check.detail}" in probe_part
    if verdict.kvm_boot is not None:
        assert f"boot  accel=kvm: {verdict.kvm_boot.reason}" in probe_part
    assert "CPU virtualization flags: " in probe_part


def _guest_files(tmp_path) -> str:
    """[hypervisor.qemu] lines naming guest files that exist: the host's kernel (the probe's
    default, so the session's cached verdict applies) and stand-in initrd and image files."""
    (tmp_path / "initrd.img").write_bytes(b"x")
    (tmp_path / "rootfs.img").write_bytes(b"x")
    return (f'kernel = "{kvm.default_guest_kernel()}"\ninitrd = "{tmp_path}/initrd.img"\n'
            f'image = "{tmp_path}/rootfs.img"\n')


@needs_root
def test_qemu_with_forced_kvm_fails_where_kvm_is_not_usable(tmp_path, probe_cache_dir):
    config = _config(tmp_path, '[runtime]\nhypervisor = "qemu"\n[hypervisor.qemu]\naccel = "kvm"\n'
                     + _guest_files(tmp_path))
    verdict = kvm.probe_cached(probe_cache_dir)
    result = _check(probe_cache_dir, config)
    items = _lines(result.stdout)
    if verdict.usable:
        assert result.returncode == 0 and items["kvm"][0] == "ok"
    else:
        assert result.returncode == 1
        assert items["kvm"] == ("FAIL", f"not usable: {verdict.reason}")
        assert result.stdout.splitlines()[-1] == (
            'System is not capable of running kata-py with hypervisor "qemu": missing or broken: kvm')


@needs_root
def test_qemu_with_auto_accel_falls_back_to_tcg(tmp_path, probe_cache_dir):
    config = _config(tmp_path, '[runtime]\nhypervisor = "qemu"\n[hypervisor.qemu]\n' + _guest_files(tmp_path))
    verdict = kvm.probe_cached(probe_cache_dir)
    result = _check(probe_cache_dir, config)
    assert result.returncode == 0, result.stdout
    last = result.stdout.splitlines()[-1]
    if verdict.usable:
        assert last.endswith('hypervisor "qemu" (accel kvm)')
    else:
        assert last.endswith('hypervisor "qemu" (accel tcg: KVM is not usable)')
        assert _lines(result.stdout)["kvm"][1].endswith("; accel auto uses TCG")


def test_missing_qemu_binary_and_guest_files(tmp_path):
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(b"x")
    config = _config(tmp_path, '[runtime]\nhypervisor = "qemu"\n[hypervisor.qemu]\n'
                               f'path = "{tmp_path}/no-qemu"\ninitrd = "{initrd}"\nimage = "{tmp_path}/no.img"\n')
    result = _check(str(tmp_path / "root"), config)
    assert result.returncode == 1
    items = _lines(result.stdout)
    assert items["qemu"] == ("FAIL", f"{tmp_path}/no-qemu not found")
    assert items["initrd"] == ("ok", str(initrd))
    assert items["image"] == ("FAIL", f"{tmp_path}/no.img missing")
    verdict = kvm.probe_cached(None, qemu=f"{tmp_path}/no-qemu")
    assert items["kvm"] == ("warn", f"not usable: {verdict.reason}; accel auto uses TCG")
    if verdict.checks[-1].ok:
        assert verdict.reason == ("KVM opens and creates VMs, but the boot probe cannot run: "
                                  f"{tmp_path}/no-qemu not found")
    assert "missing or broken: " in result.stdout.splitlines()[-1]
    assert "qemu" in result.stdout.splitlines()[-1] and "image" in result.stdout.splitlines()[-1]


def test_process_sandbox_without_unshare_cannot_run(tmp_path, probe_cache_dir):
    config = _config(tmp_path, '[runtime]\nhypervisor = "process"\n'
                               '[hypervisor.process]\nunshare = "no-such-unshare"\n')
    result = _check(probe_cache_dir, config)
    assert result.returncode == 1
    assert _lines(result.stdout)["unshare"] == ("FAIL", "no-such-unshare not found in PATH")
    assert "missing or broken: unshare" in result.stdout.splitlines()[-1]


def test_bad_configuration_is_one_line_naming_the_key(tmp_path):
    config = _config(tmp_path, '[hypervisor.qemu]\naccel = "xen"\n')
    result = _check(str(tmp_path / "root"), config)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().startswith(f"{config}: [hypervisor.qemu] accel: ")


# ------------------------------------------------------------------ unit checks
def test_cgroup_v2(tmp_path):
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    item = check_cli.check_cgroups(str(tmp_path))
    assert (item.status, item.detail) == ("ok", "cgroup v2 (cpu memory pids)")


def test_cgroup_v1_complete_and_incomplete(tmp_path):
    for name in check_cli.CGROUP_V1_CONTROLLERS:
        (tmp_path / name).mkdir()
    assert check_cli.check_cgroups(str(tmp_path)).status == "ok"
    (tmp_path / "freezer").rmdir()
    (tmp_path / "pids").rmdir()
    item = check_cli.check_cgroups(str(tmp_path))
    assert (item.status, item.detail) == ("FAIL", f"cgroup v1 controllers not mounted under {tmp_path}: pids, freezer")
    assert check_cli.check_cgroups(str(tmp_path), required=False).status == "warn"


def test_component_checks(tmp_path):
    script = tmp_path / "kata-proxy"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    configured = check_cli.check_component("kata-proxy", str(script), "kata-proxy", "kata_proxy")
    assert (configured.status, configured.detail) == ("ok", f"{script} (configured)")
    missing = check_cli.check_component("kata-proxy", str(tmp_path / "gone"), "kata-proxy", "kata_proxy")
    assert (missing.status, missing.detail) == ("FAIL", f"{tmp_path}/gone not found")
    agent = check_cli.check_agent("process", {"path": sys.executable}, {})
    assert (agent.status, agent.detail) == ("ok", f"{sys.executable} -m kata_agent")
    broken = check_cli._module_item("kata-agent", "/usr/bin/false", "kata_agent")
    assert (broken.status, broken.detail) == ("FAIL", "/usr/bin/false cannot import kata_agent")


def test_agent_check_without_a_path_names_what_the_driver_runs():
    """[hypervisor.process] path unset: the process sandbox runs the kata-agent script beside this
    Python (ProcessSandbox.agent_command), and check reports that program."""
    from kata_runtime.hypervisor import ProcessSandbox

    item = check_cli.check_agent("process", {}, {})
    program = ProcessSandbox("/nonexistent", "x").agent_command()
    assert item.ok
    assert item.detail == (f"{sys.executable} -m kata_agent" if program[1:2] == ["-m"] else program[0])


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs the system Python")
def test_agent_check_asks_another_interpreter():
    """A configured interpreter is asked in a child process: the venv's python finds kata_agent,
    the system python (without kata-py installed) does not."""
    import subprocess
    system_has_it = subprocess.run(["/usr/bin/python3", "-c", "import kata_agent"], cwd="/",
                                   capture_output=True).returncode == 0
    item = check_cli._module_item("kata-agent", "/usr/bin/python3", "kata_agent")
    assert item.ok == system_has_it
    venv_python = os.path.join(os.path.dirname(sys.executable), "python3")
    if os.path.realpath(venv_python) == os.path.realpath(sys.executable):
        assert check_cli._module_item("kata-agent", venv_python, "kata_agent").ok


@needs_root
def test_qemu_without_guest_files_uses_the_image_build_or_says_to_make_one(tmp_path, probe_cache_dir):
    """No kernel/initrd/image: the build `create` would boot, looked up the same way."""
    from tests.vm.test_qemu_driver import fake_cache_entry

    cache = tmp_path / "images"
    config = _config(tmp_path, f'[runtime]\nhypervisor = "qemu"\n[hypervisor.qemu]\nimage_cache_dir = "{cache}"\n')
    result = _check(probe_cache_dir, config)
    items = _lines(result.stdout)
    assert result.returncode == 1 and items["image"][0] == "FAIL"
    assert f"`kata-runtime image build --cache-dir {cache}`" in items["image"][1]
    assert "missing or broken: kernel, initrd, image" in result.stdout.splitlines()[-1]

    built = fake_cache_entry(cache)
    items = _lines(_check(probe_cache_dir, config).stdout)
    for name in ("kernel", "initrd", "image"):
        assert items[name] == ("ok", f"{built[name]} (kata-runtime image build)")


def test_check_says_which_hypervisor_is_the_default_and_why(tmp_path):
    """Only when the packaged default is the configuration in use; a user's own says nothing of it."""
    from kata_runtime.config import PACKAGED, SCHEMA

    own = _check(str(tmp_path / "root"), _config(tmp_path, '[runtime]\nhypervisor = "process"\n'))
    assert not any(line.startswith("default:") for line in own.stdout.splitlines()), own.stdout
    default = SCHEMA["runtime"]["hypervisor"][0]
    result = _check(str(tmp_path / "root"), PACKAGED)
    line = result.stdout.splitlines()[-2]
    assert line.startswith(f'default: the packaged configuration.toml selects hypervisor "{default}": ')
    assert line.endswith(check_cli.DEFAULT_WHY[default])
    if default == "process":
        assert "NO VM isolation" in line
