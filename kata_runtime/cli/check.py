"""`kata-runtime check [--verbose] [--json] [--refresh]`: can this host run kata-py? (Kata's kata-check)

Lists what the configured hypervisor needs and whether it is there, one line
each, and always says whether KVM is usable here and exactly why (the verdict
of kata_runtime.kvm: cheap /dev/kvm checks, then a short boot probe whose
result is cached under --root; `--refresh` probes again). Exit status 0 when
the configured hypervisor can run, 1 when something it needs is missing.

What is needed (`required`) depends on [runtime] hypervisor:

* both: root; kata-proxy and kata-shim entry points ([proxy.kata] / [shim.kata] path,
  else the scripts beside this Python, else `python -m`);
* process: kata-agent as the driver runs it (importable by [hypervisor.process] path, the
  Python that runs it; else the kata-agent script beside this Python, else `python -m`),
  util-linux unshare, runc (it runs the containers), the cgroup controllers runc uses;
* qemu: the QEMU binary, the guest kernel, initrd and image (the configured ones, else the
  build of `kata-runtime image build` for this kata-py in image_cache_dir: the same lookup
  as `create`), and KVM only when accel = "kvm" ("auto" falls back to TCG with a warning).
  The KVM probe boots the kernel the guests boot (the build's; the host's when there is none).

The report also says which hypervisor the packaged configuration.toml selects, and why
(`DEFAULT_WHY`), so that nobody mistakes the process sandbox for a VM.

Text output: `<status> <name> <detail>` per item (status ok | FAIL: needed and
missing | warn: missing, not needed | -: not configured), the default line, then
Kata's closing line "System is (not) capable of running kata-py ...". `--json`: one
object {"config", "hypervisor", "default_hypervisor", "accel", "capable", "items": [...],
"kvm": verdict}.
"""

from __future__ import annotations

import os

import click

#: cgroup v1 controllers runc needs for the process sandbox's containers (pause needs freezer).
CGROUP_V1_CONTROLLERS = ("cpu", "cpuacct", "memory", "pids", "devices", "freezer")

#: Why the packaged configuration.toml selects its [runtime] hypervisor (kata_runtime.config.SCHEMA).
DEFAULT_WHY = {
    "process": ("NO VM isolation (tests and development); set [runtime] hypervisor = \"qemu\" in a "
                "configuration.toml (--kata-config, /etc/kata-containers/) for a VM per sandbox"),
    "qemu": "every sandbox gets its own guest kernel (KVM where a guest boots, else TCG)",
}


class Item:
    """One line of the report: `name`, `ok`, one-line `detail`, `required` by the
    configured hypervisor; `applicable` False for a setting that is not configured."""

    def __init__(self, name: str, ok: bool, detail: str, required: bool = True, applicable: bool = True):
        self.name, self.ok, self.detail = name, ok, detail
        self.required, self.applicable = required, applicable

    @property
    def status(self) -> str:
        if not self.applicable:
            return "-"
        if self.ok:
            return "ok"
        return "FAIL" if self.required else "warn"

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status, "ok": self.ok, "required": self.required,
                "detail": self.detail}


# ----------------------------------------------------------------- the checks
def check_root() -> Item:
    """Root is needed for mounts, namespaces and cgroups (as runc without --rootless)."""
    import os
    uid = os.geteuid()
    return Item("root", uid == 0, "running as root" if uid == 0
                else f"running as uid {uid}: kata-runtime needs root")


def check_executable(name: str, program: str, required: bool = True) -> Item:
    """`program` (a name looked up in PATH, or a path) is an executable file."""
    import shutil
    found = shutil.which(program)
    if found:
        return Item(name, True, found, required)
    return Item(name, False, f"{program} not found" + ("" if "/" in program else " in PATH"), required)


def check_component(name: str, configured_path: str, script: str, module: str) -> Item:
    """A kata-py component (kata-proxy, kata-shim) can be started the way the runtime starts it.

    The runtime runs the configured path, else `script` beside this Python,
    else `python -m module` (kata_runtime.procs.component_command).
    """
    from kata_runtime.procs import component_command
    item = _argv_item(name, component_command(configured_path, script, module), module)
    if item.ok and configured_path:
        item.detail += " (configured)"
    return item


def _argv_item(name: str, argv: list[str], module: str) -> Item:
    """The component's argv prefix can run: ``python -m module`` importable, or the program found."""
    if argv[1:2] == ["-m"]:
        return _module_item(name, argv[0], module)
    return check_executable(name, argv[0])


def _module_item(name: str, python: str, module: str) -> Item:
    """`python -m module` works: `module` is importable by `python` (asked in a child
    process when it is another interpreter than this one)."""
    import os
    import sys
    if os.path.realpath(python) == os.path.realpath(sys.executable):
        import importlib.util
        ok = importlib.util.find_spec(module) is not None
    else:
        import subprocess
        probe = f"import importlib.util, sys; sys.exit(importlib.util.find_spec({module!r}) is None)"
        try:
            ok = subprocess.run([python, "-c", probe], capture_output=True, timeout=30, cwd="/").returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
    detail = f"{python} -m {module}" if ok else f"{python} cannot import {module}"
    return Item(name, ok, detail)


def check_agent(hypervisor: str, process_settings: dict, qemu_settings: dict) -> Item:
    """kata-agent: on the host for the process sandbox (what the driver runs:
    hypervisor.process.agent_command), in the guest image for QEMU."""
    if hypervisor == "process":
        from kata_runtime.hypervisor.process import agent_command

        return _argv_item("kata-agent", agent_command(process_settings.get("path") or None), "kata_agent")
    image = qemu_settings.get("image")
    return Item("kata-agent", True, f"runs in the guest image {image}" if image
                else "runs in the guest image", required=False)


def check_cgroups(root: str = "/sys/fs/cgroup", required: bool = True) -> Item:
    """The cgroup hierarchy runc uses: cgroup v2 (cgroup.controllers), else the v1 controllers
    in CGROUP_V1_CONTROLLERS mounted under `root`."""
    import os
    controllers = os.path.join(root, "cgroup.controllers")
    if os.path.isfile(controllers):
        with open(controllers) as f:
            return Item("cgroups", True, f"cgroup v2 ({f.read().strip() or 'no controllers enabled'})", required)
    missing = [c for c in CGROUP_V1_CONTROLLERS if not os.path.isdir(os.path.join(root, c))]
    if missing:
        return Item("cgroups", False, f"cgroup v1 controllers not mounted under {root}: {', '.join(missing)}",
                    required)
    return Item("cgroups", True, f"cgroup v1 ({', '.join(CGROUP_V1_CONTROLLERS)})", required)


def check_qemu(path: str, required: bool) -> Item:
    """The configured QEMU binary exists and prints its version."""
    item = check_executable("qemu", path, required)
    if item.ok:
        from kata_runtime.kvm import qemu_version
        version = qemu_version(item.detail)
        item.detail += f": {version}" if version else ": does not print a version"
        item.ok = version is not None
    return item


def check_guest_file(name: str, path: str, required: bool) -> Item:
    """A configured guest file (initrd, image); not applicable when not configured."""
    import os
    if not path:
        return Item(name, True, "not configured", required, applicable=False)
    if os.path.isfile(path) and os.access(path, os.R_OK):
        return Item(name, True, path, required)
    return Item(name, False, f"{path} missing" if not os.path.exists(path) else f"{path} not readable", required)


def check_guest_files(settings: dict, required: bool) -> tuple[list[Item], str | None]:
    """Items kernel, initrd and image, and the kernel the KVM probe should boot (None: the host's).

    Configured paths are checked as files. With none configured, the build that `create` would
    use (kata_runtime.hypervisor.qemu.guest_files): found, or an image FAIL saying to run
    `kata-runtime image build`."""
    names = ("kernel", "initrd", "image")
    if any(settings.get(n) for n in names):
        return [check_guest_file(n, settings.get(n, ""), required) for n in names], settings.get("kernel") or None
    from kata_runtime.hypervisor import HypervisorError
    from kata_runtime.hypervisor.qemu import guest_files
    try:
        built = guest_files(settings)
    except HypervisorError as err:
        return [Item("kernel", False, "the image build's: none", required),
                Item("initrd", False, "the image build's: none", required),
                Item("image", False, str(err), required)], None
    return [Item(n, True, f"{built[n]} (kata-runtime image build)", required) for n in names], built["kernel"]


def check_kvm(verdict, hypervisor: str, accel: str) -> Item:
    """KVM's verdict as an item: required only for hypervisor qemu with accel = "kvm"."""
    required = hypervisor == "qemu" and accel == "kvm"
    if verdict.usable:
        return Item("kvm", True, f"usable: {verdict.reason}", required)
    fallback = "; accel auto uses TCG" if hypervisor == "qemu" and accel == "auto" else ""
    return Item("kvm", False, f"not usable: {verdict.reason}{fallback}", required)


def collect(hypervisor: str, sections: dict, cache_dir: str | None, refresh: bool = False):
    """Run every check for `hypervisor` ("process" or "qemu") with the configuration's
    `sections` ({"hypervisor.qemu": {...}, "hypervisor.process": {...}, "proxy.kata": {...},
    "shim.kata": {...}}). Returns (items, KVM verdict). The KVM verdict is cached in
    `cache_dir` (None: never cached)."""
    from kata_runtime import kvm
    qemu, process = sections.get("hypervisor.qemu", {}), sections.get("hypervisor.process", {})
    on_qemu, on_process = hypervisor == "qemu", hypervisor == "process"
    items = [
        check_root(),
        check_component("kata-proxy", sections.get("proxy.kata", {}).get("path", ""), "kata-proxy", "kata_proxy"),
        check_component("kata-shim", sections.get("shim.kata", {}).get("path", ""), "kata-shim", "kata_shim"),
        check_agent(hypervisor, process, qemu),
        check_executable("unshare", process.get("unshare") or "unshare", required=on_process),
        check_executable("runc", "runc", required=on_process),
        check_cgroups(required=on_process),
        check_qemu(qemu.get("path") or kvm.DEFAULT_QEMU, required=on_qemu),
    ]
    guest_items, kernel = check_guest_files(qemu, required=on_qemu)
    items += guest_items
    verdict = kvm.probe_cached(cache_dir, refresh=refresh, qemu=qemu.get("path") or None, kernel=kernel)
    items.append(check_kvm(verdict, hypervisor, qemu.get("accel", "auto")))
    return items, verdict


# ------------------------------------------------------------------- output
def summary(items, hypervisor: str, accel: str, verdict) -> tuple[bool, str]:
    """(capable, Kata's closing line) for the report."""
    failed = [i.name for i in items if i.status == "FAIL"]
    if failed:
        return False, (f'System is not capable of running kata-py with hypervisor "{hypervisor}": '
                       f"missing or broken: {', '.join(failed)}")
    how = ""
    if hypervisor == "qemu":
        chosen = verdict.accel if accel == "auto" else accel
        how = f" (accel {chosen}" + ("" if verdict.usable or chosen == "kvm" else ": KVM is not usable") + ")"
    elif hypervisor == "process":
        how = " (process sandbox: no VM isolation, for tests and development)"
    return True, f'System is capable of running kata-py with hypervisor "{hypervisor}"{how}'


def default_line(config_path: str) -> str | None:
    """Which hypervisor the packaged configuration.toml selects, and why (`DEFAULT_WHY`), when
    that file is the one in use (``config_path``); None when a configuration of the user's is."""
    from kata_runtime.config import PACKAGED, SCHEMA
    if os.path.abspath(config_path) != PACKAGED:
        return None
    default = SCHEMA["runtime"]["hypervisor"][0]
    return f'default: the packaged configuration.toml selects hypervisor "{default}": {DEFAULT_WHY[default]}'


def render_text(items, verdict, closing: str, header: str, verbose: bool, config_path: str) -> str:
    """The text report: header, one line per item, KVM details when verbose, the packaged
    default when it is in use, closing line."""
    lines = [header]
    width = max(len(i.name) for i in items)
    for item in items:
        lines.append(f"{item.status:<5} {item.name:<{width}}  {item.detail}")
    if verbose:
        lines += ["", "KVM probe:"] + [f"  {line}" for line in kvm_details(verdict)]
    default = default_line(config_path)
    lines += ([default] if default else []) + [closing]
    return "\n".join(lines) + "\n"


def kvm_details(verdict) -> list[str]:
    """--verbose lines about the KVM verdict: each cheap check, host facts, each boot, the cache."""
    from kata_runtime.kvm import describe_facts
    lines = [f"{'ok' if c.ok else 'FAIL':<5} {c.name}: {c.detail}" for c in verdict.checks]
    lines += [f"fact  {line}" for line in describe_facts(verdict.facts)]
    for boot in (verdict.kvm_boot, verdict.tcg_boot):
        if boot is not None:
            lines.append(f"boot  accel={boot.accel}: {boot.reason}")
            lines += [f"        console: {line}" for line in boot.console_tail]
            lines += [f"        stderr:  {line}" for line in boot.stderr_tail]
    if verdict.qemu:
        lines.append(f"with  {verdict.qemu} ({verdict.qemu_version or 'version unknown'}), kernel {verdict.kernel}")
    import time
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(verdict.probed_at))
    lines.append(f"{'cached' if verdict.cached else 'probed'}: at {when}, took {verdict.seconds:.1f} s")
    return lines


@click.command("check", short_help="tests if system can run kata-py",
               help="Check whether this host can run kata-py containers with the configured hypervisor, "
                    "and say exactly why KVM is or is not usable here. Exits 1 when something the "
                    "configured hypervisor needs is missing.")
@click.option("--verbose", "-v", is_flag=True, help="display the details of every check, the KVM probe's included")
@click.option("--json", "as_json", is_flag=True, help="print the report as one JSON object")
@click.option("--refresh", is_flag=True, help="probe KVM again instead of using the cached verdict")
@click.pass_context
def command(ctx: click.Context, verbose: bool, as_json: bool, refresh: bool) -> None:
    from kata_runtime import kvm
    from kata_runtime.config import SCHEMA, load

    config = ctx.obj.config() if ctx.obj is not None else load(None)
    cache_dir = ctx.obj.root if ctx.obj is not None else kvm.DEFAULT_CACHE_DIR
    accel = config.section("hypervisor.qemu")["accel"]
    items, verdict = collect(config.hypervisor, {name: config.section(name) for name in SCHEMA},
                             cache_dir, refresh)
    capable, closing = summary(items, config.hypervisor, accel, verdict)
    if as_json:
        import json
        click.echo(json.dumps({"config": config.path, "hypervisor": config.hypervisor,
                               "default_hypervisor": SCHEMA["runtime"]["hypervisor"][0], "accel": accel,
                               "capable": capable, "items": [i.to_dict() for i in items],
                               "kvm": verdict.to_dict()}, indent=1))
    else:
        header = f'kata-runtime check: {config.path}: hypervisor "{config.hypervisor}", accel {accel}'
        click.echo(render_text(items, verdict, closing, header, verbose, config.path), nl=False)
    ctx.exit(0 if capable else 1)
