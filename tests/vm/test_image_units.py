"""Unit tests of the guest image builder: recipe and cache key, cpio newc (checked with GNU cpio),
module dependency order, initrd content, ext4 packing, progress lines, and the cache's atomicity.
No QEMU, no mmdebstrap: seconds."""

from __future__ import annotations

import dataclasses
import gzip
import io
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kata_runtime.image import ImageError, Progress, Recipe
from kata_runtime.image import build as build_mod
from kata_runtime.image.cpio import CpioError, NewcWriter
from kata_runtime.image.ext4 import image_size, make_ext4
from kata_runtime.image.initrd import INIT_SCRIPT, find_busybox, write_initrd
from kata_runtime.image.kernel import (MODULE_SIGNATURE_MARKER, Kernel, Module, extract_vmlinux, find_kernel,
                                      has_pvh_entry, module_bytes, module_closure, run_modinfo, without_signature)
from kata_runtime.image.recipe import Inputs, pinned_requirements, tree_digest
from kata_runtime.image.rootfs import mmdebstrap_argv, pip_argv
from tests.support.requirements import requires

needs_root = requires(root="needs root")


def tool(name):
    return requires(tools=(name,))


# ------------------------------------------------------------------ cpio


def extract(archive: bytes, dest: Path) -> None:
    dest.mkdir()
    subprocess.run(["cpio", "-i", "-d", "--quiet", "--no-absolute-filenames"], input=archive, cwd=dest,
                   check=True, capture_output=True)


def listing(archive: bytes) -> list[str]:
    out = subprocess.run(["cpio", "-t", "-v", "--quiet"], input=archive, capture_output=True, check=True).stdout
    return out.decode().splitlines()


@tool("cpio")
def test_cpio_newc_is_read_back_by_gnu_cpio(tmp_path):
    buf = io.BytesIO()
    with NewcWriter(buf) as cpio:
        cpio.add_dir("bin")
        cpio.add_file("bin/tool", b"#!/bin/sh\necho hi\n", mode=0o755)
        cpio.add_file("bin/odd", b"abc")  # 3 bytes: data padding
        cpio.add_file("empty", b"")
        cpio.add_symlink("bin/sh", "tool")
        cpio.add_dir("dev")
        cpio.add_char_device("dev/console", 5, 1)
    archive = buf.getvalue()
    assert len(archive) % 4 == 0
    assert archive.startswith(b"070701")
    extract(archive, tmp_path / "x")
    x = tmp_path / "x"
    assert (x / "bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((x / "bin/tool").stat().st_mode) == 0o755
    assert (x / "bin/odd").read_bytes() == b"abc"
    assert (x / "empty").read_bytes() == b""
    assert os.readlink(x / "bin/sh") == "tool"
    console = [line for line in listing(archive) if line.endswith("dev/console")]
    assert len(console) == 1 and console[0].startswith("crw-------") and "5,   1" in console[0]


def test_cpio_header_fields_and_trailer():
    buf = io.BytesIO()
    with NewcWriter(buf, mtime=1234) as cpio:
        cpio.add_file("a", b"xyz", mode=0o600)
    data = buf.getvalue()
    fields = [int(data[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
    ino, mode, uid, gid, nlink, mtime, size, _, _, _, _, namesize, check = fields
    assert (ino, mode, uid, gid, nlink, mtime, size, namesize, check) == (1, 0o100600, 0, 0, 1, 1234, 3, 2, 0)
    assert data[110:112] == b"a\0"
    assert data[112:116] == b"xyz\0"  # name ends at 112 (aligned); data padded to 4
    assert b"TRAILER!!!\0" in data[116:]


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "a//b", "./a", "TRAILER!!!"])
def test_cpio_rejects_bad_names(name):
    with pytest.raises(CpioError):
        NewcWriter(io.BytesIO()).add_file(name, b"")


def test_cpio_rejects_duplicates_and_writes_after_close():
    cpio = NewcWriter(io.BytesIO())
    cpio.add_dir("a")
    with pytest.raises(CpioError, match="duplicate"):
        cpio.add_file("a", b"")
    cpio.close()
    with pytest.raises(CpioError, match="closed"):
        cpio.add_file("b", b"")


# --------------------------------------------------------------- modules


def fake_modinfo(table: dict[str, tuple[str, str]]):
    calls = []

    def modinfo(version, field, name):
        calls.append((version, field, name))
        if name not in table:
            raise ImageError(f"kernel module {name!r} not found for {version}")
        path, depends = table[name]
        return path if field == "filename" else depends

    return modinfo, calls


def test_module_closure_puts_dependencies_first_in_a_stable_order():
    modinfo, calls = fake_modinfo({
        "ext4": ("/m/ext4.ko", "jbd2,mbcache,crc16"),
        "jbd2": ("/m/jbd2.ko", ""),
        "mbcache": ("/m/mbcache.ko", ""),
        "crc16": ("(builtin)", ""),
        "virtio_blk": ("/m/virtio_blk.ko", "virtio,virtio_ring"),
        "virtio": ("/m/virtio.ko", "virtio_ring"),
        "virtio_ring": ("/m/virtio_ring.ko", ""),
        "9pnet_virtio": ("/m/9pnet_virtio.ko.xz", "virtio,9pnet,virtio_ring"),
        "9pnet": ("/m/9pnet.ko", ""),
    })
    order = module_closure(["virtio-blk", "ext4", "9pnet_virtio"], "6.1.0-1-amd64", modinfo)
    assert [m.name for m in order] == ["virtio_ring", "virtio", "virtio_blk", "jbd2", "mbcache", "ext4",
                                       "9pnet", "9pnet_virtio"]  # crc16 is built in: nothing to load
    assert order[-1] == Module("9pnet_virtio", "/m/9pnet_virtio.ko.xz")
    assert all(version == "6.1.0-1-amd64" for version, _, _ in calls)
    assert sum(1 for _, field, name in calls if name == "virtio_ring" and field == "filename") == 1


def test_module_closure_reports_cycles_and_unknown_modules():
    modinfo, _ = fake_modinfo({"a": ("/a.ko", "b"), "b": ("/b.ko", "a")})
    with pytest.raises(ImageError, match="cycle: a -> b -> a"):
        module_closure(["a"], "v", modinfo)
    modinfo, _ = fake_modinfo({})
    with pytest.raises(ImageError, match="'nope' not found"):
        module_closure(["nope"], "v", modinfo)


@tool("modinfo")
def test_module_closure_of_the_installed_kernel_loads_each_module_after_its_depends():
    try:
        kernel = find_kernel()
    except ImageError as exc:
        pytest.skip(str(exc))
    order = module_closure(Recipe().modules, kernel.version)
    names = [m.name for m in order]
    assert len(names) == len(set(names))
    for i, module in enumerate(order):
        assert os.path.isfile(module.path) and module.path.startswith(kernel.modules_dir)
        for dep in filter(None, run_modinfo(kernel.version, "depends", module.name).split(",")):
            assert dep.replace("-", "_") in names[:i], f"{module.name} needs {dep} before it"
    for wanted in Recipe().modules:
        assert wanted in names
    assert names.index("crc32c_generic") < names.index("ext4")


def test_find_kernel_takes_the_newest_version_that_has_modules(tmp_path):
    boot, mods = tmp_path / "boot", tmp_path / "modules"
    for ver in ("6.1.0-9-amd64", "6.1.0-57-amd64", "6.1.0-60-amd64"):
        boot.mkdir(exist_ok=True)
        (boot / f"vmlinuz-{ver}").write_bytes(b"k")
    for ver in ("6.1.0-9-amd64", "6.1.0-57-amd64"):  # 60 has no modules
        (mods / ver).mkdir(parents=True)
    kernel = find_kernel(boot_dir=str(boot), modules_root=str(mods))
    assert kernel == Kernel("6.1.0-57-amd64", str(boot / "vmlinuz-6.1.0-57-amd64"), str(mods / "6.1.0-57-amd64"))
    assert find_kernel("6.1.0-9-amd64", boot_dir=str(boot), modules_root=str(mods)).version == "6.1.0-9-amd64"
    with pytest.raises(ImageError, match="no guest kernel 6.1.0-60-amd64"):
        find_kernel("6.1.0-60-amd64", boot_dir=str(boot), modules_root=str(mods))
    with pytest.raises(ImageError, match="linux-image-amd64"):
        find_kernel(boot_dir=str(tmp_path / "none"), modules_root=str(mods))


def elf_with_note(note_type: int) -> bytes:
    """A minimal 64-bit ELF with one PT_NOTE holding a "Xen" note of ``note_type``."""
    import struct

    note = struct.pack("<III", 4, 8, note_type) + b"Xen\0" + b"\0" * 8
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x20, 64)  # e_phoff
    struct.pack_into("<HH", header, 0x36, 56, 1)  # e_phentsize, e_phnum
    phdr = struct.pack("<IIQQQQQQ", 4, 0, 64 + 56, 0, 0, len(note), len(note), 4)
    return bytes(header) + phdr + note


def test_has_pvh_entry_reads_the_xen_phys32_entry_note():
    assert has_pvh_entry(elf_with_note(18))
    assert not has_pvh_entry(elf_with_note(17))
    assert not has_pvh_entry(b"MZ not an elf")


def test_extract_vmlinux_finds_the_compressed_elf_inside_a_bzimage(tmp_path):
    import lzma
    import zlib

    elf = elf_with_note(18) + os.urandom(1000)
    gz = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for name, payload in (("xz", lzma.compress(elf)), ("gzip", gz.compress(elf) + gz.flush())):
        # a real-mode stub with a false magic in it, the payload, then trailing bytes
        (tmp_path / name).write_bytes(b"MZ" + b"\xfd7zXZ\x00 not really" + b"\0" * 100 + payload + b"\0" * 64)
        assert extract_vmlinux(str(tmp_path / name)) == elf, name
    (tmp_path / "plain").write_bytes(b"MZ" + b"\0" * 4096)
    assert extract_vmlinux(str(tmp_path / "plain")) is None
    (tmp_path / "elf").write_bytes(elf)
    assert extract_vmlinux(str(tmp_path / "elf")) == elf


def test_the_installed_kernel_has_a_vmlinux_qemu_can_boot_directly():
    try:
        kernel = find_kernel()
    except ImageError as exc:
        pytest.skip(str(exc))
    elf = extract_vmlinux(kernel.path)
    assert elf is not None and has_pvh_entry(elf)


# ------------------------------------------------------------ cache key


def make_inputs(tmp_path: Path, **changes) -> Inputs:
    """Inputs over a fake agent tree (tmp_path/agent/kata_agent/*.py) and a fake kernel."""
    pkg = tmp_path / "agent" / "kata_agent"
    if not pkg.exists():
        pkg.mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "cli.py").write_text("def main():\n    return 0\n")
    dirs = {"kata_agent": str(pkg)}
    fields = dict(recipe=Recipe(), kernel=Kernel("6.1.0-57-amd64", "/boot/vmlinuz-6.1.0-57-amd64", "/lib/modules/x"),
                  kernel_digest="k" * 64, agent_dirs=dirs, agent_digest=tree_digest(dirs),
                  requirements=(("grpcio", "1.85.1"), ("protobuf", "7.36.2")), busybox="/bin/busybox",
                  busybox_digest="b" * 64, builder_digest="c" * 64)
    fields.update(changes)
    return Inputs(**fields)


def test_cache_key_is_stable_and_ignores_where_the_inputs_live(tmp_path):
    a = make_inputs(tmp_path)
    assert a.cache_key() == make_inputs(tmp_path).cache_key()
    assert len(a.cache_key()) == 64
    moved = tmp_path / "elsewhere"
    shutil.copytree(tmp_path / "agent", moved)
    dirs = {"kata_agent": str(moved / "kata_agent")}
    b = make_inputs(tmp_path, agent_dirs=dirs, agent_digest=tree_digest(dirs),
                    kernel=Kernel("6.1.0-57-amd64", "/elsewhere/vmlinuz", "/elsewhere/modules"), busybox="/x/busybox")
    assert b.cache_key() == a.cache_key()
    # byte code and non-Python files are not agent code
    (tmp_path / "agent" / "kata_agent" / "__pycache__").mkdir()
    (tmp_path / "agent" / "kata_agent" / "__pycache__" / "cli.cpython-311.pyc").write_bytes(b"junk")
    (tmp_path / "agent" / "kata_agent" / "notes.txt").write_text("x")
    assert make_inputs(tmp_path).cache_key() == a.cache_key()


def test_cache_key_changes_with_the_agent_code(tmp_path):
    before = make_inputs(tmp_path).cache_key()
    cli = tmp_path / "agent" / "kata_agent" / "cli.py"
    cli.write_text(cli.read_text() + "# changed\n")
    assert make_inputs(tmp_path).cache_key() != before
    (tmp_path / "agent" / "kata_agent" / "new.py").write_text("")
    assert len({before, make_inputs(tmp_path).cache_key()}) == 2


@pytest.mark.parametrize("change", [
    dict(kernel=Kernel("6.1.0-58-amd64", "/boot/vmlinuz-6.1.0-57-amd64", "/lib/modules/x")),
    dict(kernel_digest="d" * 64),
    dict(requirements=(("grpcio", "1.86.0"), ("protobuf", "7.36.2"))),
    dict(busybox_digest="e" * 64),
    dict(builder_digest="f" * 64),
    dict(recipe=Recipe(packages=("python3", "runc", "procps", "strace"))),
    dict(recipe=Recipe(modules=("virtio_pci",))),
], ids=["kernel-version", "kernel-file", "dependency-version", "busybox", "builder", "packages", "modules"])
def test_cache_key_changes_with_each_other_input(tmp_path, change):
    assert make_inputs(tmp_path, **change).cache_key() != make_inputs(tmp_path).cache_key()


def test_gathering_the_inputs_twice_gives_the_same_key():
    from kata_runtime.image import gather_inputs

    try:
        first, second = gather_inputs(Recipe()), gather_inputs(Recipe())
    except ImageError as exc:
        pytest.skip(str(exc))
    assert first.cache_key() == second.cache_key()
    assert first.agent_dirs["kata_agent"].endswith("kata_agent")


def test_pinned_requirements_are_the_hosts_versions_with_their_own_requirements():
    import importlib.metadata as md

    pins = dict(pinned_requirements(("grpcio", "protobuf", "uvloop")))
    assert pins["grpcio"] == md.version("grpcio")
    assert pins["protobuf"] == md.version("protobuf")
    assert pins["uvloop"] == md.version("uvloop")
    for req in md.requires("grpcio") or ():  # grpcio's unconditional requirements come along
        name = req.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].split("~")[0].strip()
        if "extra" not in req.partition(";")[2]:
            assert name.lower().replace("_", "-") in pins
    assert "pytest" not in pins
    with pytest.raises(ImageError, match="not installed"):
        pinned_requirements(("no-such-distribution-kata",))


# ------------------------------------------------------------- commands


def test_mmdebstrap_gets_no_mirror_and_its_own_mount_namespace():
    argv = mmdebstrap_argv("/tmp/root", Recipe())
    assert argv[0] == "mmdebstrap" and argv[-2:] == ["bookworm", "/tmp/root"]
    assert "--mode=unshare" in argv and "--variant=minbase" in argv
    assert "--include=python3,runc,procps" in argv
    assert not any("://" in a or a.startswith("http") for a in argv)


def test_pip_installs_pinned_wheels_for_the_guests_python_and_glibc(tmp_path):
    argv = pip_argv("/t", make_inputs(tmp_path), python="/py")
    assert argv[:4] == ["/py", "-m", "pip", "install"]
    assert {"--no-deps", "--only-binary=:all:"} <= set(argv)
    assert argv[argv.index("--python-version") + 1] == "3.11" and argv[argv.index("--abi") + 1] == "cp311"
    platforms = [argv[i + 1] for i, a in enumerate(argv) if a == "--platform"]
    assert platforms[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in platforms
    assert platforms[-1] == "manylinux2014_x86_64"
    assert argv[-2:] == ["grpcio==1.85.1", "protobuf==7.36.2"]


# ---------------------------------------------------------------- initrd


def signed(elf: bytes, signature: bytes = b"\x30\x82PKCS#7 bytes") -> bytes:
    """``elf`` as scripts/sign-file leaves it: signature, struct module_signature, marker."""
    info = bytes([0, 0, 2, 0, 0, 0, 0, 0]) + len(signature).to_bytes(4, "big")  # id_type 2: PKCS#7
    return elf + signature + info + MODULE_SIGNATURE_MARKER


def test_a_module_loses_its_signature_and_nothing_else():
    elf = b"\x7fELF\x02\x01" + bytes(range(256)) * 4
    assert without_signature(signed(elf)) == elf
    assert without_signature(elf) == elf  # unsigned: as is
    assert without_signature(signed(elf, b"")) == elf
    for corrupt in (MODULE_SIGNATURE_MARKER, b"\x7fELF" + bytes(8) + (10 ** 6).to_bytes(4, "big") + MODULE_SIGNATURE_MARKER,
                    b"not an ELF" + bytes(8) + (0).to_bytes(4, "big") + MODULE_SIGNATURE_MARKER):
        with pytest.raises(ImageError, match="corrupt module"):
            without_signature(corrupt, "x")


@tool("modinfo")
def test_the_hosts_signed_modules_lose_exactly_their_signature():
    """Debian's own ext4.ko: an ELF before and after, shorter by the PKCS#7 block, the 12-byte
    struct and the marker."""
    try:
        kernel = find_kernel()
    except ImageError as exc:
        pytest.skip(str(exc))
    module = next(m for m in module_closure(["ext4"], kernel.version) if m.name == "ext4")
    data = module_bytes(module)
    if not data.endswith(MODULE_SIGNATURE_MARKER):
        pytest.skip("this kernel's modules are not signed")
    stripped = without_signature(data, "ext4")
    assert stripped.startswith(b"\x7fELF") and not stripped.endswith(MODULE_SIGNATURE_MARKER)
    signature_length = int.from_bytes(data[-len(MODULE_SIGNATURE_MARKER) - 4:-len(MODULE_SIGNATURE_MARKER)], "big")
    assert len(data) - len(stripped) == signature_length + 12 + len(MODULE_SIGNATURE_MARKER)


@tool("cpio")
def test_initrd_holds_busybox_modules_in_order_and_our_init(tmp_path):
    busybox = find_busybox()
    mods = []
    for name in ("virtio_ring", "virtio", "ext4"):
        (tmp_path / f"{name}.ko").write_bytes(f"ELF {name}".encode())
        mods.append(Module(name, str(tmp_path / f"{name}.ko")))
    (tmp_path / "ext4.ko").write_bytes(signed(b"\x7fELF ext4"))  # Debian's modules are signed
    xz = tmp_path / "jbd2.ko.xz"
    import lzma
    xz.write_bytes(lzma.compress(b"ELF jbd2"))
    mods.append(Module("jbd2", str(xz)))
    out = tmp_path / "initrd.img"
    size = write_initrd(str(out), mods, busybox)
    assert size == out.stat().st_size
    archive = gzip.decompress(out.read_bytes())
    root = tmp_path / "root"
    extract(archive, root)
    assert (root / "lib/modules/order").read_text().split() == ["virtio_ring.ko", "virtio.ko", "ext4.ko", "jbd2.ko"]
    assert (root / "lib/modules/jbd2.ko").read_bytes() == b"ELF jbd2"  # decompressed
    assert (root / "lib/modules/ext4.ko").read_bytes() == b"\x7fELF ext4"  # without its signature
    assert (root / "init").read_text() == INIT_SCRIPT and os.access(root / "init", os.X_OK)
    assert (root / "bin/busybox").read_bytes() == Path(busybox).read_bytes()
    assert os.readlink(root / "bin/switch_root") == "busybox"
    assert any(line.startswith("crw") and line.endswith("dev/console") for line in listing(archive))
    # the same inputs give the same bytes (mtime 0 everywhere)
    write_initrd(str(tmp_path / "again.img"), mods, busybox)
    assert (tmp_path / "again.img").read_bytes() == out.read_bytes()


def test_init_mounts_the_image_read_only_and_nothing_of_the_host():
    assert "mount -t ext4 -o ro /dev/vda /newroot" in INIT_SCRIPT
    assert "exec switch_root /newroot /usr/bin/python3 -I -m kata_agent" in INIT_SCRIPT
    assert "9p" not in INIT_SCRIPT and "hostroot" not in INIT_SCRIPT
    assert "poweroff -f" in INIT_SCRIPT  # a failure ends the VM (and so QEMU) at once


# ----------------------------------------------------------------- ext4


def test_image_size_adds_ten_percent_and_headroom_rounded_to_a_mib():
    mib = 1 << 20
    assert image_size(0, 0, 32) == 32 * mib
    assert image_size(100 * mib, 1000, 32) == 143 * mib  # 110.24 MiB + 32, rounded up
    assert image_size(1, 0, 0) == mib


@needs_root
@tool("mke2fs")
@tool("debugfs")
def test_make_ext4_packs_a_tree_without_mounting_it(tmp_path):
    tree = tmp_path / "tree"
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/hello").write_text("hello\n")
    (tree / "usr/bin/hello").chmod(0o755)
    os.link(tree / "usr/bin/hello", tree / "usr/bin/hello2")
    os.symlink("hello", tree / "usr/bin/hi")
    img = tmp_path / "fs.img"
    size = make_ext4(str(tree), str(img), headroom_mib=4, uuid="12345678-1234-1234-1234-123456789abc")
    assert size == img.stat().st_size and size % (1 << 20) == 0
    cat = subprocess.run(["debugfs", "-R", "cat /usr/bin/hello", str(img)], capture_output=True, text=True)
    assert cat.stdout == "hello\n"
    info = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True).stdout
    assert "has_journal" not in info.split("Filesystem features:")[1].splitlines()[0]
    assert "12345678-1234-1234-1234-123456789abc" in info
    fsck = subprocess.run(["e2fsck", "-n", "-f", str(img)], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    with pytest.raises(ImageError, match="already exists"):
        make_ext4(str(tree), str(img))


# -------------------------------------------------------------- progress


def test_progress_prints_each_step_with_its_elapsed_time():
    now = [100.0]
    out = io.StringIO()
    progress = Progress(2, out, clock=lambda: now[0])
    with progress.step("rootfs"):
        progress.detail("I: extracting archives...")
        now[0] += 41.25
    with pytest.raises(RuntimeError):
        with progress.step("image"):
            now[0] += 2.0
            raise RuntimeError("boom")
    assert out.getvalue().splitlines() == [
        "image [1/2] rootfs ...",
        "image       I: extracting archives...",
        "image [1/2] rootfs: done in 41.2 s (total 41.2 s)",
        "image [2/2] image ...",
        "image [2/2] image: failed after 2.0 s",
    ]
    assert progress.timings == [("rootfs", 41.25)]


# ----------------------------------------------------- cache atomicity


def fake_steps(fail_at: str | None = None, calls: list | None = None):
    """build_steps stand-in: writes the three artefacts (or fails half-way) into the work dir."""

    def steps(work, inputs, progress):
        if calls is not None:
            calls.append(work)
        for name in (build_mod.VMLINUX_NAME, build_mod.IMAGE_NAME, build_mod.INITRD_NAME):
            with progress.step(name):
                if name == fail_at:
                    raise ImageError(f"{name} failed")
                Path(work, name).write_bytes(name.encode())
        return {"image": 1, "kernel_file": build_mod.VMLINUX_NAME}

    return steps


@pytest.fixture
def build_host_ok(monkeypatch):
    """The atomicity tests run their fake steps anywhere: skip the root/tools check."""
    monkeypatch.setattr(build_mod, "check_build_host", lambda: None)


def test_a_build_that_cannot_succeed_here_fails_at_once(tmp_path, monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(build_mod.shutil, "which", lambda name: None if name == "mmdebstrap" else real_which(name))
    monkeypatch.setattr(build_mod.os, "geteuid", lambda: 0)
    with pytest.raises(ImageError, match="needs: apt-get install mmdebstrap"):
        build_mod.build_image(str(tmp_path / "c"), inputs=make_inputs(tmp_path), progress=Progress(3, quiet=True))
    monkeypatch.setattr(build_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(ImageError, match="needs root"):
        build_mod.build_image(str(tmp_path / "c"), inputs=make_inputs(tmp_path), progress=Progress(3, quiet=True))
    assert not (tmp_path / "c").exists()


def test_a_build_is_cached_by_key_reused_and_forced(tmp_path, monkeypatch, build_host_ok):
    calls = []
    monkeypatch.setattr(build_mod, "build_steps", fake_steps(calls=calls))
    inputs = make_inputs(tmp_path)
    cache = tmp_path / "cache"
    quiet = lambda: Progress(3, quiet=True)  # noqa: E731
    first = build_mod.build_image(str(cache), inputs=inputs, progress=quiet())
    assert first.built and Path(first.image).read_bytes() == b"rootfs.img"
    assert first.directory == str(cache / inputs.cache_key()[:24])
    assert Path(first.directory, "build.json").exists()
    hit = build_mod.build_image(str(cache), inputs=inputs, progress=quiet())
    assert not hit.built and hit.image == first.image and len(calls) == 1
    forced = build_mod.build_image(str(cache), inputs=inputs, progress=quiet(), force=True)
    assert forced.built and len(calls) == 2 and forced.directory == first.directory
    other = make_inputs(tmp_path, kernel_digest="z" * 64)
    assert build_mod.build_image(str(cache), inputs=other, progress=quiet()).directory != first.directory
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith(".")) == [".lock"]
    assert all(not os.path.exists(w) for w in calls)  # work dirs were renamed into place


def test_a_failed_build_leaves_nothing_and_a_stale_one_is_removed(tmp_path, monkeypatch, build_host_ok):
    cache = tmp_path / "cache"
    cache.mkdir()
    stale = cache / ".build-dead"
    (stale / "rootfs" / "usr").mkdir(parents=True)
    calls = []
    monkeypatch.setattr(build_mod, "build_steps", fake_steps(fail_at=build_mod.IMAGE_NAME, calls=calls))
    inputs = make_inputs(tmp_path)
    with pytest.raises(ImageError, match="rootfs.img failed"):
        build_mod.build_image(str(cache), inputs=inputs, progress=Progress(3, quiet=True))
    assert sorted(p.name for p in cache.iterdir()) == [".lock"]  # no entry, no work dir, stale one gone
    assert build_mod.load_entry(str(cache), inputs.cache_key()) is None


def test_an_entry_with_a_missing_file_is_not_a_cache_hit(tmp_path, monkeypatch, build_host_ok):
    monkeypatch.setattr(build_mod, "build_steps", fake_steps())
    inputs = make_inputs(tmp_path)
    image = build_mod.build_image(str(tmp_path / "c"), inputs=inputs, progress=Progress(3, quiet=True))
    os.unlink(image.initrd)
    assert build_mod.load_entry(str(tmp_path / "c"), inputs.cache_key()) is None
    again = build_mod.build_image(str(tmp_path / "c"), inputs=inputs, progress=Progress(3, quiet=True))
    assert again.built and os.path.exists(again.initrd)


@needs_root
def test_removing_a_build_dir_never_deletes_through_a_mount(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    work = tmp_path / "cache" / ".build-x"
    (work / "rootfs" / "dev").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(outside), str(work / "rootfs" / "dev")], check=True)
    try:
        assert build_mod.mounts_under(str(work)) == [str(work / "rootfs" / "dev")]
        build_mod.remove_build_dir(str(work))
    finally:
        subprocess.run(["umount", str(work / "rootfs" / "dev")], capture_output=True)
    assert not work.exists()
    assert (outside / "precious").read_text() == "keep me"


def test_recipe_fields_are_all_in_the_key_material(tmp_path):
    material = make_inputs(tmp_path).key_material()["recipe"]
    assert set(material) == {f.name for f in dataclasses.fields(Recipe)}


# ------------------------------------------------------------------- CLI


def test_kata_runtime_image_build_fails_in_one_line(tmp_path):
    from click.testing import CliRunner

    from kata_runtime.cli.image import command

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    result = CliRunner().invoke(command, ["build", "--cache-dir", str(blocker / "images")])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: image build: ")
    assert "Traceback" not in result.output


def test_image_is_a_kata_runtime_command(tmp_path, capsys):
    from kata_runtime.cli import main

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    assert main(["--root", str(tmp_path / "root"), "image", "build", "--cache-dir", str(blocker / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("image build: ")
