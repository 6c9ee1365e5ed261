"""What a guest image is made of (the recipe) and the inputs its cache key is computed from.

    recipe = Recipe()                       # bookworm minbase + python3, runc, procps; the agent
    inputs = gather_inputs(recipe)          # agent code digest, pinned deps, kernel, busybox, builder
    inputs.cache_key()                      # 64 hex chars: same inputs -> same key, any change -> new key

Cache key inputs (Kata's osbuilder rebuilds on any of them; we hash them instead of asking):

* the recipe's fields (suite, packages, modules, ...) and the builder's own source
  (kata_runtime/image/*.py: the /init script and every step live there);
* the agent's code: every ``*.py`` of the packages installed into the guest (kata_agent and what
  it imports of ours: kata_grpc, kata_oci, kata_cgroups, kata_log, yamux, katapb), by relative path
  and content;
* the agent's Python dependencies, pinned to the versions installed on the host (protobuf, uvloop,
  pyroute2 and their own requirements; no grpcio: the agent serves gRPC with kata_grpc): the guest
  runs the same versions as the host's proxy and shim;
* the kernel: version and a digest of the vmlinuz file (its modules go into the initrd);
* the busybox binary of the initrd (digest).

Debian packages are not pinned: mmdebstrap takes what the host's apt sources serve (a snapshot on
the project's machines). `force` rebuilds when that matters.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
from dataclasses import asdict, dataclass, field

from kata_runtime.image.errors import ImageError
from kata_runtime.image.kernel import Kernel, find_kernel

#: Bumped when the layout of the cache entries changes (old entries are then ignored).
FORMAT_VERSION = 1
READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class Recipe:
    """The guest image recipe (defaults: what DESIGN.md's "The guest" section asks for)."""

    #: Debian suite and mmdebstrap variant of the root filesystem.
    suite: str = "bookworm"
    variant: str = "minbase"
    #: Debian packages on top of minbase: the agent's interpreter, the container runtime, and
    #: procps for ListProcesses (the agent runs `ps`).
    packages: tuple[str, ...] = ("python3", "runc", "procps")
    #: dpkg path filters: no docs, man pages or translations in a read-only guest (copyrights kept).
    dpkg_options: tuple[str, ...] = (
        "path-exclude=/usr/share/man/*",
        "path-exclude=/usr/share/info/*",
        "path-exclude=/usr/share/locale/*",
        "path-exclude=/usr/share/doc/*",
        "path-include=/usr/share/doc/*/copyright",
    )
    #: The suite's python3 (wheels are chosen for it, whatever the host's python is) and glibc
    #: (the newest manylinux tag its wheels may carry).
    python_version: str = "3.11"
    glibc: tuple[int, int] = (2, 36)
    #: Where pip-installed code goes in the guest: on the suite's default sys.path.
    site_packages: str = "/usr/local/lib/python3.11/dist-packages"
    #: Our packages copied into the guest (the agent and what it imports of ours).
    agent_packages: tuple[str, ...] = ("kata_agent", "kata_grpc", "kata_oci", "kata_cgroups", "kata_log", "yamux", "katapb")
    #: The agent's third-party imports; their requirements are added, pinned to the host's versions.
    agent_distributions: tuple[str, ...] = ("protobuf", "uvloop", "pyroute2")
    #: Kernel modules the initrd loads (dependencies added by `modinfo -F depends`): the virtio
    #: transport, virtio_rng (QEMU's virtio-rng: the CRNG is ready before the agent's Python reads
    #: /dev/urandom, which would otherwise wait 1.3-2.8 s under TCG for "crng init done"), the
    #: console (the agent channel and hvc0), the image's disk and file system, 9p for the shared
    #: dir, virtio_net for the pod network's tap. crc32c_generic is ext4's softdep provider that
    #: needs no CPU feature.
    modules: tuple[str, ...] = ("virtio_pci", "virtio_rng", "virtio_console", "virtio_blk", "crc32c_generic",
                                "ext4", "9pnet_virtio", "9p", "virtio_net")
    #: Free space in the ext4 image beyond its contents (the guest mounts it read-only).
    headroom_mib: int = 32
    #: Kernel version (None: the newest installed).
    kernel_version: str | None = None

    def to_json(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------ digests


def file_digest(path: str) -> str:
    """sha256 of a file's content (hex)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(READ_CHUNK):
                h.update(chunk)
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror}") from exc
    return h.hexdigest()


def package_dir(name: str) -> str:
    """Directory of an importable package of ours (source tree or installed); ImageError if absent."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImageError(f"package {name!r} not found: the guest image needs it")
    return os.path.abspath(list(spec.submodule_search_locations)[0])


def package_files(root: str) -> list[str]:
    """Relative paths of the ``*.py`` files under a package dir, sorted (no __pycache__)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in filenames:
            if name.endswith(".py"):
                found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def tree_digest(roots: dict[str, str]) -> str:
    """sha256 over ``{package name: dir}``: each ``*.py`` file's name/relative path and content."""
    h = hashlib.sha256()
    for name in sorted(roots):
        for rel in package_files(roots[name]):
            h.update(f"{name}/{rel}\0".encode())
            h.update(file_digest(os.path.join(roots[name], rel)).encode())
    return h.hexdigest()


# -------------------------------------------------------------- requirements

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_requirements(distributions: tuple[str, ...] | list[str]) -> tuple[tuple[str, str], ...]:
    """``((name, host version), ...)`` for the distributions and their requirements, sorted.

    Requirements that only come with an extra (``; extra == ...``) are skipped; others are kept
    when installed on the host (an uninstalled one has a marker that is false here). Raises
    ImageError when one of ``distributions`` itself is not installed.
    """
    pinned: dict[str, str] = {}
    todo = [(d, True) for d in distributions]
    while todo:
        name, required = todo.pop()
        key = _normalise(name)
        if key in pinned:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            if required:
                raise ImageError(f"the agent needs {name!r}, which is not installed on this host") from None
            continue
        pinned[key] = dist.version
        for req in dist.requires or ():
            if "extra" in req.partition(";")[2]:
                continue
            m = _NAME.match(req)
            if m:
                todo.append((m.group(1), False))
    return tuple(sorted(pinned.items()))


# -------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Inputs:
    """Everything a build depends on; `cache_key()` hashes all of it."""

    recipe: Recipe
    kernel: Kernel
    kernel_digest: str
    agent_dirs: dict[str, str] = field(compare=False)
    agent_digest: str
    requirements: tuple[tuple[str, str], ...]
    busybox: str
    busybox_digest: str
    builder_digest: str

    def key_material(self) -> dict:
        """The JSON-able dict the key is the hash of (paths of inputs are not in it, only contents)."""
        return {
            "format": FORMAT_VERSION,
            "recipe": self.recipe.to_json(),
            "kernel_version": self.kernel.version,
            "kernel_digest": self.kernel_digest,
            "agent_digest": self.agent_digest,
            "requirements": [list(r) for r in self.requirements],
            "busybox_digest": self.busybox_digest,
            "builder_digest": self.builder_digest,
        }

    def cache_key(self) -> str:
        text = json.dumps(self.key_material(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def builder_digest() -> str:
    """Digest of this package's own source (kata_runtime/image): a change in any step rebuilds."""
    return tree_digest({"kata_runtime.image": os.path.dirname(os.path.abspath(__file__))})


def gather_inputs(recipe: Recipe, *, busybox: str | None = None, kernel: Kernel | None = None) -> Inputs:
    """Find and digest every input of a build (about 50 ms). Raises ImageError for a missing one."""
    from kata_runtime.image.initrd import find_busybox

    kernel = kernel or find_kernel(recipe.kernel_version)
    busybox = busybox or find_busybox()
    agent_dirs = {name: package_dir(name) for name in recipe.agent_packages}
    return Inputs(
        recipe=recipe,
        kernel=kernel,
        kernel_digest=file_digest(kernel.path),
        agent_dirs=agent_dirs,
        agent_digest=tree_digest(agent_dirs),
        requirements=pinned_requirements(recipe.agent_distributions),
        busybox=busybox,
        busybox_digest=file_digest(busybox),
        builder_digest=builder_digest(),
    )
