"""Unit tests: LISTEN_FDS parsing (sd_listen_fds semantics) and the own-socket rules."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from kata_proxy import exits
from kata_proxy import listener as kl


@pytest.mark.parametrize("env, pid, want", [
    ({}, 100, []),
    ({"LISTEN_PID": "100", "LISTEN_FDS": "1"}, 100, [3]),
    ({"LISTEN_PID": "100", "LISTEN_FDS": "3"}, 100, [3, 4, 5]),
    ({"LISTEN_PID": "101", "LISTEN_FDS": "1"}, 100, []),  # meant for another process
    ({"LISTEN_PID": "100"}, 100, []),
    ({"LISTEN_PID": "100", "LISTEN_FDS": "0"}, 100, []),
    ({"LISTEN_FDS": "1"}, 100, []),  # no LISTEN_PID: not for us
    ({"LISTEN_PID": " 100 ", "LISTEN_FDS": "1 "}, 100, [3]),
])
def test_parse_listen_env(env, pid, want):
    fds, names = kl.parse_listen_env(env, pid)
    assert fds == want
    assert len(names) == len(fds)


def test_parse_listen_env_names():
    env = {"LISTEN_PID": "7", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "proxy:other"}
    assert kl.parse_listen_env(env, 7) == ([3, 4], ["proxy", "other"])
    env["LISTEN_FDNAMES"] = "only-one"
    assert kl.parse_listen_env(env, 7)[1] == ["only-one", "unknown"]


@pytest.mark.parametrize("env", [
    {"LISTEN_PID": "abc", "LISTEN_FDS": "1"},
    {"LISTEN_PID": "0", "LISTEN_FDS": "1"},
    {"LISTEN_PID": "100", "LISTEN_FDS": "x"},
    {"LISTEN_PID": "100", "LISTEN_FDS": "-1"},
])
def test_parse_listen_env_invalid(env):
    with pytest.raises(ValueError):
        kl.parse_listen_env(env, 100)


def test_sd_listen_fds_unsets_environment():
    env = {"LISTEN_PID": str(os.getpid() + 1), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "x", "OTHER": "1"}
    assert kl.sd_listen_fds(unset_environment=True, env=env) == ([], [])
    assert env == {"OTHER": "1"}


def test_bind_creates_0600_socket_and_removes_it(sockdir):
    path = os.path.join(sockdir, "proxy.sock")
    lst = kl.bind_unix(path)
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert sorted(os.listdir(sockdir)) == ["proxy.sock"]  # no temporary name left behind
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.close()
    lst.close()
    assert not os.path.exists(path)


def test_stale_socket_is_replaced(sockdir):
    path = os.path.join(sockdir, "proxy.sock")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()  # bound, never listening: connect is refused -> stale
    lst = kl.bind_unix(path)
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).connect(path)
    finally:
        lst.close()


def test_live_socket_is_not_replaced(sockdir):
    path = os.path.join(sockdir, "proxy.sock")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(1)
    ino = os.lstat(path).st_ino
    try:
        with pytest.raises(exits.ProxyExit) as info:
            kl.bind_unix(path)
        assert info.value.code == exits.LISTEN
        assert "in use" in info.value.message
        assert os.lstat(path).st_ino == ino
    finally:
        live.close()


def test_regular_file_is_not_replaced(sockdir):
    path = os.path.join(sockdir, "proxy.sock")
    with open(path, "w") as fh:
        fh.write("precious")
    with pytest.raises(exits.ProxyExit) as info:
        kl.bind_unix(path)
    assert "not a socket" in info.value.message
    assert open(path).read() == "precious"


def test_parent_checks(sockdir):
    with pytest.raises(exits.ProxyExit, match="does not exist"):
        kl.bind_unix(os.path.join(sockdir, "missing", "p.sock"))
    afile = os.path.join(sockdir, "afile")
    open(afile, "w").close()
    with pytest.raises(exits.ProxyExit, match="not a directory"):
        kl.bind_unix(os.path.join(afile, "p.sock"))
    with pytest.raises(exits.ProxyExit, match="longer than"):
        kl.bind_unix(os.path.join(sockdir, "x" * 120))
    assert sorted(os.listdir(sockdir)) == ["afile"]


def test_close_leaves_a_replaced_path_alone(sockdir):
    path = os.path.join(sockdir, "proxy.sock")
    lst = kl.bind_unix(path)
    os.unlink(path)
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    other.bind(path)  # somebody else's socket now lives at the path
    lst.close()
    assert os.path.exists(path)
    other.close()


def test_from_fds_checks_the_socket():
    good = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    good.bind("\0kata-proxy-test-%d" % os.getpid())
    good.listen(1)
    lst = kl.from_fds([os.dup(good.fileno())])
    assert lst.activated and not lst.owned
    lst.close()
    good.close()

    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(exits.ProxyExit, match="not listening"):
        kl.from_fds([idle.fileno()])
    idle.close()

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with pytest.raises(exits.ProxyExit, match="AF_UNIX stream"):
        kl.from_fds([udp.fileno()])
    udp.close()

    r, w = os.pipe()
    with pytest.raises(exits.ProxyExit, match="not a socket"):
        kl.from_fds([r])
    os.close(r)
    os.close(w)

    with pytest.raises(exits.ProxyExit, match="exactly 1"):
        kl.from_fds([3, 4])
