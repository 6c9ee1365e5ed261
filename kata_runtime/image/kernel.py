"""The guest kernel and its modules: Debian's linux-image-amd64 on the host.

    find_kernel(version=None) -> Kernel(version, path, modules_dir)
    module_closure(["ext4", ...], version) -> [Module(name, path), ...]   (insmod order)
    module_bytes(module) -> bytes                                         (decompressed .ko)
    without_signature(data, name) -> bytes                                (its signature cut off)
    extract_vmlinux(path) -> bytes | None                                 (ELF inside a bzImage)

The kernel is ``/boot/vmlinuz-<version>``; its modules live in ``/lib/modules/<version>/``. Which
file a module is and what it needs come from kmod's `modinfo`: ``modinfo -k VER -n NAME`` (its
path, or ``(builtin)``) and ``modinfo -k VER -F depends NAME`` (comma-separated names). Soft
dependencies (``softdep pre: crypto-crc32c`` of ext4) are NOT followed: they name aliases with
several providers, some of which need CPU features a TCG guest lacks (crc32c-intel); the recipe
lists the provider it wants (crc32c_generic) instead.

The guest boots the UNCOMPRESSED kernel when it can (Kata ships ``vmlinux.container`` for QEMU
too): a Debian bzImage is an xz-compressed vmlinux behind a real-mode stub, and under TCG
SeaBIOS + that decompression took about 19 s here before the kernel's first line, against
1.6 s for the ELF ``vmlinux`` that QEMU starts at its PVH entry point (CONFIG_PVH: the ELF
note XEN_ELFNOTE_PHYS32_ENTRY). `extract_vmlinux` finds the compressed payload by its magic
(xz, gzip; zstd through `zstd`), like the kernel tree's scripts/extract-vmlinux.
"""

from __future__ import annotations

import gzip
import lzma
import os
import re
import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from typing import Callable

from kata_runtime.image.errors import ImageError

BOOT_DIR = "/boot"
MODULES_ROOT = "/lib/modules"
BUILTIN = "(builtin)"

#: ``modinfo(version, field, name) -> text`` — field is "filename" or "depends".
Modinfo = Callable[[str, str, str], str]


@dataclass(frozen=True)
class Kernel:
    """A guest kernel: its version string (``6.1.0-57-amd64``), image path and modules dir."""

    version: str
    path: str
    modules_dir: str


@dataclass(frozen=True)
class Module:
    """One loadable module: its name (underscores) and the .ko file (maybe .ko.xz/.zst/.gz)."""

    name: str
    path: str


def _version_key(version: str) -> list:
    """Natural sort key: 6.1.0-57 sorts after 6.1.0-9."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", version)]


def find_kernel(version: str | None = None, *, boot_dir: str = BOOT_DIR, modules_root: str = MODULES_ROOT) -> Kernel:
    """The kernel ``version`` (default: the newest ``vmlinuz-*`` that has its modules dir).

    Raises ImageError when there is none (``apt-get install linux-image-amd64``).
    """
    if version is not None:
        path = os.path.join(boot_dir, f"vmlinuz-{version}")
        modules = os.path.join(modules_root, version)
        if not os.path.isfile(path) or not os.path.isdir(modules):
            raise ImageError(f"no guest kernel {version}: need {path} and {modules} (Debian linux-image-amd64)")
        return Kernel(version, path, modules)
    found = []
    for name in os.listdir(boot_dir) if os.path.isdir(boot_dir) else ():
        if name.startswith("vmlinuz-"):
            ver = name[len("vmlinuz-"):]
            if os.path.isdir(os.path.join(modules_root, ver)):
                found.append(ver)
    if not found:
        raise ImageError(f"no guest kernel: no {boot_dir}/vmlinuz-* with its {modules_root}/<version> "
                         "(apt-get install linux-image-amd64)")
    best = max(found, key=_version_key)
    return Kernel(best, os.path.join(boot_dir, f"vmlinuz-{best}"), os.path.join(modules_root, best))


def run_modinfo(version: str, field: str, name: str) -> str:
    """``modinfo -k VERSION -F FIELD NAME``'s output; raises ImageError if the module is unknown."""
    if shutil.which("modinfo") is None:
        raise ImageError("modinfo not found (apt-get install kmod)")
    proc = subprocess.run(["modinfo", "-k", version, "-F", field, name], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ImageError(f"kernel module {name!r} not found for {version}: {proc.stderr.strip()}")
    return proc.stdout.strip()


def module_closure(names: list[str] | tuple[str, ...], version: str, modinfo: Modinfo = run_modinfo) -> list[Module]:
    """``names`` and everything they depend on, each before its dependants (insmod order).

    Depth first in the order given, so the result is stable. Built-in modules are left out (there
    is nothing to load). Raises ImageError for an unknown module or a dependency cycle.
    """
    order: list[Module] = []
    done: set[str] = set()
    visiting: list[str] = []

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in done:
            return
        if name in visiting:
            raise ImageError(f"kernel module dependency cycle: {' -> '.join([*visiting, name])}")
        visiting.append(name)
        path = modinfo(version, "filename", name).splitlines()
        path = path[0].strip() if path else ""
        if path and path != BUILTIN:
            for dep in filter(None, (d.strip() for d in modinfo(version, "depends", name).split(","))):
                visit(dep)
            order.append(Module(name, path))
        visiting.pop()
        done.add(name)

    for name in names:
        visit(name)
    return order


def module_bytes(module: Module) -> bytes:
    """The module's ELF object, decompressed (.ko.xz, .ko.gz; .ko.zst through `zstd`)."""
    path = module.path
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ImageError(f"cannot read kernel module {module.name} ({path}): {exc.strerror}") from exc
    if path.endswith(".xz"):
        return lzma.decompress(data)
    if path.endswith(".gz"):
        return gzip.decompress(data)
    if path.endswith(".zst"):
        if shutil.which("zstd") is None:
            raise ImageError(f"{path} is zstd-compressed: apt-get install zstd")
        return subprocess.run(["zstd", "-qdc", path], capture_output=True, check=True).stdout
    return data


#: The end of a signed module (the kernel's scripts/sign-file, include/linux/module_signature.h):
#: ELF | PKCS#7 signature | struct module_signature (12 bytes; its last 4: the signature's
#: length, big-endian) | this marker.
MODULE_SIGNATURE_MARKER = b"~Module signature appended~\n"
MODULE_SIGNATURE_INFO = 12


def without_signature(data: bytes, name: str = "module") -> bytes:
    """``data`` (a module's ELF object) with its appended signature cut off; unsigned data as is.

    The guest kernel checks the signature of every module it loads (SHA-512 and RSA, emulated
    under TCG): /init's module loading took 0.47-0.71 s with unsigned modules against 0.92-1.02 s
    with Debian's signed ones (guest clock, alternated boots; ext4.ko alone 0.15-0.23 vs 0.33-0.37).
    The check adds no trust there: the modules come from the host's linux-image package (apt
    verified them) into the initrd the host boots the guest with, next to the kernel itself. The
    guest kernel marks itself tainted (E, "module verification failed") at the first one, as
    module.sig_enforce is off in Debian's kernels. Raises ImageError when the marker is there but
    the lengths before it do not add up (a corrupt module)."""
    if not data.endswith(MODULE_SIGNATURE_MARKER):
        return data
    info_end = len(data) - len(MODULE_SIGNATURE_MARKER)
    info = data[info_end - MODULE_SIGNATURE_INFO:info_end]
    signature_length = struct.unpack(">I", info[-4:])[0] if len(info) == MODULE_SIGNATURE_INFO else -1
    elf_end = info_end - MODULE_SIGNATURE_INFO - signature_length
    if signature_length < 0 or elf_end < len(ELF_MAGIC) or not data.startswith(ELF_MAGIC):
        raise ImageError(f"kernel module {name}: its appended signature does not fit the file (corrupt module)")
    return data[:elf_end]


# ------------------------------------------------------------------ vmlinux

ELF_MAGIC = b"\x7fELF"
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
PT_NOTE = 4
#: Xen ELF note type XEN_ELFNOTE_PHYS32_ENTRY: the 32-bit PVH entry point QEMU jumps to.
XEN_ELFNOTE_PHYS32_ENTRY = 18


def _decompress_at(data: bytes, offset: int, magic: bytes) -> bytes | None:
    """The stream starting at ``offset``, decompressed (trailing bytes ignored); None if corrupt."""
    try:
        if magic == XZ_MAGIC:
            return lzma.LZMADecompressor().decompress(data[offset:])
        if magic == GZIP_MAGIC:
            return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data[offset:])
        if magic == ZSTD_MAGIC and shutil.which("zstd"):
            proc = subprocess.run(["zstd", "-qdc"], input=data[offset:], capture_output=True)
            return proc.stdout or None
    except (lzma.LZMAError, zlib.error):
        return None
    return None


def extract_vmlinux(path: str) -> bytes | None:
    """The ELF vmlinux compressed inside the bzImage at ``path``, or None when none is found.

    Tries each xz/gzip/zstd magic in the file, in order, until one decompresses to an ELF.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ImageError(f"cannot read the kernel {path}: {exc.strerror}") from exc
    if data.startswith(ELF_MAGIC):
        return data
    for magic in (XZ_MAGIC, GZIP_MAGIC, ZSTD_MAGIC):
        offset = data.find(magic)
        while offset >= 0:
            out = _decompress_at(data, offset, magic)
            if out and out.startswith(ELF_MAGIC):
                return out
            offset = data.find(magic, offset + 1)
    return None


def has_pvh_entry(elf: bytes) -> bool:
    """True if a 64-bit little-endian ELF has a Xen PHYS32_ENTRY note (QEMU can boot it directly)."""
    if not elf.startswith(ELF_MAGIC) or len(elf) < 64 or elf[4] != 2 or elf[5] != 1:
        return False
    phoff, = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type == PT_NOTE and _notes_have(elf[p_offset:p_offset + p_filesz], b"Xen", XEN_ELFNOTE_PHYS32_ENTRY):
            return True
    return False


def _notes_have(notes: bytes, name: bytes, kind: int) -> bool:
    """Walk ELF notes (namesz, descsz, type, name, desc; 4-byte aligned) looking for (name, kind)."""
    pos = 0
    while pos + 12 <= len(notes):
        namesz, descsz, ntype = struct.unpack_from("<III", notes, pos)
        nname = notes[pos + 12:pos + 12 + namesz].rstrip(b"\0")
        if nname == name and ntype == kind:
            return True
        pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False
