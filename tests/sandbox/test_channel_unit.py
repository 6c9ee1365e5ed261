"""Unit tests of the agent's channel discovery and set-up helpers (no processes)."""

import asyncio
import os
import socket

import pytest

from kata_agent import channel as ch
from kata_agent import init


def make_sysfs(root, ports):
    """A fake /sys/class/virtio-ports tree: {"vport0p1": "name\\n" or None (no name file)}."""
    base = root / "sys" / "class" / "virtio-ports"
    base.mkdir(parents=True)
    for port, name in ports.items():
        (base / port).mkdir()
        if name is not None:
            (base / port / "name").write_text(name)
    dev = root / "dev"
    dev.mkdir()
    return str(root / "sys"), str(dev)


def test_find_virtio_port_by_name(tmp_path):
    sysfs, dev = make_sysfs(tmp_path, {
        "vport0p0": "",                       # the console port has an empty name
        "vport1p1": "agent.channel.01\n",     # prefix of another name: no match
        "vport1p2": None,                     # no name file at all
        "vport2p1": "agent.channel.0\n",
    })
    assert ch.find_virtio_port(sysfs_root=sysfs, dev_root=dev) == os.path.join(dev, "vport2p1")
    assert ch.find_virtio_port("agent.channel.01", sysfs_root=sysfs, dev_root=dev) == os.path.join(dev, "vport1p1")
    assert ch.find_virtio_port("nope", sysfs_root=sysfs, dev_root=dev) is None


def test_find_virtio_port_without_sysfs_class(tmp_path):
    assert ch.find_virtio_port(sysfs_root=str(tmp_path / "nothing")) is None


async def test_wait_virtio_port_waits_for_sysfs_and_dev_node(tmp_path):
    sysfs, dev = make_sysfs(tmp_path, {"vport0p0": ""})

    async def hotplug():
        await asyncio.sleep(0.1)
        port = tmp_path / "sys" / "class" / "virtio-ports" / "vport1p1"
        port.mkdir()
        (port / "name").write_text("agent.channel.0\n")
        await asyncio.sleep(0.1)  # the device node shows up a little later
        (tmp_path / "dev" / "vport1p1").write_text("")

    task = asyncio.ensure_future(hotplug())
    path = await ch.wait_virtio_port(sysfs_root=sysfs, dev_root=dev, timeout=5, interval=0.01)
    await task
    assert path == os.path.join(dev, "vport1p1")


async def test_wait_virtio_port_times_out_clearly(tmp_path):
    sysfs, dev = make_sysfs(tmp_path, {"vport0p0": ""})
    with pytest.raises(ch.ChannelError, match="no virtio-serial port named 'agent.channel.0'"):
        await ch.wait_virtio_port(sysfs_root=sysfs, dev_root=dev, timeout=0.1, interval=0.01)
    port = tmp_path / "sys" / "class" / "virtio-ports" / "vport3p1"
    port.mkdir()
    (port / "name").write_text("agent.channel.0\n")
    with pytest.raises(ch.ChannelError, match="does not exist"):
        await ch.wait_virtio_port(sysfs_root=sysfs, dev_root=dev, timeout=0.1, interval=0.01)


def test_open_channel_defaults_to_the_virtio_port(tmp_path):
    sysfs, dev = make_sysfs(tmp_path, {})
    c = ch.open_channel(sysfs_root=sysfs, dev_root=dev)
    assert isinstance(c, ch.VirtioPortChannel) and c.reusable


async def test_channel_fd_listening_socket_accepts_one_connection(tmp_path):
    path = str(tmp_path / "kata.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    fd = os.dup(listener.fileno())  # `listener` stays open: another holder, like unshare
    c = ch.open_channel(fd=fd)
    assert isinstance(c, ch.ListeningSocketChannel) and not c.reusable
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)  # succeeds before the agent accepts: the backlog holds it
    transport = await c.connect()
    client.sendall(b"hello")
    loop = asyncio.get_running_loop()
    assert await loop.sock_recv(transport.sock, 5) == b"hello"
    # one client only: the listener is closed once the connection is accepted
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with pytest.raises(ConnectionRefusedError):
        other.connect(path)
    other.close()
    transport.close()
    client.close()
    listener.close()


async def test_channel_fd_connected_socket():
    a, b = socket.socketpair()
    c = ch.open_channel(fd=a.detach())
    assert isinstance(c, ch.ConnectedSocketChannel)
    transport = await c.connect()
    b.sendall(b"x")
    assert await asyncio.get_running_loop().sock_recv(transport.sock, 1) == b"x"
    transport.close()
    b.close()


def test_channel_fd_rejects_files_and_bad_fds(tmp_path):
    f = open(tmp_path / "file", "w")
    with pytest.raises(ch.ChannelError, match="neither a socket nor a character device"):
        ch.open_channel(fd=f.fileno())
    f.close()
    with pytest.raises(ch.ChannelError, match="not an open file descriptor"):
        ch.open_channel(fd=987)


async def test_channel_socket_path_listens_and_cleans_up(tmp_path):
    path = str(tmp_path / "agent-channel.sock")
    c = ch.open_channel(socket_path=path)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    transport = await c.connect()
    assert not os.path.exists(path)  # one connection: the path is gone once accepted
    transport.close()
    client.close()
    # a stale socket file is replaced; a live one is refused
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    c = ch.open_channel(socket_path=path)
    with pytest.raises(ch.ChannelError, match="already listening"):
        ch.open_channel(socket_path=path)
    c.close()
    assert not os.path.exists(path)


def test_parse_kernel_cmdline():
    opts = init.parse_cmdline("console=hvc0 quiet agent.log=debug agent.debug_console agent.cgroups=v2 "
                              "agent.log=warn panic=-1")
    assert opts == {"log": "warn", "debug_console": "", "cgroups": "v2"}


def test_mounted_targets_decodes_octal_escapes(tmp_path):
    mi = tmp_path / "mountinfo"
    mi.write_text("22 1 0:21 / /proc rw - proc proc rw\n"
                  "30 22 0:5 / /run/with\\040space rw - tmpfs tmpfs rw\n")
    assert init.mounted_targets(str(mi)) == {"/proc", "/run/with space"}


def test_enabled_controllers(tmp_path):
    pc = tmp_path / "cgroups"
    pc.write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
                  "cpuset\t3\t1\t1\ncpu\t1\t5\t1\nrdma\t0\t1\t0\nmemory\t4\t9\t1\n")
    assert init.enabled_controllers(str(pc)) == ["cpuset", "cpu", "memory"]


async def test_wait_host_connected_waits_for_the_hangup_to_clear():
    """A pty master stands in for a virtio port: POLLHUP while its other end is closed."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    os.close(slave)
    os.set_blocking(master, False)
    assert not ch.host_connected(master)
    waiting = asyncio.ensure_future(ch.wait_host_connected(master, recheck=0.05))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    other = os.open(name, os.O_RDWR | os.O_NOCTTY)  # "the proxy connects"
    await asyncio.wait_for(waiting, 5)
    assert ch.host_connected(master)
    os.close(other)
    os.close(master)


async def test_wait_host_connected_returns_at_once_when_connected():
    a, b = socket.socketpair()
    await asyncio.wait_for(ch.wait_host_connected(a.fileno()), 1)
    a.close()
    b.close()
