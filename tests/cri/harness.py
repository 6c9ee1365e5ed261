"""containerd with its CRI plugin, as a Kubernetes node runs it, inside a network namespace of the
test's own: built on the reaper tier's harness (tests/support/containerd.py), nothing mocked.

    cd = CriContainerd.start({"runc": None, "kata": {"runtime": {"hypervisor": "process"}}})
    cd.cri                       # a CriClient (tests/cri/client.py) on its socket
    cd.pod_config("web")         # a PodSandboxConfig: logs, cgroups under our temp dir / parent
    cd.host_netns                # the namespace containerd (and so CNI's bridge) lives in
    cd.wait_clean([pod_id, cid]) # {} once the pod left no process, mount, netns, lease, cgroup...
    cd.stop()                    # everything removed, by pid and by path

What it sets up, all under one short temp dir ``/tmp/kcXXXXXXXX`` (socket paths are limited):

* ``host.netns``: a network namespace (``unshare --net=FILE``) that containerd runs in
  (``nsenter --net``), so the CNI bridge plugin's bridge and the pods' veth peers live there, never
  in the machine's own namespace. The test reaches pods from it (:meth:`in_host_netns`).
* ``net.d/10-kata-py.conflist``: CNI ``bridge`` (isGateway, no masquerade) + ``host-local`` IPAM on
  :data:`SUBNET`, leases in ``cni-ipam/``; plugin binaries from Debian's containernetworking-plugins.
* ``config.toml``: the CRI plugin on, ``sandbox_image`` = our locally built pause image, pod
  network namespaces under the CRI state dir (``netns_mounts_under_state_dir``), the pause
  container's oom_score_adj of -998 clamped to ours (``restrict_oom_score_adj``: lowering it needs
  CAP_SYS_RESOURCE, which a CI container may lack), and one runtime
  handler per entry of ``handlers``: ``io.containerd.runc.v2`` with ``options.Root`` under the temp
  dir and, for kata-runtime, ``options.BinaryName`` = a wrapper script ``kata-<handler>.sh`` that
  runs the venv's kata-runtime with ``--kata-config kata-<handler>.toml`` (each handler has its own
  configuration: process sandbox, QEMU...).
* the busybox and pause images imported into the ``k8s.io`` namespace (the CRI plugin's).

Outside the temp dir (each found and removed by name): libcni's result cache
``/var/lib/cni/results/<network>-<id>-eth0`` (containerd 1.6 has no setting for it; the network
name carries a random suffix), the pods' cgroups under ``/sys/fs/cgroup/<controller>/<parent>``
(``parent`` has a random suffix), kata-runtime's ``/run/vc/vm/<id>`` and the shim sockets, as in
the reaper harness.

Errors: :class:`tests.support.containerd.ContainerdError` when the daemon or its CRI plugin does not
come up within the timeout (with the log's tail); every wait is bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.cri.client import CriClient, load_api
from tests.cri.images import BUSYBOX_IMAGE, PAUSE_IMAGE, build_busybox_image_tar, build_pause_image_tar
from tests.support.containerd import (
    CONTAINERD, DISABLED_PLUGINS, KATA_RUNTIME, SHIM_SOCKET_DIR, Containerd, ContainerdError, kill_pids, wait_gone)
from tests.support.requirements import missing

K8S_NAMESPACE = "k8s.io"  # the containerd namespace of the CRI plugin (fixed by it)
CRI_PLUGIN = "io.containerd.grpc.v1.cri"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")  # Debian's containernetworking-plugins, upstream's
CNI_PLUGINS = ("bridge", "host-local", "loopback")
CNI_CACHE = Path("/var/lib/cni")  # libcni's default cache dir (results/<network>-<id>-<ifname>)
SUBNET = "10.213.64.0/24"
GATEWAY = "10.213.64.1"  # the bridge's address (host-local gives the subnet's first address to it)
CGROUP_ROOT = Path("/sys/fs/cgroup")
TOOLS = ("containerd", "ctr", "containerd-shim-runc-v2", "runc", "unshare", "nsenter", "ip")


def find_cni_bin_dir() -> str | None:
    """The first of :data:`CNI_BIN_DIRS` holding every plugin of :data:`CNI_PLUGINS`, or None."""
    for d in CNI_BIN_DIRS:
        if all(os.access(os.path.join(d, p), os.X_OK) for p in CNI_PLUGINS):
            return d
    return None


def missing_requirements() -> str | None:
    """Why the CRI tier cannot run here (one line), or None."""
    reason = missing(root="the CRI tier needs root (containerd, network namespaces, mounts, cgroups)", tools=TOOLS,
                     tool_hint="apt-get install containerd runc util-linux iproute2")
    if reason:
        return reason
    if find_cni_bin_dir() is None:
        return (f"CNI plugins {', '.join(CNI_PLUGINS)} not found in {' or '.join(CNI_BIN_DIRS)} "
                "(apt-get install containernetworking-plugins)")
    return None


# ---------------------------------------------------------------- configuration files

def cni_conflist(network: str, bridge: str, data_dir: Path) -> str:
    """The CNI network config list (JSON text): a ``bridge`` named ``bridge`` that is the pods'
    gateway (no NAT: nothing leaves our namespace), ``host-local`` leases of :data:`SUBNET` kept
    in ``data_dir``, a default route via the bridge. No portmap; the pods' ``lo`` is the CRI
    plugin's own business (it runs the ``loopback`` plugin itself)."""
    return json.dumps({
        "cniVersion": "1.0.0", "name": network,
        "plugins": [{
            "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                     "routes": [{"dst": "0.0.0.0/0"}], "dataDir": str(data_dir)},
        }],
    }, indent=1)


def kata_wrapper(path: Path, kata_config: Path) -> Path:
    """An executable script at ``path`` that runs the venv's kata-runtime with ``--kata-config``
    before the shim's runc-style arguments (containerd's BinaryName takes no arguments)."""
    path.write_text(f'#!/bin/sh\nexec "{KATA_RUNTIME}" --kata-config "{kata_config}" "$@"\n')
    path.chmod(0o755)
    return path


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def kata_config_toml(sections: dict[str, dict]) -> str:
    """A kata-runtime configuration.toml (text) of ``sections`` {"runtime": {"hypervisor":
    "process"}, "hypervisor.qemu": {...}}: strings, numbers and booleans as JSON writes them."""
    lines = []
    for name, table in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def handler_toml(name: str, binary: str | None, root: Path) -> str:
    """One ``[...containerd.runtimes.<name>]`` table: runc.v2, its ``--root``, its binary."""
    table = f'plugins."{CRI_PLUGIN}".containerd.runtimes.{name}'
    lines = [f"[{table}]", '  runtime_type = "io.containerd.runc.v2"', f"[{table}.options]",
             f"  Root = {_toml_str(str(root))}"]
    if binary:
        lines.append(f"  BinaryName = {_toml_str(binary)}")
    return "\n".join(lines) + "\n"


def cri_config_toml(base: Path, cni_bin_dir: str, handlers: dict[str, str | None]) -> str:
    """containerd's config (version 2): root, state and sockets under ``base``; the CRI plugin on
    (see the module docstring); ``handlers`` {name: BinaryName or None for runc}; default ``runc``
    if present."""
    disabled = ", ".join(_toml_str(p) for p in DISABLED_PLUGINS if p != CRI_PLUGIN)
    cri = f'plugins."{CRI_PLUGIN}"'
    head = (f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\ndisabled_plugins = [{disabled}]\n\n'
            f'[grpc]\n  address = "{base}/c.sock"\n[ttrpc]\n  address = "{base}/c.sock.ttrpc"\n'
            '[debug]\n  level = "info"\n[metrics]\n  address = ""\n\n'
            f'[{cri}]\n  sandbox_image = "{PAUSE_IMAGE}"\n  netns_mounts_under_state_dir = true\n'
            '  stream_server_address = "127.0.0.1"\n  stream_server_port = "0"\n  disable_apparmor = true\n'
            '  restrict_oom_score_adj = true\n'
            f'[{cri}.cni]\n  bin_dir = "{cni_bin_dir}"\n  conf_dir = "{base}/net.d"\n  max_conf_num = 1\n'
            f'[{cri}.containerd]\n  snapshotter = "overlayfs"\n'
            f'  default_runtime_name = "{"runc" if "runc" in handlers else next(iter(handlers))}"\n')
    return head + "".join(handler_toml(n, b, base / "rt" / n) for n, b in handlers.items())


# ---------------------------------------------------------------- the daemon

@dataclass
class CriContainerd(Containerd):
    """A :class:`Containerd` whose CRI plugin is on, running in its own network namespace."""

    handlers: dict[str, str | None] = field(default_factory=dict)  # name -> BinaryName (None: runc)
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    cri: CriClient | None = None
    _cni_cache_existed: bool = True

    # -- names and paths
    @property
    def network(self) -> str:
        return f"kata-py-{self.tag}"  # the CNI network name (libcni's cache files start with it)

    @property
    def bridge(self) -> str:
        return f"kcri{self.tag}"

    @property
    def host_netns(self) -> str:
        return str(self.base / "host.netns")

    @property
    def cgroup_parent(self) -> str:
        return f"/kata-py-cri-{self.tag}"

    @property
    def netns_dir(self) -> Path:
        """Where the CRI plugin mounts the pods' network namespaces (netns_mounts_under_state_dir)."""
        return self.base / "state" / CRI_PLUGIN / "netns"

    @property
    def ipam_dir(self) -> Path:
        return self.base / "cni-ipam"

    @property
    def runtime_root(self) -> str:
        """The runtimes' ``--root`` dirs live below this (one per handler)."""
        return str(self.base / "rt")

    # -- life cycle
    @classmethod
    def start(cls, handlers: dict[str, dict | None], *, timeout: float = 60.0) -> "CriContainerd":
        """A new temp dir, host namespace, CNI config, images and a containerd whose CRI plugin
        answers. ``handlers``: {name: None for the host's runc, or the sections of a kata-runtime
        configuration.toml (see :func:`kata_config_toml`) for the venv's kata-runtime}.
        ContainerdError (with the log's tail) if it does not come up within ``timeout`` s."""
        base = Path(tempfile.mkdtemp(prefix="kc", dir="/tmp"))
        cd = cls(base, K8S_NAMESPACE)
        cd._created_run_dirs = [d for d in (SHIM_SOCKET_DIR, "/run/containerd") if not os.path.exists(d)]
        cd._cni_cache_existed = CNI_CACHE.exists()
        try:
            cd._prepare(handlers)
            cd.launch(timeout=timeout)
            cd._import_images(timeout)
        except BaseException:
            cd.stop()
            raise
        return cd

    def _prepare(self, handlers: dict[str, dict | None]) -> None:
        """Write the host namespace, CNI config, kata configs and wrappers, config.toml."""
        Path(self.host_netns).touch()
        subprocess.run(["unshare", f"--net={self.host_netns}", "true"], check=True, timeout=30)
        self.host("ip", "link", "set", "lo", "up")
        for d in ("net.d", "rt", "pods", "fifo"):
            (self.base / d).mkdir()
        (self.base / "net.d" / "10-kata-py.conflist").write_text(cni_conflist(self.network, self.bridge, self.ipam_dir))
        for name, sections in handlers.items():
            if sections is None:
                self.handlers[name] = None
                continue
            conf = self.base / f"kata-{name}.toml"
            conf.write_text(kata_config_toml(sections))
            self.handlers[name] = str(kata_wrapper(self.base / f"kata-{name}.sh", conf))
        (self.base / "config.toml").write_text(cri_config_toml(self.base, find_cni_bin_dir(), self.handlers))

    def launch(self, *, timeout: float = 60.0) -> None:
        """Start containerd in :attr:`host_netns` and wait until its CRI plugin reports
        RuntimeReady and NetworkReady (ContainerdError otherwise)."""
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                ["nsenter", f"--net={self.host_netns}", CONTAINERD, "--config", str(self.base / "config.toml")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.cri = CriClient(load_api(), self.address)
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise ContainerdError(f"containerd exited with {self.popen.returncode}:\n{self.log_tail()}")
            last = self._conditions()
            if last and all(last.values()):
                return
            time.sleep(0.2)
        raise ContainerdError(f"the CRI plugin is not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def _conditions(self) -> dict[str, bool] | None:
        import grpc

        try:
            return self.cri.conditions(timeout=5)
        except grpc.RpcError:
            return None

    def _import_images(self, timeout: float) -> None:
        """Build and import the busybox and pause images; wait until the CRI plugin lists both."""
        for build, name in ((build_busybox_image_tar, BUSYBOX_IMAGE), (build_pause_image_tar, PAUSE_IMAGE)):
            image = build(self.base / f"{name.rsplit('/', 1)[-1].replace(':', '-')}.tar", name=name)
            self.import_image(image.path, timeout=timeout)
        deadline = time.monotonic() + timeout
        while not all(self.cri.image_present(n, timeout=10) for n in (BUSYBOX_IMAGE, PAUSE_IMAGE)):
            if time.monotonic() > deadline:
                raise ContainerdError(f"the CRI plugin does not see the imported images after {timeout}s")
            time.sleep(0.1)

    # -- the host side
    def host(self, *argv: str, timeout: float = 30.0, check: bool = True) -> str:
        """Run ``argv`` in :attr:`host_netns` (``nsenter --net``); its stdout (text).
        CalledProcessError when it fails and ``check``."""
        res = subprocess.run(["nsenter", f"--net={self.host_netns}", *argv], capture_output=True, text=True,
                             timeout=timeout)
        if check and res.returncode != 0:
            raise subprocess.CalledProcessError(res.returncode, argv, res.stdout, res.stderr)
        return res.stdout

    def in_host_netns(self):
        """A context manager: this thread in :attr:`host_netns` (sockets made there stay there)."""
        from kata_runtime.network import in_netns

        return in_netns(self.host_netns)

    def host_links(self) -> list[str]:
        """Names of the links in the host namespace other than ``lo`` and our bridge (veth peers)."""
        links = json.loads(self.host("ip", "-j", "link", "show") or "[]")
        return [link["ifname"] for link in links if link["ifname"] not in ("lo", self.bridge)]

    # -- CRI helpers
    def pod_config(self, name: str, *, hostname: str | None = None):
        """A PodSandboxConfig: metadata (namespace ``default``, a fresh uid), ``hostname`` (default
        ``name``), logs under ``<temp>/pods/<uid>``, cgroups under :attr:`cgroup_parent`, DNS."""
        pb = self.cri.pb
        uid = uuid.uuid4().hex
        log_dir = self.base / "pods" / uid
        log_dir.mkdir(parents=True)
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace="default"),
            hostname=hostname or name, log_directory=str(log_dir),
            dns_config=pb.DNSConfig(servers=["10.213.64.53"], searches=["pod.example"], options=["ndots:5"]),
            linux=pb.LinuxPodSandboxConfig(cgroup_parent=self.cgroup_parent))

    def track(self, *ids: str) -> None:
        """Remember container/pod ids for :meth:`leftovers` and :meth:`stop` (kata dirs, sockets)."""
        self.started_cids.update(ids)

    # -- leftovers
    def cgroup_dirs(self) -> list[str]:
        """Cgroup directories under :attr:`cgroup_parent` in every controller, deepest first."""
        found = []
        for top in CGROUP_ROOT.glob(f"*/{self.cgroup_parent.lstrip('/')}"):
            found += [d for d, _, _ in os.walk(top)]
        return sorted(found, key=len, reverse=True)

    def cni_cache_files(self) -> list[str]:
        return [str(p) for p in (CNI_CACHE / "results").glob(f"{self.network}-*")]

    def ip_leases(self) -> list[str]:
        """host-local's lease files (one per address in use; its bookkeeping files excluded)."""
        net = self.ipam_dir / self.network
        skip = {"lock"}
        return [p.name for p in net.glob("*") if p.name not in skip and not p.name.startswith("last_reserved_ip")] \
            if net.is_dir() else []

    def leftovers(self, cids: list[str] | None = None) -> dict[str, list]:
        """The reaper harness's leftovers (processes, mounts, kata dirs, runtime state, shim
        sockets, cgroups) of ``cids`` plus: pod network namespaces, veths in the host namespace,
        host-local leases, libcni cache files, cgroups under our parent. {} means clean. The host
        namespace's own mount is not a leftover."""
        found = super().leftovers(cids)
        mounts = [m for m in found.pop("mounts", []) if m != self.host_netns]
        extra = {
            "mounts": mounts,
            "netns": [str(p) for p in self.netns_dir.glob("*")] if self.netns_dir.is_dir() else [],
            "host_links": self.host_links() if os.path.exists(self.host_netns) else [],
            "ip_leases": self.ip_leases(),
            "cni_cache": self.cni_cache_files(),
            "pod_cgroups": [d for d in self.cgroup_dirs() if os.path.basename(d) != self.cgroup_parent.lstrip("/")],
        }
        found.update({k: v for k, v in extra.items() if v})
        return found

    # -- clean-up
    def remove_pods(self, timeout: float = 60.0) -> None:
        """Stop and remove every pod through CRI (what the kubelet does), best effort."""
        import grpc

        if not self.cri or not self.popen or self.popen.poll() is not None:
            return
        try:
            pods = self.cri.list_pods(timeout=timeout)
        except grpc.RpcError:
            pods = []
        for pod_id in pods:
            for call in (self.cri.stop_pod, self.cri.remove_pod):
                try:
                    call(pod_id, timeout=timeout)
                except grpc.RpcError:
                    pass

    def stop(self) -> None:
        """Leave nothing behind: pods (via CRI), then the reaper harness's clean-up (containers,
        daemon, shims and descendants by pid, mounts under the temp dir including the namespaces,
        kata dirs, the temp dir), then our cgroups, libcni cache files and cache dir if we made it."""
        self.remove_pods()
        if self.cri:
            self.cri.close()
        super().stop()
        self._remove_outside_files()

    def _remove_outside_files(self) -> None:
        for d in self.cgroup_dirs():
            procs = _cgroup_procs(d)
            kill_pids(procs, signal.SIGKILL)
            wait_gone(procs, 10.0)
            try:
                os.rmdir(d)
            except OSError:
                pass
        for f in self.cni_cache_files():
            Path(f).unlink(missing_ok=True)
        if not self._cni_cache_existed:
            for d in (CNI_CACHE / "results", CNI_CACHE):
                try:
                    os.rmdir(d)
                except OSError:
                    pass


def _cgroup_procs(cgroup_dir: str) -> list[int]:
    """Pids in one cgroup directory (``cgroup.procs``); [] if it cannot be read."""
    try:
        return [int(p) for p in Path(cgroup_dir, "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


__all__ = ["CriContainerd", "GATEWAY", "SUBNET", "missing_requirements"]
