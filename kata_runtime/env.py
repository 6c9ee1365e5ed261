"""``kata-runtime env``: the effective configuration and the versions of every component.

Shaped like Kata 1.x's ``kata-runtime kata-env`` ([Meta], [Runtime], [Hypervisor],
[Proxy], [Shim], [Agent], [Host]), plus [Config.*]: every key of the effective
configuration.toml (defaults filled in). Printed as TOML, or JSON with ``--json``.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

from kata_runtime import __version__

#: Version of this output's format (Kata's [Meta] Version).
FORMAT_VERSION = "1.0.25"
OCI_VERSION = "1.0.2"


def _first_line(argv: list[str]) -> str:
    """First line of ``argv``'s output (``--version`` of a component), or why there is none."""
    try:
        out = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({getattr(e, 'strerror', None) or e})"
    text = (out.stdout or out.stderr).decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else f"unknown (exit status {out.returncode})"


def _hypervisor(config) -> dict:
    kind = config.hypervisor
    settings = config.hypervisor_section
    if kind == "process":
        python = settings["path"] or sys.executable
        return {"Type": "process", "Path": python, "Version": _first_line([python, "--version"]),
                "Isolation": "none: kata-agent runs on the host kernel (tests and development only)"}
    from kata_runtime.hypervisor.qemu import sandbox_firmware

    path = settings.get("path", "")
    return {"Type": kind, "Path": path, "Version": _first_line([path, "--version"]),
            "Firmware": sandbox_firmware(settings) or "QEMU's default (SeaBIOS)"}


def _component(kind: str, settings: dict, argv_prefix: list[str]) -> dict:
    return {"Type": kind, "Version": _first_line([*argv_prefix, "--version"]), "Path": " ".join(argv_prefix),
            "Debug": bool(settings.get("debug"))}


def _distro() -> dict:
    try:
        info = platform.freedesktop_os_release()
    except OSError:
        return {"Name": "unknown", "Version": ""}
    return {"Name": info.get("NAME", ""), "Version": info.get("VERSION_ID", "")}


def environment(config) -> dict:
    """The whole report as nested dicts (tables)."""
    from kata_runtime import proxy, shim

    uname = os.uname()
    return {
        "Meta": {"Version": FORMAT_VERSION},
        "Runtime": {
            "Debug": config.debug,
            "Path": os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "",
            "Hypervisor": config.hypervisor,
            "Version": {"Semver": __version__, "OCI": OCI_VERSION},
            "Config": {"Path": config.path},
        },
        "Hypervisor": _hypervisor(config),
        "Proxy": _component("kataProxy", config.section("proxy.kata"), proxy.command(config.section("proxy.kata"))),
        "Shim": _component("kataShim", config.section("shim.kata"), shim.command(config.section("shim.kata"))),
        "Agent": {"Type": "kata", "Debug": config.section("agent.kata")["enable_debug"]},
        "Host": {"Kernel": uname.release, "Architecture": uname.machine, "Distro": _distro(),
                 "Runc": _first_line(["runc", "--version"])},
        "Config": _nest(config.values),
    }


def _nest(values: dict[str, dict]) -> dict:
    """{"hypervisor.qemu": {...}} -> {"hypervisor": {"qemu": {...}}}."""
    out: dict = {}
    for name, table in values.items():
        node = out
        for part in name.split("."):
            node = node.setdefault(part, {})
        node.update(table)
    return out


def to_toml(report: dict, prefix: str = "") -> str:
    """Nested dicts as TOML tables (``[Runtime]``, ``[Runtime.Version]``...)."""
    from kata_runtime.config import toml_value

    scalars = {k: v for k, v in report.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in report.items() if isinstance(v, dict)}
    out = []
    if prefix and scalars:
        out.append(f"[{prefix}]")
        out += [f"  {k} = {toml_value(v)}" for k, v in scalars.items()]
    elif prefix:
        out.append(f"[{prefix}]")
    for name, table in tables.items():
        out.append(to_toml(table, f"{prefix}.{name}" if prefix else name))
    return "\n".join(line for line in out if line)
