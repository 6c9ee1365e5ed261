"""The state store under ``--root``: one directory per container and one per sandbox.

    <root>/containers/<container id>/state.json    what `state` and `list` print, and more
    <root>/sandboxes/<sandbox id>/sandbox.json      hypervisor, proxy, shared dir, members

Files are written atomically (a temporary file renamed over the old one), so a reader
without a lock (``state``, ``list``) sees a whole old or a whole new file. Commands that
change a container or sandbox hold an exclusive ``flock`` on its directory for the whole
command, so concurrent commands on one id (containerd calls the runtime concurrently)
queue up, as with runc. Lock order: a container before its sandbox.

A directory is reserved with mkdir (atomic: the second ``create`` of one id gets
"container with id exists"); its state file is written when the command succeeds, so a
directory without one is a create in progress (or one that crashed: ``delete --force``
removes it). ``state`` and ``list`` import this: the standard library's builtins and C codecs
only (kata_log.cjson for the JSON, no ``json``, ``re`` or ``enum``).
"""

import os

from kata_log import cjson
from kata_runtime.errors import AlreadyExists, InvalidArgument, KataError, NotFound, container_not_found

CONTAINERS = "containers"
SANDBOXES = "sandboxes"
CONTAINER_FILE = "state.json"
SANDBOX_FILE = "sandbox.json"

# runc's libcontainer rule (idRegex `^[\w+-\.]+$`: ASCII letters, digits and _ + - ., and not "."
# or ".."); 1024 as the agent's limit. A set, not a regular expression: `state` must not import re.
ID_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+.-")
MAX_ID_LENGTH = 1024


def check_id(value: str, what: str = "container") -> str:
    """Return ``value`` if it is a valid id (runc's rule), else raise InvalidArgument."""
    if not value or not ID_CHARACTERS.issuperset(value) or value in (".", "..") or len(value) > MAX_ID_LENGTH:
        raise InvalidArgument(f"invalid {what} ID format: {value!r} (use letters, digits and _ + - .)")
    return value


class Entry:
    """One locked state directory (a container's or a sandbox's); a context manager.

    ``read()`` / ``write(data)`` its JSON file, ``remove()`` it; the lock goes with
    ``release()`` or the end of the ``with`` block.
    """

    def __init__(self, path: str, filename: str, fd: int):
        self.path = path
        self.file = os.path.join(path, filename)
        self.fd = fd

    @property
    def id(self) -> str:
        return os.path.basename(self.path)

    def exists(self) -> bool:
        """True once the state file has been written (the create finished)."""
        return os.path.exists(self.file)

    def read(self) -> dict:
        """The state file's content; raises NotFound when it was never written or is gone."""
        return read_json(self.file)

    def write(self, data: dict) -> None:
        """Replace the state file atomically (write a temporary file, then rename it)."""
        write_json_atomic(self.file, data)

    def remove(self) -> None:
        """Delete the directory and its files (the lock stays held until release)."""
        for name in os.listdir(self.path):
            target = os.path.join(self.path, name)
            if os.path.isdir(target) and not os.path.islink(target):
                raise KataError(f"state directory {self.path} holds a directory {name}: not removing it")
            os.unlink(target)
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the last fd drops the flock
            self.fd = -1

    def __enter__(self) -> "Entry":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class Store:
    """The state under one --root (created on first write; reading a missing root lists nothing)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)

    # ---------------------------------------------------------------- paths
    def container_dir(self, container_id: str) -> str:
        return os.path.join(self.root, CONTAINERS, container_id)

    def sandbox_dir(self, sandbox_id: str) -> str:
        return os.path.join(self.root, SANDBOXES, sandbox_id)

    # ----------------------------------------------------------- containers
    def reserve_container(self, container_id: str) -> Entry:
        """Make and lock the container's directory; AlreadyExists if the id is taken."""
        check_id(container_id)
        return _reserve(self.container_dir(container_id), CONTAINER_FILE,
                        lambda: AlreadyExists(f"container with id exists: {container_id}"))

    def lock_container(self, container_id: str, *, need_state: bool = True) -> Entry:
        """Lock an existing container's directory (waits for a concurrent command on it).

        NotFound if there is no such container; with ``need_state`` also when its create
        has not finished (a directory without a state file).
        """
        check_id(container_id)
        entry = _lock_existing(self.container_dir(container_id), CONTAINER_FILE,
                               lambda: container_not_found(container_id))
        if need_state and not entry.exists():
            entry.release()
            raise container_not_found(container_id)
        return entry

    def read_container(self, container_id: str) -> dict:
        """A container's state without locking (``state``); NotFound if it does not exist."""
        check_id(container_id)
        try:
            return read_json(os.path.join(self.container_dir(container_id), CONTAINER_FILE))
        except NotFound:
            raise container_not_found(container_id) from None

    def container_ids(self) -> list[str]:
        """Ids of every container directory, sorted (creates in progress included)."""
        try:
            return sorted(os.listdir(os.path.join(self.root, CONTAINERS)))
        except FileNotFoundError:
            return []

    # ------------------------------------------------------------- sandboxes
    def reserve_sandbox(self, sandbox_id: str) -> Entry:
        """Make and lock a sandbox's directory; AlreadyExists if the id is taken."""
        check_id(sandbox_id, "sandbox")
        return _reserve(self.sandbox_dir(sandbox_id), SANDBOX_FILE,
                        lambda: AlreadyExists(f"sandbox with id exists: {sandbox_id}"))

    def lock_sandbox(self, sandbox_id: str) -> Entry:
        """Lock an existing sandbox's directory; NotFound if there is none."""
        check_id(sandbox_id, "sandbox")
        return _lock_existing(self.sandbox_dir(sandbox_id), SANDBOX_FILE,
                              lambda: NotFound(f"sandbox {sandbox_id} does not exist"))

    def read_sandbox(self, sandbox_id: str) -> dict | None:
        """A sandbox's state without locking, or None if it has none (yet, or any more)."""
        try:
            return read_json(os.path.join(self.sandbox_dir(sandbox_id), SANDBOX_FILE))
        except NotFound:
            return None


# ------------------------------------------------------------------ helpers


def _flock(fd: int) -> None:
    """An exclusive flock on ``fd`` (fcntl imported here: ``state`` and ``list`` read without
    locks, and never load it)."""
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)


def _reserve(path: str, filename: str, exists_error) -> Entry:
    os.makedirs(os.path.dirname(path), mode=0o711, exist_ok=True)
    try:
        os.mkdir(path, 0o711)
    except FileExistsError:
        raise exists_error() from None
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    _flock(fd)
    return Entry(path, filename, fd)


def _lock_existing(path: str, filename: str, missing_error, attempts: int = 5) -> Entry:
    """Open and flock ``path``; if it was removed while we waited, look again (it may be re-made)."""
    for _ in range(attempts):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise missing_error() from None
        _flock(fd)
        if os.fstat(fd).st_nlink > 0:
            return Entry(path, filename, fd)
        os.close(fd)  # removed by the command we waited for
    raise missing_error()


def read_json(path: str) -> dict:
    """A JSON object from ``path``; NotFound if the file does not exist, KataError if it is corrupt."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist") from None
    except NotADirectoryError:
        raise NotFound(f"{path} does not exist") from None
    try:
        value = cjson.loads(data)
    except ValueError as e:
        raise KataError(f"state file {path} is corrupt: {e}") from None
    if not isinstance(value, dict):
        raise KataError(f"state file {path} is corrupt: not a JSON object")
    return value


def write_json_atomic(path: str, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file in the same directory and rename(2)."""
    write_atomic(path, cjson.dumps(data, indent=1, sort_keys=True) + "\n")


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same directory and rename(2):
    a reader sees the whole old file or the whole new one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def remove_file(path: str) -> None:
    """Remove ``path``; one already gone is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

