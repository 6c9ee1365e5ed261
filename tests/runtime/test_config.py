"""configuration.toml: defaults, search order, the packaged file, and one-line errors that
name the file and the key (unit tests)."""

from __future__ import annotations

import json
import os
import re
import tomllib

import pytest

from kata_runtime import config as kconfig
from kata_runtime.config import SCHEMA, ConfigError, load, parse
from kata_runtime.hypervisor import HypervisorError, driver
from tests.support.processes import python_prints

DEFAULTS = {name: {k: d for k, (d, _) in keys.items()} for name, keys in SCHEMA.items()}


def test_empty_file_gives_every_default(tmp_path):
    (tmp_path / "c.toml").write_text("")
    cfg = load(str(tmp_path / "c.toml"))
    assert cfg.values == DEFAULTS
    assert cfg.hypervisor == "process" and cfg.hypervisor_section == DEFAULTS["hypervisor.process"]
    assert cfg.path == str(tmp_path / "c.toml")


def test_packaged_file_is_all_comments_and_documents_every_key_with_its_default():
    text = open(kconfig.PACKAGED).read()
    assert parse(tomllib.loads(text), kconfig.PACKAGED) == DEFAULTS  # nothing set
    uncommented = re.sub(r"(?m)^#(\w+ = )", r"\1", text)
    assert parse(tomllib.loads(uncommented), "x") == DEFAULTS
    documented = set(re.findall(r"(?m)^\[([\w.]+)\]", text))
    assert documented == set(SCHEMA)
    for name, keys in SCHEMA.items():
        section = text.split(f"[{name}]", 1)[1].split("\n[", 1)[0]
        for key in keys:
            assert re.search(rf"(?m)^#{key} = ", section), f"[{name}] {key} is not documented"


def test_values_are_read(tmp_path):
    (tmp_path / "c.toml").write_text('[runtime]\nenable_debug = true\n[shim.kata]\npath = "/opt/shim"\ndebug = true\n'
                                     '[hypervisor.qemu]\ndefault_vcpus = 4\naccel = "tcg"\n'
                                     '[hypervisor.process]\nready_timeout = 5\n')
    cfg = load(str(tmp_path / "c.toml"))
    assert cfg.debug is True
    assert cfg.section("shim.kata") == {"path": "/opt/shim", "debug": True}
    assert cfg.section("hypervisor.qemu")["default_vcpus"] == 4
    assert cfg.section("hypervisor.qemu")["accel"] == "tcg"
    assert cfg.section("hypervisor.process")["ready_timeout"] == 5.0


@pytest.mark.parametrize("text, message", [
    ("[netmon]\nenable = true\n", "unknown section [netmon]"),
    ("[hypervisor.firecracker]\npath = \"/x\"\n", "unknown section [hypervisor.firecracker]"),
    ("[proxy.kata]\nspeed = 1\n", "[proxy.kata] speed: unknown key"),
    ("[hypervisor.qemu]\naccel = \"xen\"\n", "[hypervisor.qemu] accel: must be one of auto, kvm, tcg (got 'xen')"),
    ("[hypervisor.qemu]\ndefault_vcpus = 0\n", "[hypervisor.qemu] default_vcpus: must be an integer >= 1 (got 0)"),
    ("[hypervisor.qemu]\ndefault_memory = \"2G\"\n", "[hypervisor.qemu] default_memory: must be an integer >= 64"),
    ("[hypervisor.qemu]\nkernel = \"vmlinuz\"\n", "[hypervisor.qemu] kernel: must be an absolute path"),
    ("[shim.kata]\ndebug = \"yes\"\n", "[shim.kata] debug: must be true or false (got 'yes')"),
    ("[runtime]\nhypervisor = \"kvm\"\n", "[runtime] hypervisor: must be one of process, qemu (got 'kvm')"),
    ("[hypervisor.process]\nready_timeout = -1\n", "[hypervisor.process] ready_timeout: must be a number of seconds > 0"),
    ("enable_debug = true\n", "enable_debug: a key outside any section"),
    ("[runtime\n", "not valid TOML"),
])
def test_errors_are_one_line_naming_file_and_key(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load(str(path))
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_the_parsed_document_is_cached_until_the_file_changes(tmp_path):
    """With a cache_dir, a second load of the unchanged file does not import tomllib; any
    write (even one that keeps the size and puts the mtime back) is seen; a bad value is
    refused on every load; a broken cache file is ignored."""
    path, cache = tmp_path / "c.toml", tmp_path / "root"
    cache.mkdir()
    path.write_text("[hypervisor.qemu]\ndefault_vcpus = 2\n")
    code = (f"import sys; from kata_runtime.config import load; "
            f"c = load({str(path)!r}, cache_dir={str(cache)!r}); "
            f"print(c.section('hypervisor.qemu')['default_vcpus'], 'tomllib' in sys.modules)")
    assert python_prints(code) == "2 True"
    assert python_prints(code) == "2 False"
    st = path.stat()
    path.write_text("[hypervisor.qemu]\ndefault_vcpus = 3\n")  # same size
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert python_prints(code) == "3 True"
    assert python_prints(code) == "3 False"
    (cache / kconfig.CACHE_FILE).write_text("{not json")
    assert python_prints(code) == "3 True"
    path.write_text("[hypervisor.qemu]\ndefault_vcpus = 0\n")
    for _ in range(2):
        with pytest.raises(ConfigError, match="default_vcpus: must be an integer >= 1"):
            load(str(path), cache_dir=str(cache))
    path.write_text("[runtime\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(str(path), cache_dir=str(cache))
    path.write_bytes(b"[runtime]\nhypervisor = \"\xff\"\n")
    with pytest.raises(ConfigError, match="not valid TOML: not UTF-8 text"):
        load(str(path), cache_dir=str(cache))


def test_the_cache_compares_the_whole_text_and_keeps_several_files(tmp_path):
    """Timestamps cannot be trusted (a filesystem with one-second ones, a rewrite within a
    clock tick): a rewrite that keeps the size, mtime and ctime is still seen, because the
    text is compared. Two configurations sharing one --root are both cached."""
    cache = tmp_path / "root"
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("[hypervisor.qemu]\ndefault_vcpus = 2\n")
    b.write_text("[hypervisor.qemu]\ndefault_vcpus = 5\n")
    assert load(str(a), cache_dir=str(cache)).section("hypervisor.qemu")["default_vcpus"] == 2
    assert load(str(b), cache_dir=str(cache)).section("hypervisor.qemu")["default_vcpus"] == 5
    entries = json.loads((cache / kconfig.CACHE_FILE).read_text())
    assert sorted(entries) == sorted([str(a), str(b)])
    # the same file, rewritten in place with the same size: pretend the timestamps did not move
    with open(a, "r+") as f:
        f.write("[hypervisor.qemu]\ndefault_vcpus = 3\n")
    assert load(str(a), cache_dir=str(cache)).section("hypervisor.qemu")["default_vcpus"] == 3
    assert load(str(b), cache_dir=str(cache)).section("hypervisor.qemu")["default_vcpus"] == 5


def test_explicit_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="configuration file does not exist"):
        load(str(tmp_path / "missing.toml"))


def test_search_order(tmp_path, monkeypatch):
    etc, usr = tmp_path / "etc.toml", tmp_path / "usr.toml"
    monkeypatch.setattr(kconfig, "SEARCH_PATHS", (str(etc), str(usr)))
    assert kconfig.find(None) == kconfig.PACKAGED
    usr.write_text("")
    assert kconfig.find(None) == str(usr)
    etc.write_text("")
    assert kconfig.find(None) == str(etc)
    explicit = tmp_path / "mine.toml"
    explicit.write_text("")
    assert kconfig.find(str(explicit)) == str(explicit)


def test_effective_configuration_round_trips_as_toml(tmp_path):
    (tmp_path / "c.toml").write_text('[hypervisor.qemu]\nkernel_params = "a=\\"b\\" c"\n')
    cfg = load(str(tmp_path / "c.toml"))
    assert parse(tomllib.loads(cfg.to_toml()), "x") == cfg.values


def test_both_drivers_are_registered_and_built_from_their_default_sections(tmp_path):
    from kata_runtime.hypervisor.qemu import QemuHypervisor

    for kind in kconfig.HYPERVISORS:
        cls = driver(kind)
        assert cls.kind == kind
        guest = cls.from_config(tmp_path / kind, "sb", DEFAULTS[f"hypervisor.{kind}"])
        assert guest.pid is None and guest.channel_socket_path == str(tmp_path / kind / "kata.sock")
    qemu = driver("qemu").from_config(tmp_path, "sb", {**DEFAULTS["hypervisor.qemu"], "boot_timeout": 7.5,
                                                       "default_vcpus": 2, "accel": "tcg"})
    assert isinstance(qemu, QemuHypervisor)
    assert (qemu.boot_timeout, qemu.vcpus, qemu.accel, qemu.memory_mib) == (7.5, 2, "tcg", 2048)
    with pytest.raises(HypervisorError, match="unknown hypervisor 'xen'"):
        driver("xen")
