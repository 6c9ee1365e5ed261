"""The guest image builder (Kata's osbuilder): kernel, initrd and read-only ext4 rootfs.

    from kata_runtime.image import build_image
    image = build_image(cache_dir=None, force=False)    # GuestImage(kernel, initrd, image, key, ...)

Modules: recipe (what goes in, cache key), rootfs (mmdebstrap, the agent, byte code), ext4
(mke2fs -d), kernel (vmlinuz, modinfo closure), initrd (busybox, modules, /init), cpio (newc
writer), progress (step lines), build (cache, lock, atomic commit). `kata-runtime image build`
is kata_runtime/cli/image.py.
"""

from kata_runtime.image.build import DEFAULT_CACHE_DIR, GuestImage, build_image, load_entry
from kata_runtime.image.errors import ImageError
from kata_runtime.image.progress import Progress
from kata_runtime.image.recipe import Inputs, Recipe, gather_inputs

__all__ = ["DEFAULT_CACHE_DIR", "GuestImage", "ImageError", "Inputs", "Progress", "Recipe", "build_image",
           "gather_inputs", "load_entry"]
