"""The guest initrd: static busybox, the kernel modules the guest needs, and our /init.

    write_initrd(path, modules=[Module, ...], busybox="/bin/busybox") -> size in bytes

Layout (a gzip-compressed cpio newc archive, see kata_runtime.image.cpio)::

    init                       the script below (PID 1 until it switch_roots)
    bin/busybox                Debian's busybox-static; bin/<applet> -> busybox for the applets /init uses
    lib/modules/<name>.ko      decompressed modules without their signatures (see
                               kernel.without_signature), and lib/modules/order: one file name a line,
                               dependencies first (kata_runtime.image.kernel.module_closure)
    dev/console                char 5:1, so the kernel can open the initial console
    proc/ sys/ dev/ newroot/   mount points

What /init does: mount proc and devtmpfs, insmod every module in order, move its stdio to
/dev/hvc0 (the virtconsole QEMU logs to <sandbox>/console.log), wait for /dev/vda (the guest
image on virtio-blk), mount it read-only on /newroot, move /dev there, and
``switch_root /newroot /usr/bin/python3 -I -m kata_agent``: the agent is PID 1 and mounts the
rest itself (kata_agent/init.py: proc, sys, /dev/pts, /run, /tmp, cgroups). Nothing of the host
is mounted; the 9p share comes later, when the runtime's CreateSandbox asks for it.

On any failure /init prints ``kata-init: <why>`` (on hvc0, or in the kernel log before hvc0 exists)
and powers the guest off,
so QEMU exits and the runtime reports the console's last lines.
"""

from __future__ import annotations

import gzip
import os
import struct

from kata_runtime.image.cpio import NewcWriter
from kata_runtime.image.errors import ImageError
from kata_runtime.image.kernel import Module, module_bytes, without_signature

BUSYBOX_CANDIDATES = ("/bin/busybox", "/usr/bin/busybox")
#: The applets /init calls (symlinks in bin/).
APPLETS = ("sh", "mount", "umount", "insmod", "switch_root", "sleep", "poweroff", "cat", "echo")
MODULES_DIR = "lib/modules"
NEWROOT = "/newroot"
#: The guest image's device: the first (and only) virtio-blk disk.
IMAGE_DEVICE = "/dev/vda"
AGENT_COMMAND = "/usr/bin/python3 -I -m kata_agent"
GZIP_LEVEL = 6

INIT_SCRIPT = f"""#!/bin/sh
# kata-py guest /init (initrd): load the modules, mount the guest image read-only, then
# switch_root into it with kata-agent as PID 1. Written by kata_runtime/image/initrd.py.
export PATH=/bin
fail() {{
    if [ -n "$on_hvc0" ]; then echo "kata-init: $*"; else echo "<3>kata-init: $*" > /dev/kmsg; fi
    sleep 1
    poweroff -f
}}
mount -t proc proc /proc || fail "cannot mount /proc"
mount -t devtmpfs devtmpfs /dev || fail "cannot mount devtmpfs on /dev"
while read -r m; do
    insmod "/{MODULES_DIR}/$m" || fail "insmod $m failed"
done < /{MODULES_DIR}/order
[ -c /dev/hvc0 ] && exec </dev/hvc0 >/dev/hvc0 2>&1 && on_hvc0=1
i=0
while [ ! -b {IMAGE_DEVICE} ]; do
    i=$((i + 1))
    [ $i -gt 100 ] && fail "no {IMAGE_DEVICE} after 10 s: QEMU must attach the guest image on virtio-blk"
    sleep 0.1
done
mount -t ext4 -o ro {IMAGE_DEVICE} {NEWROOT} || fail "cannot mount the guest image {IMAGE_DEVICE} (ext4, read-only)"
[ -x {NEWROOT}/usr/bin/python3 ] || fail "the guest image on {IMAGE_DEVICE} has no /usr/bin/python3"
mount --move /dev {NEWROOT}/dev || fail "cannot move /dev into the guest image"
umount /proc
exec switch_root {NEWROOT} {AGENT_COMMAND}
"""


def is_static_elf(path: str) -> bool:
    """True for a 64-bit ELF without a PT_INTERP program header (statically linked)."""
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF" or ident[4] != 2:
                return False
            phoff, = struct.unpack_from("<Q", ident, 0x20)
            phentsize, phnum = struct.unpack_from("<HH", ident, 0x36)
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                p_type, = struct.unpack("<I", f.read(4))
                if p_type == 3:  # PT_INTERP
                    return False
    except (OSError, struct.error):
        return False
    return True


def find_busybox(candidates: tuple[str, ...] = BUSYBOX_CANDIDATES) -> str:
    """A statically linked busybox (the initrd has no libc); ImageError if there is none."""
    for path in candidates:
        if os.path.isfile(path) and is_static_elf(path):
            return path
    raise ImageError(f"no static busybox in {', '.join(candidates)} (apt-get install busybox-static)")


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror}") from exc


def write_initrd_archive(cpio: NewcWriter, modules: list[Module], busybox: str) -> None:
    """Every entry of the initrd, in an order where each directory precedes its contents."""
    for d in ("bin", "dev", "proc", "sys", "lib", MODULES_DIR, NEWROOT.lstrip("/")):
        cpio.add_dir(d)
    cpio.add_char_device("dev/console", 5, 1)
    cpio.add_file("bin/busybox", _read(busybox), mode=0o755)
    for applet in APPLETS:
        cpio.add_symlink(f"bin/{applet}", "busybox")
    names = []
    for module in modules:
        name = f"{module.name}.ko"
        cpio.add_file(f"{MODULES_DIR}/{name}", without_signature(module_bytes(module), module.name))
        names.append(name)
    cpio.add_file(f"{MODULES_DIR}/order", "".join(f"{n}\n" for n in names).encode())
    cpio.add_file("init", INIT_SCRIPT.encode(), mode=0o755)


def write_initrd(path: str, modules: list[Module], busybox: str) -> int:
    """Write the gzip'd newc initrd to ``path``; returns its size in bytes. Raises ImageError."""
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL, mtime=0) as gz:
            with NewcWriter(gz) as cpio:
                write_initrd_archive(cpio, modules, busybox)
        return raw.tell()
