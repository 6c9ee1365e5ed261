"""`build_image()`: the guest kernel, initrd and rootfs image, cached by a hash of their inputs.

    image = build_image()                     # cache hit: ~50 ms; first build: a minute or more
    image.kernel, image.initrd, image.image   # absolute paths, for the QEMU driver

Cache layout (default /var/cache/kata-py/images; one directory per key)::

    <cache>/<key[:24]>/vmlinux      the uncompressed kernel from /boot/vmlinuz-<version> (QEMU boots it at
                                    its PVH entry: ~17 s faster under TCG); or vmlinuz, a copy of the
                                    bzImage, for a kernel without one. The initrd's modules match it.
    <cache>/<key[:24]>/initrd.img   gzip'd cpio newc: busybox, modules, /init (kata_runtime.image.initrd)
    <cache>/<key[:24]>/rootfs.img   ext4, mounted read-only by the guest (kata_runtime.image.ext4)
    <cache>/<key[:24]>/build.json   the key's inputs, sizes and step times; written last
    <cache>/.lock                   flock held while building: concurrent builds wait for each other
    <cache>/.build-*                a build in progress (a stale one is removed by the next build)

Atomic: everything is built in ``.build-*`` beside the final directory and renamed into place
in one step; a failed build removes its ``.build-*`` (and a killed one is removed by the next
build), so a key's directory is either complete or absent. A build is only started when the key's
directory is absent, or ``force`` is true (the old one is replaced by the same rename).

Steps (each printed with its elapsed time by kata_runtime.image.progress):
rootfs (mmdebstrap) -> agent (pip + our packages) -> byte code -> ext4 -> initrd -> kernel + manifest.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass, field

from kata_runtime.image import ext4, initrd, rootfs
from kata_runtime.image.errors import ImageError
from kata_runtime.image.kernel import Kernel, extract_vmlinux, has_pvh_entry, module_closure
from kata_runtime.image.progress import Progress
from kata_runtime.image.recipe import Inputs, Recipe, gather_inputs

DEFAULT_CACHE_DIR = "/var/cache/kata-py/images"
VMLINUX_NAME = "vmlinux"
BZIMAGE_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"
IMAGE_NAME = "rootfs.img"
MANIFEST_NAME = "build.json"
LOCK_NAME = ".lock"
BUILD_PREFIX = ".build-"
KEY_LENGTH = 24
STEPS = 6


@dataclass(frozen=True)
class GuestImage:
    """A complete cache entry: absolute paths of the three boot artefacts, and how it was had."""

    key: str
    directory: str
    kernel: str
    initrd: str
    image: str
    kernel_version: str
    #: True when this call built it, False for a cache hit.
    built: bool = False
    #: Seconds this call took (build or lookup).
    seconds: float = 0.0
    timings: tuple[tuple[str, float], ...] = field(default=())


def entry_dir(cache_dir: str, key: str) -> str:
    return os.path.join(cache_dir, key[:KEY_LENGTH])


def load_entry(cache_dir: str, key: str) -> GuestImage | None:
    """The complete entry for ``key``, or None (absent, or a manifest of another key)."""
    directory = entry_dir(cache_dir, key)
    try:
        with open(os.path.join(directory, MANIFEST_NAME)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return None
    kernel_name = manifest.get("kernel_file")
    if kernel_name not in (VMLINUX_NAME, BZIMAGE_NAME):
        return None
    paths = [os.path.join(directory, n) for n in (kernel_name, INITRD_NAME, IMAGE_NAME)]
    if manifest.get("key") != key or not all(os.path.isfile(p) for p in paths):
        return None
    return GuestImage(key=key, directory=directory, kernel=paths[0], initrd=paths[1], image=paths[2],
                      kernel_version=manifest.get("inputs", {}).get("kernel_version", ""))


# --------------------------------------------------------------- removal


def mounts_under(path: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points at or below ``path`` (deepest first)."""
    path = os.path.realpath(path)
    found = [t for t in mount_points(mountinfo) if t == path or t.startswith(path + "/")]
    return sorted(found, key=len, reverse=True)


def mount_points(mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Field 5 of each mountinfo line (the mount point), octal escapes (\\040) decoded."""
    try:
        with open(mountinfo, "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    decode = lambda m: bytes([int(m.group(1), 8)])  # noqa: E731
    return [os.fsdecode(re.sub(rb"\\([0-7]{3})", decode, line.split(b" ")[4])) for line in lines
            if len(line.split(b" ")) > 4]


def remove_build_dir(path: str) -> None:
    """Remove a (maybe half-built) build directory, never crossing into a mount.

    mmdebstrap runs in its own mount namespace, so nothing should be mounted there; if something
    is (a killed tool of another kind), it is lazily unmounted first, and the directory is left
    alone (ImageError) rather than deleted through a mount that would not go away.
    """
    if not os.path.lexists(path):
        return
    for target in mounts_under(path):
        subprocess.run(["umount", "--lazy", target], capture_output=True)
    left = mounts_under(path)
    if left:
        raise ImageError(f"cannot remove {path}: still mounted there: {', '.join(left)}")
    shutil.rmtree(path)


def remove_stale_builds(cache_dir: str) -> None:
    """``.build-*`` directories of builds that died (called with the cache lock held)."""
    for name in os.listdir(cache_dir):
        if name.startswith(BUILD_PREFIX):
            remove_build_dir(os.path.join(cache_dir, name))


@contextlib.contextmanager
def cache_lock(cache_dir: str, progress: Progress):
    """Exclusive flock on ``<cache>/.lock`` for the duration of a build."""
    fd = os.open(os.path.join(cache_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress.note(f"waiting for another image build in {cache_dir} ...")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# ------------------------------------------------------------------ build

#: Tools of a build -> the Debian package that has them.
BUILD_TOOLS = {"mmdebstrap": "mmdebstrap", "mke2fs": "e2fsprogs", "modinfo": "kmod", "chroot": "coreutils",
               "umount": "mount"}


def check_build_host() -> None:
    """Raise ImageError at once (not a minute into a build) when a build cannot succeed here."""
    if os.geteuid() != 0:
        raise ImageError("building the guest image needs root (mmdebstrap's chroot, real file owners)")
    missing = sorted({pkg for tool, pkg in BUILD_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise ImageError(f"building the guest image needs: apt-get install {' '.join(missing)}")



def build_steps(work: str, inputs: Inputs, progress: Progress) -> dict:
    """All steps into the empty directory ``work``; returns the manifest's "sizes" dict."""
    recipe = inputs.recipe
    tree = os.path.join(work, "rootfs")
    with progress.step(f"rootfs: mmdebstrap {recipe.suite} {recipe.variant} + {', '.join(recipe.packages)}"):
        rootfs.run_mmdebstrap(tree, recipe, progress)
    with progress.step("agent: pinned wheels and our packages into " + recipe.site_packages):
        rootfs.install_agent(tree, inputs, progress)
    with progress.step("byte code: compileall by the guest's python3"):
        rootfs.compile_bytecode(tree, recipe)
    with progress.step("image: mke2fs -d (ext4, read-only in the guest)"):
        image_bytes = ext4.make_ext4(tree, os.path.join(work, IMAGE_NAME), headroom_mib=recipe.headroom_mib,
                                     uuid=str(uuidlib.UUID(inputs.cache_key()[:32])))
        remove_build_dir(tree)
    with progress.step(f"initrd: busybox + modules of {inputs.kernel.version} + /init"):
        modules = module_closure(recipe.modules, inputs.kernel.version)
        initrd_bytes = initrd.write_initrd(os.path.join(work, INITRD_NAME), modules, inputs.busybox)
        progress.detail("modules: " + " ".join(m.name for m in modules))
    with progress.step(f"kernel: uncompressed vmlinux from {inputs.kernel.path}"):
        kernel_file = install_kernel(inputs.kernel, work, progress)
    return {"image": image_bytes, "initrd": initrd_bytes, "kernel": os.path.getsize(os.path.join(work, kernel_file)),
            "kernel_file": kernel_file, "modules": [m.name for m in modules]}


def install_kernel(kernel: Kernel, work: str, progress: Progress) -> str:
    """``vmlinux`` (the ELF inside the bzImage, when QEMU can boot it: a PVH entry note) or, failing
    that, a copy of the bzImage as ``vmlinuz``; returns the file name used."""
    elf = extract_vmlinux(kernel.path)
    if elf is not None and has_pvh_entry(elf):
        with open(os.path.join(work, VMLINUX_NAME), "wb") as f:
            f.write(elf)
        return VMLINUX_NAME
    progress.detail(f"{kernel.path}: no vmlinux with a PVH entry inside; the guest boots the bzImage (slower)")
    shutil.copyfile(kernel.path, os.path.join(work, BZIMAGE_NAME))
    return BZIMAGE_NAME


def write_manifest(work: str, key: str, inputs: Inputs, sizes: dict, progress: Progress) -> None:
    manifest = {"key": key, "kernel_file": sizes["kernel_file"], "inputs": inputs.key_material(), "sizes": sizes,
                "timings": {title: round(s, 2) for title, s in progress.timings},
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(os.path.join(work, MANIFEST_NAME), "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")


def commit(work: str, final: str) -> None:
    """Rename the finished build into place (replacing an old entry of the same key)."""
    old = None
    if os.path.lexists(final):
        old = final + ".old-" + uuidlib.uuid4().hex[:8]
        os.rename(final, old)
    os.rename(work, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def build_image(cache_dir: str | None = None, *, force: bool = False, recipe: Recipe | None = None,
                progress: Progress | None = None, inputs: Inputs | None = None) -> GuestImage:
    """The guest image for the current inputs: from the cache, or built (``force``: always built).

    Raises ImageError (a missing tool or input, a failed step); a failed build leaves nothing.
    """
    t0 = time.monotonic()
    cache_dir = os.path.abspath(cache_dir or DEFAULT_CACHE_DIR)
    progress = progress or Progress(STEPS)
    inputs = inputs or gather_inputs(recipe or Recipe())
    key = inputs.cache_key()
    if not force and (hit := load_entry(cache_dir, key)) is not None:
        return _with(hit, built=False, seconds=time.monotonic() - t0)
    check_build_host()
    try:
        os.makedirs(cache_dir, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise ImageError(f"cannot create the image cache dir {cache_dir}: {exc.strerror}") from exc
    with cache_lock(cache_dir, progress):
        if not force and (hit := load_entry(cache_dir, key)) is not None:  # built while we waited
            return _with(hit, built=False, seconds=time.monotonic() - t0)
        remove_stale_builds(cache_dir)
        work = tempfile.mkdtemp(prefix=BUILD_PREFIX, dir=cache_dir)
        try:
            os.chmod(work, 0o755)
            sizes = build_steps(work, inputs, progress)
            write_manifest(work, key, inputs, sizes, progress)
            commit(work, entry_dir(cache_dir, key))
        except BaseException:
            remove_build_dir(work)
            raise
    image = load_entry(cache_dir, key)
    if image is None:
        raise ImageError(f"image build of {key[:KEY_LENGTH]} finished but its cache entry is incomplete")
    return _with(image, built=True, seconds=time.monotonic() - t0, timings=tuple(progress.timings))


def _with(image: GuestImage, **changes) -> GuestImage:
    from dataclasses import replace

    return replace(image, **changes)
