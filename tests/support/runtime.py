"""kata-runtime (and runc) as a caller runs them, and the check that a container left nothing.

    bundle = make_bundle(tmp / "b", ["sh", "-c", "echo hi"])      # tests.support.oci
    kata = Kata(root, write_config(tmp / "configuration.toml"), tmp / "kata.log")
    kata.create(cid, bundle, out=path)        # stdio to a file: the shim keeps it open
    kata.ok("start", cid); kata.state(cid)["status"]
    assert_clean(kata, cid)                   # no state, process, mount, socket, cgroup

Only processes started here are ever signalled (by pid).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from kata_runtime.sandbox import VM_ROOT
from tests.support.processes import command, processes_mentioning


def write_config(path: Path, **sections) -> Path:
    """A configuration.toml for the tests: the process sandbox, debug logs; ``sections``
    {"hypervisor.process": {"path": "/x"}} override keys."""
    values = {"runtime": {"hypervisor": "process", "enable_debug": True}, "proxy.kata": {"debug": True},
              "shim.kata": {"debug": True}, "agent.kata": {"enable_debug": True}}
    for name, table in sections.items():
        values.setdefault(name, {}).update(table)
    lines = []
    for name, table in values.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class CLI:
    """A runc-compatible command line run as a caller runs it (subprocesses)."""

    name = "cli"

    def __init__(self, prefix: list[str], log: Path):
        self.prefix = prefix
        self.log = log
        self.ids: list[str] = []

    def argv(self, *args) -> list[str]:
        return [*self.prefix, *args]

    def run(self, *args, input: bytes | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        """Run one command; stdout/stderr captured (do not use for create/run -d: see create)."""
        if input is None:
            kw.setdefault("stdin", subprocess.DEVNULL)
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.run(self.argv(*args), input=input, timeout=timeout, **kw)

    def ok(self, *args, **kw) -> str:
        """Run a command that must succeed; returns its stdout as text."""
        p = self.run(*args, **kw)
        assert p.returncode == 0, self.explain(p, args)
        return p.stdout.decode()

    def explain(self, p, args) -> str:
        return (f"{self.name} {' '.join(map(str, args))} -> {p.returncode}\nstdout: {p.stdout[-2000:]!r}\n"
                f"stderr: {p.stderr[-2000:]!r}\nlog tail: {self.log_tail()}")

    def log_tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def create(self, cid: str, bundle, *extra, out: Path | None = None, stdin=subprocess.DEVNULL,
               timeout: float = 120) -> subprocess.CompletedProcess:
        """``create``: the container's stdout goes to ``out`` and stderr to ``out``.err (files:
        the shim keeps the create call's stdio, so a pipe would not see EOF until the
        container ends). The result's stdout/stderr are those files' contents so far."""
        self.ids.append(cid)
        out = Path(out) if out else self.log.parent / f"create-{len(self.ids)}.out"
        err = out.with_name(out.name + ".err")
        with open(out, "ab") as fo, open(err, "ab") as fe:
            p = subprocess.run(self.argv("create", "--bundle", str(bundle), *extra, cid), stdin=stdin,
                               stdout=fo, stderr=fe, timeout=timeout)
        p.stdout, p.stderr = out.read_bytes(), err.read_bytes()
        return p

    def state(self, cid: str) -> dict:
        return json.loads(self.ok("state", cid))

    def wait_status(self, cid: str, status: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            st = self.state(cid)
            if st["status"] == status or time.monotonic() > deadline:
                assert st["status"] == status, f"{cid}: still {st['status']} after {timeout}s"
                return st
            time.sleep(0.05)

    def cleanup(self) -> None:
        for cid in self.ids:
            self.run("delete", "--force", cid)


class Kata(CLI):
    """kata-runtime with its own --root, configuration and JSON --log."""

    name = "kata-runtime"

    def __init__(self, root: Path, config: Path, log: Path):
        super().__init__([*command("kata-runtime"), "--root", str(root), "--kata-config", str(config), "--log", str(log),
                          "--log-format", "json"], log)
        self.root = root
        self.config = config

    def last_error(self) -> dict:
        """The last JSON record of the --log file."""
        lines = [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]
        return [r for r in lines if r["level"] == "error"][-1]


class Runc(CLI):
    """The host's runc with its own --root."""

    name = "runc"

    def __init__(self, root: Path, log: Path):
        super().__init__(["runc", "--root", str(root), "--log", str(log), "--log-format", "json"], log)


# ----------------------------------------------------------------- leftovers


def vm_dir(cid: str) -> str:
    return os.path.join(VM_ROOT, cid)


def mounts_mentioning(text: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.strip() for line in f if text in line]


def sandbox_cgroups(cid: str) -> list[str]:
    """Cgroup directories of the sandbox that still exist (its parent is below our cgroup)."""
    left = []
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.strip().split(":", 2)
            for controller in controllers.split(","):
                name = controller.replace("name=", "")
                base = f"/sys/fs/cgroup/{name}" if name else "/sys/fs/cgroup"
                candidate = os.path.join(base + path, f"kata-sandbox-{cid}")
                if os.path.exists(candidate):
                    left.append(candidate)
    return left


def leftovers(cli: CLI, cid: str) -> list[str]:
    """Everything a container left behind (empty when it is clean)."""
    out = []
    if isinstance(cli, Kata):
        for sub in ("containers", "sandboxes"):
            if (cli.root / sub / cid).exists():
                out.append(f"state {cli.root / sub / cid}")
        if os.path.lexists(vm_dir(cid)):
            out.append(f"runtime dir {vm_dir(cid)}: {sorted(os.listdir(vm_dir(cid)))}")
        out += [f"mount {m}" for m in mounts_mentioning(vm_dir(cid) + "/")]
        out += [f"process {pid}: {cmd}" for pid, cmd in processes_mentioning(vm_dir(cid) + "/")]
        out += [f"cgroup {c}" for c in sandbox_cgroups(cid)]
    return out


def assert_clean(cli: CLI, cid: str, timeout: float = 10) -> None:
    """Nothing of ``cid`` left (processes get ``timeout`` seconds to be gone)."""
    deadline = time.monotonic() + timeout
    while leftovers(cli, cid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = leftovers(cli, cid)
    assert not left, f"{cid} left behind:\n" + "\n".join(left)
