"""The QEMU driver: its command line, settings resolution (guest files, accel), pid guard and
failure paths. QEMU is started here only briefly (a failed start, a stop, a refused second
start); the real boots of the built guest image run through the kata-runtime CLI in
test_vm_runtime.py (CI has 2 cores: boots are few).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from kata_runtime.hypervisor.base import HypervisorError
from kata_runtime.hypervisor.qemu import DEFAULT_PATH, KATA_AMD64_KERNEL_PARAMS, QemuHypervisor, default_firmware
from tests.support.processes import processes_mentioning

BOOT_TIMEOUT = 240.0  # TCG on a loaded 2-core CI machine


def make_qemu(vm_dir, guest, **kw) -> QemuHypervisor:
    """A TCG driver for the built guest image ``guest``; keywords override (kernel=, image=, ...)."""
    kw.setdefault("accel", "tcg")
    kw.setdefault("kernel", guest.kernel)
    kw.setdefault("initrd", guest.initrd)
    kw.setdefault("image", guest.image)
    return QemuHypervisor(vm_dir, f"vm-{uuid.uuid4().hex[:8]}", **kw)


def assert_nothing_left(q: QemuHypervisor) -> None:
    assert q.pid is None
    assert processes_mentioning(q.sandbox_dir) == []
    for path in (q.channel_socket_path, q.qmp_socket_path, q.pid_file):
        assert not os.path.exists(path), path


def arg_after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


# ------------------------------------------------------------ command line


def test_command_line_wires_channel_console_share_and_read_only_image(tmp_path):
    q = QemuHypervisor(tmp_path / "sb", "abc", kernel="/k/vmlinuz", initrd="/k/initrd.img", image="/k/rootfs.img",
                       accel="tcg", vcpus=2, memory_mib=1024, machine_type="q35", kernel_params="foo=1 bar")
    argv = q.command_line("/usr/bin/qemu-system-x86_64")
    sb = str(tmp_path / "sb")
    assert argv[0] == "/usr/bin/qemu-system-x86_64"
    assert arg_after(argv, "-machine") == ["q35,accel=tcg"]
    assert arg_after(argv, "-m") == ["1024M"] and arg_after(argv, "-smp") == ["2"]
    assert {"-nodefaults", "-no-user-config", "-no-reboot", "-daemonize"} <= set(argv)
    assert arg_after(argv, "-kernel") == ["/k/vmlinuz"] and arg_after(argv, "-initrd") == ["/k/initrd.img"]
    chardevs = arg_after(argv, "-chardev")
    assert f"socket,id=charch0,path={sb}/kata.sock,server=on,wait=off" in chardevs
    # the console: a socket for kata-proxy (-agent-logs-socket) that QEMU also logs to console.log
    assert (f"socket,id=charconsole0,path={sb}/console.sock,server=on,wait=off,logfile={sb}/console.log,"
            "logappend=on") in chardevs
    devices = arg_after(argv, "-device")
    assert "virtserialport,bus=serial0.0,chardev=charch0,name=agent.channel.0" in devices
    assert "virtconsole,bus=serial0.0,chardev=charconsole0" in devices
    assert "virtio-9p-pci,fsdev=extra-9p-kataShared,mount_tag=kataShared" in devices
    # the only host directory the guest sees is the sandbox's shared dir; the image is read-only
    assert arg_after(argv, "-fsdev") == [f"local,id=extra-9p-kataShared,path={sb}/shared,security_model=none,"
                                         "multidevs=remap"]
    assert arg_after(argv, "-drive") == ["id=image0,file=/k/rootfs.img,if=none,format=raw,readonly=on,aio=threads"]
    assert arg_after(argv, "-qmp") == [f"unix:{sb}/qmp.sock,server=on,wait=off"]
    assert arg_after(argv, "-pidfile") == [f"{sb}/qemu.pid"]
    assert arg_after(argv, "-name") == ["sandbox-abc"]
    params = arg_after(argv, "-append")[0].split()
    assert params[:len(KATA_AMD64_KERNEL_PARAMS)] == list(KATA_AMD64_KERNEL_PARAMS)
    assert params[-6:] == ["console=hvc0", "panic=-1", "quiet", "agent.log=info", "foo=1", "bar"]


def test_command_line_has_a_virtio_rng_from_the_entropy_source(tmp_path):
    """Kata 1.x's entropy_source: a virtio-rng (the initrd loads virtio_rng), so the guest's CRNG is
    ready before the agent's Python reads /dev/urandom; "" leaves the device out."""
    q = QemuHypervisor(tmp_path / "sb", "x", kernel="/k", initrd="/i", image="/im")
    argv = q.command_line()
    assert arg_after(argv, "-object") == ["rng-random,id=rng0,filename=/dev/urandom"]
    assert "virtio-rng-pci,rng=rng0" in arg_after(argv, "-device")
    q = QemuHypervisor.from_config(tmp_path / "sb", "x", {"entropy_source": "/dev/hw,rng"})
    assert arg_after(q.command_line(), "-object") == ["rng-random,id=rng0,filename=/dev/hw,,rng"]
    argv = QemuHypervisor.from_config(tmp_path / "sb", "x", {"entropy_source": ""}).command_line()
    assert "-object" not in argv and not any(d.startswith("virtio-rng") for d in arg_after(argv, "-device"))


def test_firmware_is_qboot_where_qemu_ships_it(tmp_path, monkeypatch):
    """`firmware` unset: qboot.rom from the data dir of the configured QEMU (<prefix>/share/qemu,
    the binary's symlinks resolved), else "" (QEMU's default, SeaBIOS); a configured path is kept.
    The result goes on the command line as -bios, and nothing does when it is ""."""
    prefix = tmp_path / "opt"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "qemu-system-x86_64").write_text("#!/bin/sh\n")
    (prefix / "bin" / "qemu-system-x86_64").chmod(0o755)
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "qemu").symlink_to(prefix / "bin" / "qemu-system-x86_64")
    assert default_firmware(str(tmp_path / "links" / "qemu")) == ""
    (prefix / "share" / "qemu").mkdir(parents=True)
    (prefix / "share" / "qemu" / "qboot.rom").write_bytes(b"rom")
    qboot = str(prefix / "share" / "qemu" / "qboot.rom")
    assert default_firmware(str(tmp_path / "links" / "qemu")) == qboot
    monkeypatch.setenv("PATH", str(tmp_path / "links"))
    assert default_firmware("qemu") == qboot

    from kata_runtime.hypervisor import qemu as qemu_module

    monkeypatch.setattr(qemu_module, "guest_files", lambda settings: {})
    monkeypatch.setattr(qemu_module, "resolve_accel", lambda settings, cache, warn: "tcg")
    resolve = lambda **s: QemuHypervisor.resolve_settings(s, probe_cache_dir=None, warn=print)["firmware"]
    assert resolve(path=str(tmp_path / "links" / "qemu")) == qboot
    assert resolve(path=str(tmp_path / "links" / "qemu"), firmware="/fw/bios.bin") == "/fw/bios.bin"
    assert resolve(path=str(tmp_path / "nowhere" / "qemu")) == ""
    monkeypatch.chdir(prefix / "bin")  # a name not on $PATH: no prefix, whatever the current directory
    assert default_firmware("qemu-system-x86_64-missing") == ""

    argv = QemuHypervisor.from_config(tmp_path / "sb", "x", {"firmware": qboot}).command_line()
    assert arg_after(argv, "-bios") == [qboot] and argv.index("-bios") < argv.index("-kernel")
    assert "-bios" not in QemuHypervisor.from_config(tmp_path / "sb", "x", {"firmware": ""}).command_line()


def test_command_line_debug_and_odd_paths(tmp_path):
    q = QemuHypervisor(tmp_path / "a,b", "x", kernel="/k", initrd="/i", image="/im,g", accel="kvm",
                       cpu_model="host", debug=True, agent_log_level="debug")
    argv = q.command_line()
    assert argv[0] == "qemu-system-x86_64" and arg_after(argv, "-cpu") == ["host"]
    assert arg_after(argv, "-machine") == ["pc,accel=kvm"]
    assert "debug agent.log=debug" in arg_after(argv, "-append")[0] and "quiet" not in arg_after(argv, "-append")[0]
    assert arg_after(argv, "-drive")[0].startswith("id=image0,file=/im,,g,")  # QEMU's comma escape
    assert f"path={tmp_path}/a,,b/kata.sock," in arg_after(argv, "-chardev")[0]


def test_from_config_reads_the_hypervisor_qemu_section(tmp_path):
    settings = {"path": "/usr/bin/qemu-system-x86_64", "kernel": "/k", "initrd": "/i", "image": "", "machine_type": "pc",
                "default_vcpus": 2, "default_memory": 512, "kernel_params": "a=1", "accel": "tcg",
                "shared_fs": "virtio-9p", "enable_debug": True}
    q = QemuHypervisor.from_config(tmp_path, "sb", settings, debug=True)
    assert (q.kernel, q.initrd, q.image, q.vcpus, q.memory_mib, q.accel) == ("/k", "/i", None, 2, 512, "tcg")
    assert q.kernel_command_line().endswith("console=hvc0 panic=-1 debug agent.log=debug a=1")
    assert QemuHypervisor.from_config(tmp_path, "sb", {}).kernel_command_line().endswith("quiet agent.log=info")


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="accel"):
        QemuHypervisor(tmp_path, "x", accel="xen")
    with pytest.raises(ValueError, match="vcpus"):
        QemuHypervisor(tmp_path, "x", vcpus=0)


async def test_accel_auto_must_be_resolved_before_start(tmp_path):
    q = QemuHypervisor(tmp_path / "sb", "x", kernel="/k", initrd="/i", image="/im", accel="auto")
    with pytest.raises(HypervisorError, match="accel 'auto' is not resolved"):
        await q.start()
    await q.stop()  # an "auto" object can still stop (nothing here)


# ------------------------------------------------- settings resolution


def fake_cache_entry(cache_dir: Path) -> dict:
    """A complete image cache entry for the CURRENT inputs (kata_runtime.image.build's layout) made
    of empty files: what `kata-runtime image build` leaves, without building."""
    import json

    from kata_runtime.image import Recipe, gather_inputs
    from kata_runtime.image.build import entry_dir

    key = gather_inputs(Recipe()).cache_key()
    directory = Path(entry_dir(str(cache_dir), key))
    directory.mkdir(parents=True)
    files = {"kernel": directory / "vmlinux", "initrd": directory / "initrd.img", "image": directory / "rootfs.img"}
    for path in files.values():
        path.write_bytes(b"")
    (directory / "build.json").write_text(json.dumps({"key": key, "kernel_file": "vmlinux", "inputs": {}}))
    return {name: str(path) for name, path in files.items()}


def test_guest_files_are_the_configured_ones_or_the_build_for_these_inputs(tmp_path):
    from kata_runtime.hypervisor.qemu import guest_files

    given = {"kernel": "/k", "initrd": "/i", "image": "/im"}
    assert guest_files({**given, "image_cache_dir": str(tmp_path)}) == given
    with pytest.raises(HypervisorError, match="no guest image of this kata-py .* `kata-runtime image build "
                                              f"--cache-dir {tmp_path}`"):
        guest_files({"kernel": "", "initrd": "", "image": "", "image_cache_dir": str(tmp_path)})
    built = fake_cache_entry(tmp_path)
    assert guest_files({"image_cache_dir": str(tmp_path)}) == built
    with pytest.raises(HypervisorError, match=r"sets kernel, image but not initrd: set all three, or none"):
        guest_files({"kernel": "/k", "image": "/im", "image_cache_dir": str(tmp_path)})


def test_accel_auto_is_the_probes_verdict_with_one_warning_for_tcg(tmp_path, monkeypatch):
    from kata_runtime import kvm
    from kata_runtime.hypervisor.qemu import resolve_accel

    calls, warnings = [], []

    def fake_resolve(accel, **kwargs):
        calls.append((accel, kwargs))
        return "tcg", kvm.KvmVerdict(False, "tcg", "a KVM guest did not reach its initrd within 8 s", cached=True)

    monkeypatch.setattr(kvm, "resolve_accel", fake_resolve)
    settings = {"accel": "auto", "path": "/usr/bin/qemu-system-x86_64", "kernel": "/cache/vmlinux"}
    assert resolve_accel(settings, str(tmp_path), warnings.append) == "tcg"
    assert calls == [("auto", {"cache_dir": str(tmp_path), "qemu": "/usr/bin/qemu-system-x86_64",
                               "kernel": "/cache/vmlinux", "cpu": None})]  # the kernel and -cpu the guest boots
    assert warnings == ["KVM is not usable, using TCG (slow): a KVM guest did not reach its initrd within 8 s "
                        "(cached verdict; kata-runtime check --verbose says more)"]
    for forced in ("kvm", "tcg"):  # forced: no probe, no warning
        assert resolve_accel({**settings, "accel": forced}, str(tmp_path), warnings.append) == forced
    assert len(calls) == 1 and len(warnings) == 1


def test_resolve_settings_records_concrete_files_and_accel(tmp_path, monkeypatch):
    from kata_runtime import kvm

    monkeypatch.setattr(kvm, "resolve_accel", lambda accel, **kw: ("kvm", kvm.KvmVerdict(True, "kvm", "ok")))
    built = fake_cache_entry(tmp_path)
    warnings = []
    settings = {"kernel": "", "initrd": "", "image": "", "image_cache_dir": str(tmp_path), "accel": "auto",
                "default_vcpus": 2}
    resolved = QemuHypervisor.resolve_settings(settings, probe_cache_dir=None, warn=warnings.append)
    assert resolved == {**settings, **built, "accel": "kvm", "firmware": default_firmware(DEFAULT_PATH)} and warnings == []
    assert settings["accel"] == "auto"  # the configuration itself is not changed
    q = QemuHypervisor.from_config(tmp_path / "sb", "sb", resolved)
    assert (q.kernel, q.initrd, q.image, q.accel, q.vcpus) == (built["kernel"], built["initrd"], built["image"],
                                                               "kvm", 2)


# -------------------------------------------------------------- pid guard


async def test_a_recycled_pid_in_the_pid_file_is_never_signalled(vm_dir):
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        q = QemuHypervisor(vm_dir, "x", accel="tcg")
        Path(q.pid_file).write_text(f"{bystander.pid}\n")
        assert q.pid is None
        await q.stop(timeout=0.2)
        assert bystander.poll() is None  # still running
        assert not os.path.exists(q.pid_file)
    finally:
        bystander.kill()
        bystander.wait()


async def test_stop_kills_a_qemu_of_this_sandbox_that_the_pid_file_does_not_name(vm_dir):
    """A runtime killed while QEMU daemonises leaves a launcher, or a daemon whose pid file is not
    written yet: stop() finds them by their -pidfile argument (and leaves other sandboxes' alone)."""
    q = QemuHypervisor(os.path.join(vm_dir, "a"), "x", accel="tcg")
    other = QemuHypervisor(os.path.join(vm_dir, "b"), "y", accel="tcg")
    for sb in (q, other):
        os.makedirs(sb.sandbox_dir)
    paused = ["qemu-system-x86_64", "-machine", "none", "-S", "-display", "none", "-nodefaults", "-pidfile"]
    ours = subprocess.Popen([*paused, q.pid_file], start_new_session=True)
    theirs = subprocess.Popen([*paused, other.pid_file], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (os.path.exists(q.pid_file) and os.path.exists(other.pid_file)) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        os.unlink(q.pid_file)  # as if QEMU had not written it yet
        assert q.pid is None
        await q.stop(timeout=0.2)
        assert ours.wait(timeout=5) == -9
        assert theirs.poll() is None
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait()


# ---------------------------------------------------------- failures at start


async def test_a_missing_kernel_fails_before_anything_starts(vm_dir, tmp_path):
    for name in ("initrd", "image"):
        (tmp_path / name).write_bytes(b"x")
    q = QemuHypervisor(vm_dir, "x", kernel=str(tmp_path / "no-such-vmlinuz"), initrd=str(tmp_path / "initrd"),
                       image=str(tmp_path / "image"), accel="tcg")
    with pytest.raises(HypervisorError, match=r"kernel .*no-such-vmlinuz does not exist"):
        await q.start()
    assert_nothing_left(q)
    with pytest.raises(HypervisorError, match="no guest image configured"):
        await QemuHypervisor(vm_dir, "y", kernel=str(tmp_path / "initrd"), initrd=str(tmp_path / "initrd"),
                             accel="tcg").start()


@pytest.mark.vm
async def test_a_kernel_file_qemu_cannot_load_fails_with_qemus_message(vm_dir, tmp_path, guest_image):
    bad = tmp_path / "vmlinuz"
    bad.write_bytes(b"\0" * 4096)
    q = make_qemu(vm_dir, guest_image, kernel=str(bad))
    with pytest.raises(HypervisorError) as err:
        await q.start()
    assert "QEMU failed to start: qemu: linux kernel too old" in str(err.value)  # QEMU's own words
    assert f"(kernel {bad}," in str(err.value)
    assert_nothing_left(q)


# ------------------------------------------------------------------- boots


@pytest.mark.vm
async def test_an_agent_that_never_answers_times_out_and_qemu_is_killed(vm_dir, guest_image):
    q = make_qemu(vm_dir, guest_image)
    await q.start()
    pid = q.pid
    never = asyncio.get_running_loop().create_future()
    with pytest.raises(HypervisorError, match=r"the agent did not answer within 0\.5s; console \("):
        await q.wait_ready(lambda: never, timeout=0.5)
    assert never.cancelled()
    assert _gone(pid)
    assert_nothing_left(q)


@pytest.mark.vm
async def test_stop_kills_a_qemu_whose_qmp_socket_is_gone(vm_dir, guest_image):
    q = make_qemu(vm_dir, guest_image)
    await q.start()
    pid = q.pid
    os.unlink(q.qmp_socket_path)  # QMP unreachable: stop() must fall back to SIGKILL after the bound
    t0 = time.monotonic()
    await q.stop(timeout=0.5)
    assert 0.5 <= time.monotonic() - t0 < 6.0
    assert _gone(pid)
    assert_nothing_left(q)
    await q.stop()  # idempotent


def _gone(pid: int) -> bool:
    """No such process (or only its zombie, which its parent, not us, reaps)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


@pytest.mark.vm
async def test_a_second_start_of_a_running_sandbox_is_refused(vm_dir, guest_image):
    q = make_qemu(vm_dir, guest_image)
    await q.start()
    try:
        other = QemuHypervisor(vm_dir, q.sandbox_id, kernel=q.kernel, initrd=q.initrd, image=q.image, accel="tcg")
        assert other.pid == q.pid  # a new object for the same directory finds the running QEMU
        with pytest.raises(HypervisorError, match="already running"):
            await other.start()
    finally:
        await QemuHypervisor(vm_dir, q.sandbox_id).stop(timeout=2.0)  # stop from a bare object, as `delete` would
    assert_nothing_left(q)
