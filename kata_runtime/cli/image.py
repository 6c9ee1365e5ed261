"""`kata-runtime image build [--force] [--cache-dir DIR]`: build (or find) the guest image.

What it prints: progress step lines with elapsed times on stderr while it builds (nothing on a
cache hit but one line), then on stdout the three paths a `[hypervisor.qemu]` section takes::

    kernel /var/cache/kata-py/images/<key>/vmlinuz
    initrd /var/cache/kata-py/images/<key>/initrd.img
    image  /var/cache/kata-py/images/<key>/rootfs.img

Exit 0; a failed build prints one line saying which step failed and why, exit 1 (and leaves no
partial cache entry). See kata_runtime.image for what goes into the image and the cache key.
"""

from __future__ import annotations

import sys

import click

from kata_runtime.image.build import DEFAULT_CACHE_DIR, STEPS


@click.group(name="image", help="The guest image (kernel, initrd, rootfs) for hypervisor = \"qemu\".")
def command():
    pass


@command.command(name="build", help="Build the guest image, or find it in the cache (rebuilt only when "
                                    "the agent's code, its dependencies, the kernel or the recipe change).")
@click.option("--force", is_flag=True, help="Rebuild even when the cache has an image for these inputs.")
@click.option("--cache-dir", default=DEFAULT_CACHE_DIR, show_default=True, metavar="DIR",
              help="Where built images are kept (one directory per input hash).")
def build(force: bool, cache_dir: str) -> None:
    from kata_runtime.image import ImageError, Progress, build_image

    try:
        image = build_image(cache_dir, force=force, progress=Progress(STEPS, sys.stderr))
    except ImageError as exc:
        raise click.ClickException(f"image build: {exc}") from None
    how = f"built in {image.seconds:.1f} s" if image.built else "cached"
    click.echo(f"image {image.key[:24]} ({image.kernel_version}): {how}", err=True)
    click.echo(f"kernel {image.kernel}")
    click.echo(f"initrd {image.initrd}")
    click.echo(f"image  {image.image}")
