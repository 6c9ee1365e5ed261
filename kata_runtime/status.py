"""What `state` and `list` print: a container's status and runc's state object.

Cheap on purpose (containerd calls ``state`` often): state files and /proc reads only, no
gRPC, no subprocess, nothing heavier than the standard library's json/os/time.

The status shown is the recorded one (``creating``, ``created``, ``running``, ``paused``)
unless the container is gone: ``stopped`` as soon as its shim (which exits with the init
process) is dead, or its sandbox's guest or kata-proxy is. A recorded ``creating`` whose
creator process is dead is a crashed create: ``stopped`` (``delete --force`` removes it).
"""

import os
import time

from kata_runtime import procs
from kata_runtime.errors import KataError


def rfc3339_nano(ns: int) -> str:
    """Nanoseconds since the epoch as Go's time.RFC3339Nano in UTC (trailing zeros trimmed)."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    return text + "Z"


def sandbox_dead_part(sandbox: dict) -> str | None:
    """None while a started sandbox's guest and kata-proxy run, else which one is gone."""
    if sandbox.get("status") != "running":
        return None
    return processes_dead_part(sandbox)


def processes_dead_part(sandbox: dict) -> str | None:
    """None while the guest and kata-proxy recorded in ``sandbox`` run, else which one is gone
    (whatever its status: the VM cache's sandboxes have had no CreateSandbox yet)."""
    if not procs.alive(sandbox["hypervisor"]["process"]):
        return f"the sandbox's {sandbox['hypervisor']['kind']} hypervisor (agent) is gone"
    if not procs.alive(sandbox["proxy"]["process"]):
        return "the sandbox's kata-proxy is gone"
    return None


def current_status(data: dict, sandbox: dict | None) -> str:
    """The status to report: the recorded one, or ``stopped`` once the container is gone."""
    recorded = data.get("status", "creating")
    if recorded == "creating":
        return "creating" if procs.alive(data.get("creator")) else "stopped"
    if recorded == "stopped" or not procs.alive(data.get("shim")):
        return "stopped"
    if sandbox is None or sandbox_dead_part(sandbox) is not None:
        return "stopped"
    return recorded


def runc_state(data: dict, status: str, owner: str = "") -> dict:
    """runc's containerState JSON object, keys in runc's order (annotations only when set)."""
    shim = data.get("shim") or {}
    out = {
        "ociVersion": data.get("ociVersion", ""),
        "id": data["id"],
        "pid": int(shim.get("pid", 0)) if status not in ("stopped", "creating") else 0,
        "status": status,
        "bundle": data.get("bundle", ""),
        "rootfs": data.get("rootfs", ""),
        "created": data.get("created", ""),
    }
    if data.get("annotations"):
        out["annotations"] = data["annotations"]
    out["owner"] = owner
    return out


def state(store, container_id: str) -> dict:
    """``kata-runtime state ID``: runc's JSON object (as runc's, ``owner`` is empty)."""
    data = store.read_container(container_id)
    return runc_state(data, current_status(data, store.read_sandbox(data.get("sandbox_id", container_id))))


def list_states(store) -> list[dict]:
    """``kata-runtime list``: runc's state of every container, owner filled in (as runc's list)."""
    out = []
    for cid in store.container_ids():
        try:
            data = store.read_container(cid)
        except KataError:
            continue  # a create that has not written its state yet, or a delete in progress
        sandbox = store.read_sandbox(data.get("sandbox_id", cid))
        out.append(runc_state(data, current_status(data, sandbox), _owner(store.container_dir(cid))))
    return out


def _owner(path: str) -> str:
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return ""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
