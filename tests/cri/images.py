"""Images of the CRI tier, built locally on tests/support/oci_image.py (no registry): the busybox image
as it is, and a ``pause``-style sandbox image with the same layer.

    build_pause_image_tar(dest_tar) -> ImageTar      # name PAUSE_IMAGE

The pause image is the busybox image (same layer, same digests of it) whose config runs
:data:`PAUSE_ARGS` as its entrypoint: a shell that sleeps until SIGTERM or SIGINT and then
exits 0, as Kubernetes' pause does (a pid namespace's init gets no signal it has no handler
for, hence the trap). The CRI plugin runs it as each pod's sandbox container.

Raises FileNotFoundError when no static busybox is installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.support.oci_image import (  # find_busybox: wherever the reaper tier takes it from
    MT_CONFIG, MT_MANIFEST, ImageTar, _descriptor, _json_blob, build_busybox_image_tar, build_layer,
    find_busybox, image_blobs, write_layout)

PAUSE_IMAGE = "kata-py.test/pause:1"
BUSYBOX_IMAGE = "kata-py.test/busybox:latest"
PAUSE_ARGS = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]

__all__ = ["BUSYBOX_IMAGE", "PAUSE_IMAGE", "build_busybox_image_tar", "build_pause_image_tar"]


def _with_entrypoint(blobs: dict[str, bytes], index: bytes, entrypoint: list[str]) -> tuple[dict[str, bytes], bytes]:
    """The image of (``blobs``, ``index``) with its config's Entrypoint set and Cmd cleared: the
    config, manifest and index are rewritten (new digests), the layer kept."""
    old_manifest_desc = json.loads(index)["manifests"][0]
    manifest = json.loads(blobs[old_manifest_desc["digest"]])
    config = json.loads(blobs[manifest["config"]["digest"]])
    config["config"].update(Entrypoint=entrypoint, Cmd=None)
    config_blob = _json_blob(config)
    manifest["config"] = _descriptor(MT_CONFIG, config_blob)
    manifest_blob = _json_blob(manifest)
    extra = {k: v for k, v in old_manifest_desc.items() if k in ("platform", "annotations")}
    manifest_desc = _descriptor(MT_MANIFEST, manifest_blob, **extra)
    layers = {d["digest"]: blobs[d["digest"]] for d in manifest["layers"]}
    new_blobs = {**layers, manifest["config"]["digest"]: config_blob, manifest_desc["digest"]: manifest_blob}
    return new_blobs, _json_blob({"schemaVersion": 2, "manifests": [manifest_desc]})


def build_pause_image_tar(dest_tar: str | os.PathLike, name: str = PAUSE_IMAGE) -> ImageTar:
    """Write the pause image (see the module docstring) to ``dest_tar``; FileNotFoundError
    without a static busybox."""
    busybox = find_busybox()
    if busybox is None:
        raise FileNotFoundError("no static busybox on this machine (apt-get install busybox-static)")
    blobs, index = _with_entrypoint(*image_blobs(build_layer(busybox), name), PAUSE_ARGS)
    write_layout(dest_tar, blobs, index)
    return ImageTar(Path(dest_tar), name, json.loads(index)["manifests"][0]["digest"])
