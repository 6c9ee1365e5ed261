"""kata_runtime.kvm: the KVM probe behind accel = "auto" and `kata-runtime check`.

Unit tests (milliseconds): the newc cpio writer against GNU cpio, the cheap
/dev/kvm checks' reason strings, host facts, kernel choice, verdict reasons,
the cache (key, invalidation, lock). Boot mechanics (bound, kill, reasons of a
QEMU that fails) run against a small fake QEMU script, a real process that
checks the command line it gets. Real tests boot the host's kernel with the
probe initrd: one probe (KVM with TCG beside it, about 10-20 s here) shared by
the module through a session-wide cache directory that test_check.py reuses.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from kata_runtime import kvm
from tests.support.requirements import requires

REAL_QEMU = shutil.which(kvm.DEFAULT_QEMU)


def _has_boot_kernel() -> bool:
    try:
        kvm.default_guest_kernel()
        return True
    except kvm.ProbeError:
        return False


def _has_static_busybox() -> bool:
    try:
        kvm.find_static_busybox()
        return True
    except (kvm.ProbeError, OSError):
        return False


needs_boot = pytest.mark.skipif(
    not (REAL_QEMU and _has_boot_kernel() and _has_static_busybox()),
    reason="needs qemu-system-x86_64, /boot/vmlinuz-* and busybox-static")


@pytest.fixture(scope="session")
def probe_cache_dir(tmp_path_factory):
    """One KVM-probe cache for the whole session (test_check.py uses the same path)."""
    path = tmp_path_factory.getbasetemp() / "kvm-probe-cache"
    path.mkdir(exist_ok=True)
    return str(path)


# ------------------------------------------------------------------ cpio newc
def _entries():
    """Names of 1..5 characters and data of 0..7 bytes exercise every padding case."""
    entries = [kvm.CpioEntry("d", stat.S_IFDIR | 0o755),
               kvm.CpioEntry("d/sub", stat.S_IFDIR | 0o700)]
    for n in range(8):
        entries.append(kvm.CpioEntry("d/" + "abcde"[: n % 5 + 1] + str(n), stat.S_IFREG | 0o640,
                                     bytes(range(65, 65 + n)), mtime=1_700_000_000 + n))
    entries.append(kvm.CpioEntry("d/sub/exe", stat.S_IFREG | 0o755, b"#!/bin/sh\necho hi\n"))
    entries.append(kvm.CpioEntry("d/link", stat.S_IFLNK | 0o777, b"sub/exe"))
    return entries


@pytest.mark.skipif(not shutil.which("cpio"), reason="needs GNU cpio")
def test_newc_archive_extracts_with_gnu_cpio(tmp_path):
    archive = tmp_path / "a.cpio"
    entries = _entries()
    if os.geteuid() == 0:
        entries.append(kvm.CpioEntry("d/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    with open(archive, "wb") as out:
        size = kvm.write_newc(out, entries)
    assert size == archive.stat().st_size and size % 4 == 0
    listed = subprocess.run(["cpio", "-it", "--quiet"], stdin=open(archive, "rb"),
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed == [e.name for e in entries]

    root = tmp_path / "x"
    root.mkdir()
    subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=root,
                   stdin=open(archive, "rb"), check=True)
    for entry in entries:
        path = root / entry.name
        st = os.lstat(path)
        assert stat.S_IFMT(st.st_mode) == stat.S_IFMT(entry.mode), entry.name
        if stat.S_ISREG(entry.mode):
            assert path.read_bytes() == entry.data
            assert stat.S_IMODE(st.st_mode) == stat.S_IMODE(entry.mode)
            assert st.st_mtime == entry.mtime
        elif stat.S_ISLNK(entry.mode):
            assert os.readlink(path) == entry.data.decode()
        elif stat.S_ISCHR(entry.mode):
            assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == entry.rdev


def test_newc_header_fields_and_trailer():
    member = kvm.newc_member(kvm.CpioEntry("init", stat.S_IFREG | 0o755, b"abc"), ino=7)
    assert member[:6] == b"070701"
    fields = [int(member[6 + 8 * i: 14 + 8 * i], 16) for i in range(13)]
    ino, mode, uid, gid, nlink, mtime, filesize, _, _, rmaj, rmin, namesize, check = fields
    assert (ino, mode, uid, gid, nlink, filesize, namesize, check) == (7, 0o100755, 0, 0, 1, 3, 5, 0)
    assert member[110:115] == b"init\0" and len(member) % 4 == 0
    assert member.rstrip(b"\0").endswith(b"abc")
    import io
    out = io.BytesIO()
    kvm.write_newc(out, [])
    assert b"TRAILER!!!\0" in out.getvalue() and len(out.getvalue()) % 4 == 0


@pytest.mark.parametrize("name", ["/init", ""])
def test_newc_refuses_absolute_or_empty_names(name):
    import io
    with pytest.raises(ValueError):
        kvm.write_newc(io.BytesIO(), [kvm.CpioEntry(name, stat.S_IFREG | 0o644)])


def test_static_elf_detection(tmp_path):
    if _has_static_busybox():
        assert kvm.is_static_elf(kvm.find_static_busybox())
    assert not kvm.is_static_elf("/bin/ls")  # coreutils is dynamically linked
    text = tmp_path / "script"
    text.write_text("#!/bin/sh\n")
    with pytest.raises(kvm.ProbeError, match="not an ELF"):
        kvm.is_static_elf(str(text))
    with pytest.raises(kvm.ProbeError, match="busybox-static"):
        kvm.find_static_busybox([str(text), str(tmp_path / "missing")])


@needs_boot
def test_probe_initrd_members(tmp_path):
    path = kvm.build_probe_initrd(str(tmp_path / "initrd.cpio"))
    listed = subprocess.run(["cpio", "-itv", "--quiet"], stdin=open(path, "rb"),
                            capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1] for line in listed.splitlines()]
    assert names == ["dev", "dev/console", "bin", "bin/busybox", "init"]
    assert listed.splitlines()[1].startswith("crw") and "5,   1" in listed.splitlines()[1]
    script = kvm.probe_init_script().decode()
    assert script.startswith("#!/bin/busybox sh\n") and kvm.PROBE_MARKER in script
    assert "poweroff -f" in script


# --------------------------------------------------------------- cheap checks
def test_cheap_checks_missing_device(tmp_path):
    checks = kvm.cheap_checks(str(tmp_path / "kvm"))
    assert [(c.name, c.ok, c.detail) for c in checks] == [("device", False, f"{tmp_path}/kvm missing")]


def test_cheap_checks_not_a_character_device(tmp_path):
    (tmp_path / "kvm").write_text("")
    assert kvm.cheap_checks(str(tmp_path / "kvm"))[-1].detail == f"{tmp_path}/kvm is not a character device"


@requires(root="mknod needs root")
def test_cheap_checks_device_without_driver(tmp_path):
    node = tmp_path / "kvm"
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(0, 0))
    last = kvm.cheap_checks(str(node))[-1]
    assert (last.name, last.ok) == ("open", False)
    assert last.detail == f"{node} cannot be opened read-write: ENXIO (No such device or address)"


def test_cheap_checks_api_version_on_a_non_kvm_device():
    checks = kvm.cheap_checks("/dev/null")
    assert [c.name for c in checks] == ["device", "open", "api_version"]
    assert checks[-1].detail == "KVM_GET_API_VERSION failed: ENOTTY"
    fd = os.open("/dev/null", os.O_RDWR)
    try:
        assert kvm._check_create_vm(fd).detail == "KVM_CREATE_VM failed: ENOTTY"
    finally:
        os.close(fd)


@pytest.mark.skipif(not os.path.exists("/dev/kvm") or os.geteuid() != 0 or not shutil.which("setpriv")
                    or os.stat("/dev/kvm").st_mode & 0o006, reason="needs root, setpriv and a /dev/kvm "
                    "closed to others")
def test_cheap_checks_as_an_unprivileged_user():
    """As nobody (not in group kvm) the open fails with EACCES. Runs a copy of kvm.py (stdlib
    only) from a directory nobody can read, with the system Python if the venv's is closed to it."""
    import tempfile
    directory = tempfile.mkdtemp(prefix="kata-kvm-test-")
    try:
        os.chmod(directory, 0o755)
        shutil.copy(kvm.__file__, os.path.join(directory, "kvm_copy.py"))
        code = f"import sys; sys.path.insert(0, {directory!r}); import kvm_copy; " \
               "print(kvm_copy.cheap_checks()[-1].detail)"
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        out = subprocess.run(nobody + [sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
        if out.returncode != 0:
            out = subprocess.run(nobody + ["/usr/bin/python3", "-c", code], capture_output=True, text=True,
                                 cwd="/")
    finally:
        shutil.rmtree(directory)
    assert out.stdout.strip() == "/dev/kvm cannot be opened read-write: EACCES (Permission denied)", out.stderr


@pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="needs /dev/kvm")
def test_cheap_checks_on_this_host_are_consistent():
    checks = kvm.cheap_checks()
    assert checks[0].name == "device" and checks[0].ok
    assert all(c.ok for c in checks[:-1])
    if checks[-1].ok:
        assert [c.name for c in checks] == ["device", "open", "api_version", "create_vm"]


# ----------------------------------------------------------------- host facts
def _fake_host(tmp_path, modules, flags, nested=None):
    sysmod = tmp_path / "module"
    for name in modules:
        (sysmod / name / "parameters").mkdir(parents=True)
        if nested is not None:
            (sysmod / name / "parameters" / "nested").write_text(nested + "\n")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu {' '.join(flags)} sse\n\nprocessor\t: 1\n")
    return kvm.host_virt_facts(str(sysmod), str(cpuinfo))


def test_facts_of_a_pvm_host(tmp_path):
    facts = _fake_host(tmp_path, ["kvm", "kvm_pvm"], ["hypervisor"])
    assert facts == {"modules": {"kvm": {}, "kvm_pvm": {}}, "cpu_virt_flags": [], "under_hypervisor": True}
    assert kvm.likely_cause(facts).startswith("PVM host: kvm_pvm is loaded")
    assert kvm.describe_facts(facts) == ["module kvm loaded", "module kvm_pvm loaded",
                                         "CPU virtualization flags: none (no vmx/svm); running under a hypervisor"]


def test_facts_of_a_nested_guest_without_vmx(tmp_path):
    facts = _fake_host(tmp_path, ["kvm"], ["hypervisor"])
    assert kvm.likely_cause(facts) == ("the CPU shows no vmx/svm flag (this host is itself a VM without "
                                       "nested virtualization)")


def test_facts_of_a_vmx_host(tmp_path):
    facts = _fake_host(tmp_path, ["kvm", "kvm_intel"], ["vmx"], nested="Y")
    assert facts["modules"] == {"kvm": {}, "kvm_intel": {"nested": "Y"}}
    assert facts["cpu_virt_flags"] == ["vmx"] and not facts["under_hypervisor"]
    assert kvm.likely_cause(facts) is None
    assert "module kvm_intel loaded (nested=Y)" in kvm.describe_facts(facts)


def test_facts_with_nothing_readable(tmp_path):
    facts = kvm.host_virt_facts(str(tmp_path / "none"), str(tmp_path / "none"))
    assert facts == {"modules": {}, "cpu_virt_flags": [], "under_hypervisor": False}


# ---------------------------------------------------------------- guest kernel
def test_guest_kernel_prefers_the_running_release_then_the_highest_version(tmp_path):
    for name in ("vmlinuz-6.1.0-9-amd64", "vmlinuz-6.1.0-10-amd64", "config-6.1.0-10-amd64"):
        (tmp_path / name).write_text("")
    assert kvm.default_guest_kernel(str(tmp_path), "6.1.0-9-amd64") == f"{tmp_path}/vmlinuz-6.1.0-9-amd64"
    assert kvm.default_guest_kernel(str(tmp_path), "6.18.0-other") == f"{tmp_path}/vmlinuz-6.1.0-10-amd64"
    with pytest.raises(kvm.ProbeError, match="linux-image-amd64"):
        kvm.default_guest_kernel(str(tmp_path / "empty"), "x")


# ------------------------------------------------------------------ reasons
def _boot(accel, reached, reason, seconds=1.0):
    return kvm.BootResult(accel, reached, seconds, reason)


PVM = {"modules": {"kvm": {}, "kvm_pvm": {}}, "cpu_virt_flags": [], "under_hypervisor": True}
VMX = {"modules": {"kvm": {}, "kvm_intel": {}}, "cpu_virt_flags": ["vmx"], "under_hypervisor": False}


def test_reason_when_kvm_boots():
    assert kvm.boot_verdict_reason(_boot("kvm", True, "reached its initrd in 0.9 s"), None, PVM) == \
        "a KVM guest reached its initrd in 0.9 s"


def test_reason_names_the_pvm_host_and_the_tcg_control():
    reason = kvm.boot_verdict_reason(_boot("kvm", False, "did not reach its initrd within 8 s"),
                                     _boot("tcg", True, "reached its initrd in 8.3 s"), PVM)
    assert reason == ("a KVM guest did not reach its initrd within 8 s (PVM host: kvm_pvm is loaded, and PVM "
                      "runs only PVM-enabled guest kernels); the same guest under TCG reached its initrd in 8.3 s")


def test_reason_when_even_tcg_fails():
    reason = kvm.boot_verdict_reason(
        _boot("kvm", False, "qemu-system-x86_64 exited with status 1 after 0.1 s: bad option"),
        _boot("tcg", False, "did not reach its initrd within 60 s"), VMX)
    assert reason == ("the probe cannot tell: a KVM guest qemu-system-x86_64 exited with status 1 after 0.1 s: "
                      "bad option, and the same guest under TCG did not reach its initrd within 60 s")


def test_verdict_round_trips_through_json():
    verdict = kvm.KvmVerdict(False, "tcg", "why", [kvm.Check("device", True, "ok")], PVM,
                             _boot("kvm", False, "x"), _boot("tcg", True, "y"), "/q", "QEMU 7", "/k", 9.5, 1.0)
    again = kvm.KvmVerdict.from_dict(json.loads(json.dumps(verdict.to_dict())))
    assert again == verdict
    assert verdict.warning() == "KVM is not usable, using TCG (slow): why"


def test_resolve_accel_forced_values_do_not_probe():
    assert kvm.resolve_accel("kvm") == ("kvm", None)
    assert kvm.resolve_accel("tcg") == ("tcg", None)
    with pytest.raises(ValueError, match="auto, kvm or tcg"):
        kvm.resolve_accel("xen")


# ------------------------------------------------------ boots with a fake QEMU
FAKE_QEMU = textwrap.dedent("""\
    #!/bin/sh
    # A stand-in for qemu-system-x86_64: checks the probe's command line, then behaves as
    # $FAKE_QEMU_MODE says. Logs "<accel>[/<cpu>]" per boot to $FAKE_QEMU_LOG, its pid to $FAKE_QEMU_PID.
    if [ "$1" = "--version" ]; then echo "QEMU emulator version 0.0 (fake)"; exit 0; fi
    accel=""; initrd=""; append=""; cpu=""
    while [ $# -gt 0 ]; do
        case "$1" in
            -machine) accel="${2#*accel=}"; shift;;
            -initrd) initrd="$2"; shift;;
            -cpu) cpu="$2"; shift;;
            -append) append="$2"; shift;;
        esac
        shift
    done
    [ "$(head -c 6 "$initrd")" = "070701" ] || { echo "fake qemu: $initrd is not a newc cpio" >&2; exit 3; }
    case "$append" in *console=ttyS0*) ;; *) echo "fake qemu: no serial console" >&2; exit 3;; esac
    echo "$accel${cpu:+/$cpu}" >> "${FAKE_QEMU_LOG:-/dev/null}"
    echo $$ > "${FAKE_QEMU_PID:-/dev/null}"
    mode="$FAKE_QEMU_MODE"
    [ "$accel" = tcg ] && [ -n "$FAKE_QEMU_TCG_MODE" ] && mode="$FAKE_QEMU_TCG_MODE"
    case "$mode" in
        marker) echo "[    0.1] booting"; echo "kata-py kvm probe: initrd reached"; exec sleep 30;;
        slow-marker) sleep 1; echo "kata-py kvm probe: initrd reached"; exec sleep 30;;
        exit1) echo "qemu-system-x86_64: -machine pc,accel=$accel: no accelerator found" >&2; exit 1;;
        abort) echo "qemu-system-x86_64: ../target/i386/kvm/kvm.c:2991: assertion failed" >&2; kill -ABRT $$;;
        panic) echo "[    1.0] Kernel panic - not syncing: No working init found."; exit 0;;
        hang) exec sleep 60;;
    esac
    exit 4
""")


@pytest.fixture
def fake_qemu(tmp_path, monkeypatch):
    path = tmp_path / "qemu-system-x86_64"
    path.write_text(FAKE_QEMU)
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_QEMU_LOG", str(tmp_path / "boots.log"))
    monkeypatch.setenv("FAKE_QEMU_PID", str(tmp_path / "qemu.pid"))
    return str(path)


@pytest.fixture
def initrd(tmp_path):
    return kvm.build_probe_initrd(str(tmp_path / "initrd.cpio"), busybox=_busybox_or_any_elf())


@pytest.fixture
def kernel(tmp_path):
    """A guest kernel file for the fake QEMU (it never reads it)."""
    path = tmp_path / "vmlinuz-fake"
    path.write_bytes(b"MZ fake kernel")
    return str(path)


def _busybox_or_any_elf() -> str:
    """Any readable file will do for the fake QEMU (it only checks the cpio magic)."""
    return kvm.find_static_busybox() if _has_static_busybox() else os.path.realpath(sys.executable)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


def _fake_pid(tmp_path) -> int:
    return int((tmp_path / "qemu.pid").read_text())


def test_boot_reaches_the_marker_and_qemu_is_killed(fake_qemu, kernel, initrd, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU_MODE", "marker")
    result = kvm.boot_probe(fake_qemu, kernel, initrd, "kvm", 10)
    assert result.reached_initrd and result.reason.startswith("reached its initrd in ")
    assert result.console_tail[-1] == kvm.PROBE_MARKER
    assert not _alive(_fake_pid(tmp_path))


def test_boot_bound_is_kept_and_qemu_is_killed(fake_qemu, kernel, initrd, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU_MODE", "hang")
    started = time.monotonic()
    result = kvm.boot_probe(fake_qemu, kernel, initrd, "kvm", 1.0)
    assert time.monotonic() - started < 2.5
    assert result.reason == "did not reach its initrd within 1 s" and not result.reached_initrd
    assert not _alive(_fake_pid(tmp_path))


@pytest.mark.parametrize("mode,expected", [
    ("exit1", "qemu-system-x86_64 exited with status 1 after {s} s: qemu-system-x86_64: -machine "
              "pc,accel=kvm: no accelerator found"),
    ("abort", "qemu-system-x86_64 was killed by SIGABRT after {s} s: qemu-system-x86_64: "
              "../target/i386/kvm/kvm.c:2991: assertion failed"),
    ("panic", "qemu-system-x86_64 exited with status 0 after {s} s: [    1.0] Kernel panic - not syncing: "
              "No working init found."),
])
def test_boot_reasons_of_a_qemu_that_ends_early(fake_qemu, kernel, initrd, monkeypatch, mode, expected):
    monkeypatch.setenv("FAKE_QEMU_MODE", mode)
    result = kvm.boot_probe(fake_qemu, kernel, initrd, "kvm", 10)
    assert not result.reached_initrd
    assert result.reason == expected.format(s=f"{result.seconds:.1f}")


def test_boot_cancel_stops_at_once(fake_qemu, kernel, initrd, tmp_path, monkeypatch):
    import threading
    monkeypatch.setenv("FAKE_QEMU_MODE", "hang")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    result = kvm.boot_probe(fake_qemu, kernel, initrd, "tcg", 30, cancel=cancel)
    assert result.reason == "cancelled" and time.monotonic() - started < 2.0
    assert not _alive(_fake_pid(tmp_path))


@pytest.mark.skipif(not shutil.which("setpriv"), reason="PR_SET_PDEATHSIG comes from util-linux setpriv")
def test_qemu_dies_with_a_killed_prober(fake_qemu, kernel, initrd, tmp_path):
    """SIGKILL of the process running the probe (e.g. kata-runtime killed by its caller)
    takes its QEMU with it: no guest is left spinning."""
    env = {**os.environ, "FAKE_QEMU_MODE": "hang"}
    code = f"from kata_runtime import kvm; kvm.boot_probe({fake_qemu!r}, {kernel!r}, {initrd!r}, 'kvm', 60)"
    prober = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "qemu.pid").exists() or not (tmp_path / "qemu.pid").read_text().strip():
            assert time.monotonic() < deadline, "the fake QEMU never started"
            time.sleep(0.05)
        pid = _fake_pid(tmp_path)
        assert _alive(pid)
    finally:
        prober.kill()
        prober.wait()
    deadline = time.monotonic() + 3
    while _alive(pid):
        assert time.monotonic() < deadline, f"QEMU {pid} outlived its killed prober"
        time.sleep(0.05)


def _boots(tmp_path) -> list[str]:
    log = tmp_path / "boots.log"
    return log.read_text().split() if log.exists() else []


needs_kvm_cheap_checks = pytest.mark.skipif(
    not kvm.cheap_checks()[-1].ok, reason="the cache is only consulted when /dev/kvm passes the cheap checks")


@needs_kvm_cheap_checks
def test_probe_with_a_working_kvm_cancels_the_tcg_control(fake_qemu, kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU_MODE", "marker")
    monkeypatch.setenv("FAKE_QEMU_TCG_MODE", "hang")
    verdict = kvm.probe(qemu=fake_qemu, kernel=kernel, busybox=_busybox_or_any_elf())
    assert verdict.usable and verdict.accel == "kvm" and verdict.tcg_boot is None
    assert verdict.reason.startswith("a KVM guest reached its initrd in ")
    assert verdict.qemu_version == "QEMU emulator version 0.0 (fake)"
    assert verdict.seconds < 5


@needs_kvm_cheap_checks
def test_cpu_model_applies_to_the_kvm_boot_only(fake_qemu, kernel, tmp_path, monkeypatch):
    """`-cpu host` exists only under KVM: the TCG control must not get it, or it would fail for that."""
    monkeypatch.setenv("FAKE_QEMU_MODE", "hang")
    monkeypatch.setenv("FAKE_QEMU_TCG_MODE", "marker")
    verdict = kvm.probe(qemu=fake_qemu, kernel=kernel, busybox=_busybox_or_any_elf(), cpu="host",
                        kvm_timeout=1.0)
    assert sorted(_boots(tmp_path)) == ["kvm/host", "tcg"]
    assert not verdict.usable and verdict.tcg_boot.reached_initrd
    assert verdict.reason.startswith("a KVM guest did not reach its initrd within 1 s")


@needs_kvm_cheap_checks
def test_probe_cache_hit_miss_and_invalidation(fake_qemu, kernel, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_QEMU_MODE", "marker")
    cache = tmp_path / "cache"
    args = dict(qemu=fake_qemu, kernel=kernel, busybox=_busybox_or_any_elf())
    first = kvm.probe_cached(str(cache), **args)
    assert not first.cached and _boots(tmp_path).count("kvm") == 1
    assert sorted(os.listdir(cache)) == [kvm.CACHE_FILE, kvm.CACHE_LOCK]

    second = kvm.probe_cached(str(cache), **args)
    assert second.cached and second.reason == first.reason and _boots(tmp_path).count("kvm") == 1

    os.utime(fake_qemu, ns=(time.time_ns(), time.time_ns() + 10**9))  # "upgraded" QEMU
    third = kvm.probe_cached(str(cache), **args)
    assert not third.cached and _boots(tmp_path).count("kvm") == 2

    assert kvm.probe_cached(str(cache), refresh=True, **args).cached is False
    assert _boots(tmp_path).count("kvm") == 3


@needs_kvm_cheap_checks
def test_probe_cache_is_filled_once_by_concurrent_callers(fake_qemu, kernel, tmp_path):
    env = {**os.environ, "FAKE_QEMU_MODE": "slow-marker"}
    code = (f"from kata_runtime import kvm; v = kvm.probe_cached({str(tmp_path / 'cache')!r}, "
            f"qemu={fake_qemu!r}, kernel={kernel!r}, busybox={_busybox_or_any_elf()!r}); print(v.cached)")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    answers = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert answers == ["False", "True", "True"]
    assert _boots(tmp_path).count("kvm") == 1


# ---------------------------------------------------------------------- cache
def _verdict(reason="r"):
    return kvm.KvmVerdict(False, "tcg", reason, [], PVM, _boot("kvm", False, "x"), None)


def test_cache_key_changes_with_each_input(tmp_path, monkeypatch):
    qemu, kernel, device = tmp_path / "qemu", tmp_path / "vmlinuz", tmp_path / "kvm"
    for f in (qemu, kernel, device):
        f.write_text("x")
    path = str(tmp_path / kvm.CACHE_FILE)

    def key(**overrides):
        return kvm.cache_key(**{"qemu": str(qemu), "kernel": str(kernel), "device": str(device), **overrides})

    def store_then(change) -> bool:
        """Store a verdict for the current inputs, apply `change`, and say whether it is a miss now."""
        kvm.store_cached(path, key(), _verdict())
        assert kvm.load_cached(path, key()).reason == "r"
        overrides = change() or {}
        return kvm.load_cached(path, key(**overrides)) is None

    assert store_then(lambda: {"cpu": "host"})
    assert store_then(lambda: {"kvm_timeout": 3.0})
    assert store_then(lambda: kernel.write_text("a new kernel") and None)
    assert store_then(lambda: os.utime(qemu, ns=(0, 10**9)))
    assert store_then(lambda: os.chmod(device, 0o600))  # a new ctime, as a re-created /dev/kvm has
    assert store_then(lambda: monkeypatch.setattr(kvm, "CACHE_FORMAT", kvm.CACHE_FORMAT + 1))
    uname = os.uname()
    assert store_then(lambda: monkeypatch.setattr(kvm.os, "uname", lambda: os.uname_result(
        (uname.sysname, uname.nodename, uname.release + "-new", uname.version, uname.machine))))
    assert not store_then(lambda: None)


@pytest.mark.parametrize("content", ["", "{", "[]", '{"key": 1}', '{"key": {}, "verdict": {"usable": 1}}'])
def test_cache_file_that_is_unusable_is_a_miss(tmp_path, content):
    path = tmp_path / kvm.CACHE_FILE
    path.write_text(content)
    assert kvm.load_cached(str(path), {}) is None


def test_store_is_atomic_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / kvm.CACHE_FILE)
    kvm.store_cached(path, {"k": 1}, _verdict("one"))
    kvm.store_cached(path, {"k": 1}, _verdict("two"))
    assert os.listdir(tmp_path) == [kvm.CACHE_FILE]
    assert kvm.load_cached(path, {"k": 1}).reason == "two"


# ------------------------------------------------------------------ real boots
def _probe_temp_dirs() -> set[str]:
    import tempfile
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("kata-kvm-probe-")}


@pytest.fixture(scope="module")
def real_verdict(probe_cache_dir):
    """The real probe of this host (the cached one if test_check.py ran first), with its wall time."""
    before = _probe_temp_dirs()
    started = time.monotonic()
    verdict = kvm.probe_cached(probe_cache_dir)
    return verdict, time.monotonic() - started, _probe_temp_dirs() - before


@needs_boot
def test_tcg_probe_boots_the_host_kernel_to_the_marker(real_verdict, tmp_path):
    """The probe initrd under TCG reaches its /init here. The module's probe already ran that
    boot when KVM failed (its TCG control); on a host where KVM works it was cancelled, so boot it."""
    verdict, _, _ = real_verdict
    boot = verdict.tcg_boot
    if boot is None:
        initrd = kvm.build_probe_initrd(str(tmp_path / "initrd.cpio"))
        boot = kvm.boot_probe(kvm.find_qemu(), kvm.default_guest_kernel(), initrd, "tcg", kvm.DEFAULT_TCG_TIMEOUT)
    assert boot.reached_initrd, (boot, verdict.reason)
    assert boot.console_tail[-1] == kvm.PROBE_MARKER


@needs_boot
def test_kvm_verdict_of_this_host(real_verdict):
    verdict, _, leftovers = real_verdict
    assert leftovers == set(), "the probe left its temporary directory behind"
    assert verdict.usable == (verdict.kvm_boot is not None and verdict.kvm_boot.reached_initrd)
    assert verdict.accel == ("kvm" if verdict.usable else "tcg")
    assert "\n" not in verdict.reason
    if not verdict.checks[-1].ok:
        assert verdict.reason == verdict.checks[-1].detail and verdict.kvm_boot is None
    if verdict.kvm_boot is not None and not verdict.kvm_boot.reached_initrd:
        assert verdict.kvm_boot.seconds <= kvm.DEFAULT_KVM_TIMEOUT + 0.5  # the bound holds
    if "kvm_pvm" in verdict.facts["modules"] and verdict.checks[-1].ok:
        # This kind of machine (DESIGN.md): KVM opens, but a stock kernel never boots.
        assert not verdict.usable
        assert verdict.reason.startswith(f"a KVM guest did not reach its initrd within "
                                         f"{kvm.DEFAULT_KVM_TIMEOUT:g} s (PVM host: kvm_pvm is loaded")
        assert "; the same guest under TCG reached its initrd in " in verdict.reason
    if verdict.usable:
        assert verdict.reason.startswith("a KVM guest reached its initrd in ")


@needs_boot
def test_real_verdict_is_cached_and_reused(real_verdict, probe_cache_dir):
    verdict, _, _ = real_verdict
    started = time.monotonic()
    again = kvm.probe_cached(probe_cache_dir)
    assert time.monotonic() - started < 1.0
    if verdict.checks[-1].ok:
        assert again.cached and again.reason == verdict.reason and again.probed_at == verdict.probed_at
    accel, resolved = kvm.resolve_accel("auto", cache_dir=probe_cache_dir)
    assert (accel, resolved.reason) == (verdict.accel, verdict.reason)


def test_no_qemu_left_running():
    """Every real probe killed its QEMU (whose -initrd lies in a kata-kvm-probe- temporary directory)."""
    leftovers = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"/kata-kvm-probe-" in a for a in argv) and _alive(int(pid)):
            leftovers.append(pid)
    assert leftovers == []
