"""A small OCI image of the host's static busybox, built locally: no registry, no docker.

    build_busybox_image_tar(dest_tar, name="kata-py.test/busybox:latest") -> ImageTar

The tar is an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``) holding one
manifest, one config and one uncompressed layer. The layer has ``/bin/busybox`` (the host's
busybox-static, a regular file), a symlink per applet in :data:`APPLETS`, the usual mount points
and minimal ``/etc/passwd``/``/etc/group``. Every entry has uid/gid 0 and mtime 0, so the same
busybox always gives the same digests. ``ctr image import`` takes the name from the index's
``io.containerd.image.name`` annotation.

Raises FileNotFoundError when no static busybox is installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tests.support.rootfs import find_busybox

DEFAULT_NAME = "kata-py.test/busybox:latest"
APPLETS = (
    "sh", "ash", "cat", "echo", "true", "false", "sleep", "ls", "stty", "head", "tail", "dd", "wc",
    "sha256sum", "kill", "env", "id", "ps", "yes", "printf", "test", "[", "tr", "seq", "mkdir", "rm",
    "hostname", "grep", "sed", "tee", "date", "uname", "pwd", "readlink", "tty", "md5sum", "od",
    "nproc", "top", "sync", "cut", "base64",
)
DIRS = ("bin", "dev", "proc", "sys", "tmp", "run", "etc", "root", "usr", "usr/bin", "sbin", "var")
PASSWD = b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"
GROUP = b"root:x:0:\ntty:x:5:\nnogroup:x:65534:\n"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@dataclass(frozen=True)
class ImageTar:
    path: Path  # the OCI layout tar
    name: str  # the image reference it imports as
    manifest_digest: str  # "sha256:<hex>"


def _tarinfo(name: str, kind: bytes, *, size: int = 0, mode: int = 0o755, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.linkname = kind, size, mode, link
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mtime = 0
    return info


def build_layer(busybox: str) -> bytes:
    """The uncompressed layer tarball (bytes): the rootfs described in the module docstring."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in DIRS:
            tar.addfile(_tarinfo(d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755))
        data = Path(busybox).read_bytes()
        tar.addfile(_tarinfo("bin/busybox", tarfile.REGTYPE, size=len(data)), io.BytesIO(data))
        for applet in APPLETS:
            tar.addfile(_tarinfo(f"bin/{applet}", tarfile.SYMTYPE, mode=0o777, link="busybox"))
        for name, body in (("etc/passwd", PASSWD), ("etc/group", GROUP), ("etc/hostname", b"container\n")):
            tar.addfile(_tarinfo(name, tarfile.REGTYPE, size=len(body), mode=0o644), io.BytesIO(body))
    return buf.getvalue()


def _descriptor(media_type: str, blob: bytes, **extra) -> dict:
    return {"mediaType": media_type, "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
            "size": len(blob), **extra}


def _json_blob(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def image_blobs(layer: bytes, name: str) -> tuple[dict[str, bytes], bytes]:
    """The blobs of the image ({"sha256:<hex>": bytes}) and the index.json (bytes)."""
    layer_desc = _descriptor(MT_LAYER, layer)
    config = _json_blob({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "kata-py tests/support/oci_image.py"}],
    })
    config_desc = _descriptor(MT_CONFIG, config)
    manifest = _json_blob({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config_desc,
                           "layers": [layer_desc]})
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    manifest_desc = _descriptor(MT_MANIFEST, manifest, platform={"architecture": "amd64", "os": "linux"},
                                annotations={"io.containerd.image.name": name,
                                             "org.opencontainers.image.ref.name": tag})
    index = _json_blob({"schemaVersion": 2, "manifests": [manifest_desc]})
    blobs = {layer_desc["digest"]: layer, config_desc["digest"]: config, manifest_desc["digest"]: manifest}
    return blobs, index


def build_busybox_image_tar(dest_tar: str | os.PathLike, name: str = DEFAULT_NAME,
                            busybox: str | None = None) -> ImageTar:
    """Write the OCI layout tar to ``dest_tar`` and return what it is (see the module docstring)."""
    busybox = busybox or find_busybox()
    if busybox is None:
        raise FileNotFoundError("no static busybox on this machine (apt-get install busybox-static)")
    blobs, index = image_blobs(build_layer(busybox), name)
    write_layout(dest_tar, blobs, index)
    manifest_digest = json.loads(index)["manifests"][0]["digest"]
    return ImageTar(Path(dest_tar), name, manifest_digest)


def write_layout(dest_tar: str | os.PathLike, blobs: dict[str, bytes], index: bytes) -> None:
    """An OCI image layout tar of ``blobs`` ({"sha256:<hex>": bytes}) and ``index``."""
    files = {"oci-layout": _json_blob({"imageLayoutVersion": "1.0.0"}), "index.json": index}
    files.update({f"blobs/sha256/{d.split(':', 1)[1]}": b for d, b in blobs.items()})
    with tarfile.open(dest_tar, "w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            tar.addfile(_tarinfo(d, tarfile.DIRTYPE))
        for path, body in files.items():
            tar.addfile(_tarinfo(path, tarfile.REGTYPE, size=len(body), mode=0o644), io.BytesIO(body))
