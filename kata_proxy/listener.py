"""The client-side socket of kata-proxy: its own unix socket, or one handed over by systemd.

Own socket (``--listen-socket PATH``):

- the parent directory must exist, be a directory and be writable by us (checked first, so a
  bad path fails with one clear line and creates nothing);
- the socket is bound under a temporary name in the same directory with umask 0177 (so it is
  0600 from birth), then renamed over PATH: the path is never missing or looser than 0600;
- an existing PATH is replaced only when it is a *stale* socket (connect refused).  A live
  socket (another proxy still serving) or anything that is not a socket is left alone and is an
  error;
- on close the path is removed only if it is still the socket we created.

systemd (``LISTEN_PID``/``LISTEN_FDS``, no ``--listen-socket``): sd_listen_fds semantics.  The
variables apply only when LISTEN_PID is our pid; fds start at 3; they are made close-on-exec and
the variables are removed from the environment.  Exactly one listening AF_UNIX stream socket is
expected.  A socket from systemd is never unlinked by us.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat

from kata_proxy import exits

SD_LISTEN_FDS_START = 3
_MAX_SUN_PATH = 107  # sizeof(sun_path) - 1 on Linux


class ListenError(exits.ProxyExit):
    def __init__(self, message: str):
        super().__init__(exits.LISTEN, message)


def parse_listen_env(env, pid: int) -> tuple[list[int], list[str]]:
    """The fds (and names) that systemd passed to process ``pid``, as sd_listen_fds(3) reads them.

    Returns ``([], [])`` when the variables are absent or meant for another process.
    Raises ValueError for malformed values.
    """
    listen_pid = env.get("LISTEN_PID")
    if listen_pid is None:
        return [], []
    try:
        target = int(listen_pid.strip(), 10)
    except ValueError:
        raise ValueError(f"LISTEN_PID={listen_pid!r} is not a number") from None
    if target <= 0:
        raise ValueError(f"LISTEN_PID={listen_pid!r} is not a valid pid")
    if target != pid:
        return [], []
    listen_fds = env.get("LISTEN_FDS")
    if listen_fds is None:
        return [], []
    try:
        count = int(listen_fds.strip(), 10)
    except ValueError:
        raise ValueError(f"LISTEN_FDS={listen_fds!r} is not a number") from None
    if count < 0 or count > 4096:
        raise ValueError(f"LISTEN_FDS={listen_fds!r} is out of range")
    fds = list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count))
    names_env = env.get("LISTEN_FDNAMES")
    if names_env is not None and names_env != "":
        names = names_env.split(":")
        if len(names) != count:
            names = (names + ["unknown"] * count)[:count]
    else:
        names = ["unknown"] * count
    return fds, names


def sd_listen_fds(unset_environment: bool = True, env=None) -> tuple[list[int], list[str]]:
    """sd_listen_fds_with_names(): parse, mark the fds close-on-exec, optionally unset the env."""
    env = os.environ if env is None else env
    try:
        fds, names = parse_listen_env(env, os.getpid())
    finally:
        if unset_environment:
            for key in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
                env.pop(key, None)
    for fd in fds:
        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError as exc:
            raise ValueError(f"LISTEN_FDS names fd {fd}, which is not open ({exc.strerror})") from None
        fcntl.fcntl(fd, fcntl.F_SETFD, flags | fcntl.FD_CLOEXEC)
    return fds, names


class Listener:
    """A listening AF_UNIX stream socket and what to do with its path on close."""

    def __init__(self, sock: socket.socket, path: str | None, owned: bool, ident=None,
                 activated: bool = False):
        self.sock = sock
        self.path = path
        self.owned = owned
        self.activated = activated
        self._ident = ident  # (st_dev, st_ino) of the socket file we created

    def describe(self) -> str:
        if self.activated:
            return f"systemd fd {self.sock.fileno()}" + (f" ({self.path})" if self.path else "")
        return self.path or "?"

    def close(self) -> None:
        """Close the socket; unlink its path when we created it and it is still ours."""
        try:
            self.sock.close()
        except OSError:
            pass
        if self.owned and self.path and self._ident is not None:
            try:
                st = os.lstat(self.path)
            except OSError:
                return
            if (st.st_dev, st.st_ino) == self._ident and stat.S_ISSOCK(st.st_mode):
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
            self._ident = None


def check_parent(path: str) -> str:
    parent = os.path.dirname(path) or "."
    try:
        st = os.stat(parent)
    except FileNotFoundError:
        raise ListenError(f"listen socket {path}: parent directory {parent} does not exist") from None
    except OSError as exc:
        raise ListenError(f"listen socket {path}: parent directory {parent}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ListenError(f"listen socket {path}: parent {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ListenError(f"listen socket {path}: parent directory {parent} is not writable")
    return parent


def _probe_existing(path: str) -> None:
    """Raise unless ``path`` is absent or a stale socket that may be replaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ListenError(f"listen socket {path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"listen socket {path}: exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return  # stale: nobody listens; it will be replaced atomically
    except FileNotFoundError:
        return
    except socket.timeout:
        raise ListenError(f"listen socket {path}: in use by another process (backlog full)") from None
    except OSError as exc:
        if exc.errno in (errno.EAGAIN,):
            raise ListenError(f"listen socket {path}: in use by another process") from None
        raise ListenError(f"listen socket {path}: {exc.strerror}") from None
    finally:
        probe.close()
    raise ListenError(f"listen socket {path}: in use by another process")


def bind_unix(path: str, backlog: int = 128) -> Listener:
    """Create the 0600 listening socket at ``path`` (see the module docstring)."""
    path = os.path.abspath(path)
    if len(os.fsencode(path)) > _MAX_SUN_PATH:
        raise ListenError(f"listen socket {path}: path longer than {_MAX_SUN_PATH} bytes")
    parent = check_parent(path)
    _probe_existing(path)
    # os.urandom, not secrets: its import (random, hashlib) is on every sandbox's start path
    tmp = os.path.join(parent, f".{os.path.basename(path)[:40]}.{os.getpid()}.{os.urandom(4).hex()}")
    if len(os.fsencode(tmp)) > _MAX_SUN_PATH:
        tmp = os.path.join(parent, f".kp{os.urandom(6).hex()}")
    if len(os.fsencode(tmp)) > _MAX_SUN_PATH:
        raise ListenError(f"listen socket {path}: path too long for a temporary name beside it")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        try:
            sock.bind(tmp)
        finally:
            os.umask(old_umask)
        try:
            os.chmod(tmp, 0o600)
            sock.listen(backlog)
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        st = os.lstat(path)
    except ListenError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise ListenError(f"listen socket {path}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return Listener(sock, path, owned=True, ident=(st.st_dev, st.st_ino))


def from_fds(fds: list[int], names: list[str] | None = None) -> Listener:
    """Wrap the single listening socket systemd passed; ListenError when it is not usable."""
    if len(fds) != 1:
        raise ListenError(f"systemd passed {len(fds)} sockets (LISTEN_FDS); exactly 1 is supported")
    fd = fds[0]
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ListenError(f"systemd fd {fd}: not a socket ({exc.strerror})") from None
    if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ListenError(f"systemd fd {fd}: not an AF_UNIX stream socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise ListenError(f"systemd fd {fd}: socket is not listening")
    name = sock.getsockname()
    if isinstance(name, bytes):  # abstract socket
        path = "@" + name[1:].decode(errors="replace") if name else None
    else:
        path = name or None
    sock.setblocking(False)
    return Listener(sock, path, owned=False, activated=True)
