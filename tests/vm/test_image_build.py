"""The real guest image build (once per session, shared through the `guest_image` fixture), what
is inside it, the cache hit that follows, and `kata-runtime image build`."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from kata_runtime.cli.image import command as image_command
from kata_runtime.image import Recipe, build_image, gather_inputs
from kata_runtime.image.kernel import extract_vmlinux
from kata_runtime.image.recipe import package_dir, package_files

pytestmark = pytest.mark.vm

SITE = "/usr/local/lib/python3.11/dist-packages"


def debugfs(image: str, request: str) -> subprocess.CompletedProcess:
    return subprocess.run(["debugfs", "-R", request, image], capture_output=True)


def guest_file(image: str, path: str) -> bytes:
    proc = debugfs(image, f"cat {path}")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def guest_ls(image: str, path: str) -> list[str]:
    out = debugfs(image, f"ls -p {path}").stdout.decode()
    return [line.split("/")[5] for line in out.splitlines() if line.count("/") >= 6 and line.split("/")[5] not in (".", "..")]


def test_the_build_makes_kernel_initrd_and_a_clean_read_only_ext4(guest_image):
    for path in (guest_image.kernel, guest_image.initrd, guest_image.image):
        assert os.path.isabs(path) and os.path.getsize(path) > 0
    # the uncompressed kernel inside Debian's bzImage (QEMU boots it at its PVH entry)
    assert os.path.basename(guest_image.kernel) == "vmlinux"
    boot_kernel = f"/boot/vmlinuz-{guest_image.kernel_version}"
    assert Path(guest_image.kernel).read_bytes() == extract_vmlinux(boot_kernel)
    fsck = subprocess.run(["e2fsck", "-n", "-f", guest_image.image], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
    features = subprocess.run(["dumpe2fs", "-h", guest_image.image], capture_output=True, text=True).stdout
    assert "has_journal" not in features.split("Filesystem features:")[1].splitlines()[0]


def test_the_image_has_python_runc_and_the_agent_with_its_dependencies(guest_image):
    img = guest_image.image
    for path in ("/usr/bin/python3", "/usr/sbin/runc", "/usr/bin/ps"):
        assert debugfs(img, f"stat {path}").returncode == 0 and b"not found" not in debugfs(img, f"stat {path}").stderr
    site = guest_ls(img, SITE)
    for name in ("kata_agent", "kata_grpc", "kata_log", "yamux", "katapb", "google", "uvloop"):
        assert name in site, site
    assert any(n.startswith("protobuf-") and n.endswith(".dist-info") for n in site)
    # the agent serves gRPC with kata_grpc: no grpcio in the guest
    assert "grpc" not in site and not any(n.startswith("grpcio-") for n in site), site
    # our packages are copied as they are in this checkout
    for pkg in ("kata_agent", "yamux"):
        src = package_dir(pkg)
        for rel in package_files(src)[:5]:
            assert guest_file(img, f"{SITE}/{pkg}/{rel}") == Path(src, rel).read_bytes()
    # byte code made at build time, hash-based and unchecked (the image is read-only)
    pyc = guest_file(img, f"{SITE}/kata_agent/__pycache__/cli.cpython-311.pyc")
    assert int.from_bytes(pyc[4:8], "little") == 0b01
    # nothing of the checkout or of the host's root came along
    assert "work" not in guest_ls(img, "/") and "kata_agent" not in guest_ls(img, "/")


def test_the_initrd_holds_our_init_and_the_kernels_modules(guest_image, tmp_path):
    archive = gzip.decompress(Path(guest_image.initrd).read_bytes())
    names = subprocess.run(["cpio", "-t", "--quiet"], input=archive, capture_output=True, check=True).stdout.split()
    assert b"init" in names and b"bin/busybox" in names
    order = (tmp_path / "order")
    subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "lib/modules/order"], input=archive, check=True,
                   stdout=order.open("wb"))
    modules = order.read_text().split()
    assert modules.index("virtio.ko") < modules.index("virtio_console.ko")
    assert modules.index("jbd2.ko") < modules.index("ext4.ko")
    assert modules.index("9pnet.ko") < modules.index("9pnet_virtio.ko") < modules.index("9p.ko")
    assert {f"{m}.ko" for m in Recipe().modules} <= set(modules)  # every module of the recipe, after its depends
    for m in modules:
        assert f"lib/modules/{m}".encode() in names
    ext4 = subprocess.run(["cpio", "-i", "--quiet", "--to-stdout", "lib/modules/ext4.ko"], input=archive, check=True,
                          capture_output=True).stdout
    assert ext4.startswith(b"\x7fELF") and not ext4.endswith(b"~Module signature appended~\n")  # see without_signature


def test_a_second_build_with_the_same_inputs_is_a_cache_hit(guest_image, guest_inputs, image_cache_dir, figures):
    t0 = time.monotonic()
    gather_inputs(Recipe())  # what a cached `kata-runtime image build` costs: digests + lookup
    again = build_image(image_cache_dir, inputs=guest_inputs)
    seconds = time.monotonic() - t0
    assert not again.built
    assert (again.key, again.image, again.initrd, again.kernel) == (guest_image.key, guest_image.image,
                                                                    guest_image.initrd, guest_image.kernel)
    assert seconds < 5.0
    figures.append(f"guest image cached build (inputs digested + cache lookup): {seconds * 1000:.0f} ms")
    manifest = Path(again.directory, "build.json").read_text()
    boot_kernel = Path(f"/boot/vmlinuz-{guest_image.kernel_version}")
    assert hashlib.sha256(boot_kernel.read_bytes()).hexdigest() in manifest


def test_kata_runtime_image_build_prints_the_three_paths(guest_image, image_cache_dir):
    result = CliRunner().invoke(image_command, ["build", "--cache-dir", image_cache_dir])
    assert result.exit_code == 0, result.output
    lines = [line.split() for line in result.stdout.splitlines() if line]
    assert [kind for kind, _ in lines] == ["kernel", "initrd", "image"]
    paths = [Path(path) for _, path in lines]
    assert [p.name for p in paths] == ["vmlinux", "initrd.img", "rootfs.img"]
    assert all(p.is_file() and p.parent.parent == Path(image_cache_dir) for p in paths)
    assert len({p.parent for p in paths}) == 1
    # the session's image, unless someone edited the agent meanwhile (then it was built just now)
    assert ("cached" in result.stderr and paths[2] == Path(guest_image.image)) or "built in" in result.stderr
