"""containerd benchmark: ``ctr run --rm`` wall time with kata-runtime vs plain runc, same run.

    python -m bench.containerd_bench [--quick] [--rounds N] [--parallel N] [--breakdown]
                                     [--kata-config NAME=FILE ...] [--no-kata]
                                     [--vm [--vm-rounds N] [--vm-parallel N] [--image-cache DIR] [--accel A]]

Everything real: a containerd 1.6 of its own (tests/support/containerd.py: config, root, state and
sockets in a temp dir, killed and removed at the end), the unmodified containerd-shim-runc-v2,
a busybox image built and imported locally, and ``ctr run --rm --runc-binary <runtime> IMAGE ID
true`` timed from the test's fork to ctr's exit.

- serial: ``--rounds`` rounds, each running one container per runtime in turn (the order rotates
  every round, so a drifting machine load hits every runtime alike); median and p90 in ms, and
  each runtime's median / runc's median.
- parallel: ``--parallel`` containers started at once per runtime (one runtime at a time), wall
  time until the last ctr exits; the ratio to runc's with as many at once.
- VM tiers (``--vm``, or a ``--kata-config`` whose ``[runtime] hypervisor`` is "qemu"): a boot
  per run, so they take part in the first ``--vm-rounds`` rounds only and start
  ``--vm-parallel`` at once (runc is measured at that count too, for the ratio).
- ``--breakdown``: one more serial round per kata runtime through a timing wrapper that logs
  every call the shim makes (create, start, delete, delete --force) with its duration.

Runtimes: ``runc`` (the host's, the shim's default), ``kata`` (the venv's kata-runtime with its
default configuration: the process sandbox until the VM tier is the default) and one
``kata-NAME`` per ``--kata-config NAME=FILE`` (kata-runtime --kata-config FILE, e.g. a qemu
configuration for the VM tier). ``--vm`` adds ``kata-qemu``: ``hypervisor = "qemu"`` booting
this kata-py's guest image from ``--image-cache`` (built there first when missing: minutes),
``--accel`` (default auto: KVM where a guest boots, else TCG; the probe's verdict is cached by
the warm-up run). Needs root, containerd, ctr, containerd-shim-runc-v2, runc.
Never asserts; the last line is machine-readable (a ``NAME_par_n`` field where a runtime ran
another count in parallel than ``par_n``):

    RESULT runc_ms=.. kata_ms=.. kata_ratio=.. par_n=.. runc_par_s=.. kata_par_s=.. kata_par_ratio=..
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from kata_runtime.image import DEFAULT_CACHE_DIR
from tests.support.containerd import KATA_RUNTIME, Containerd, kata_runtime_missing, missing_requirements, new_id
from tests.support.oci_image import build_busybox_image_tar
from tests.support.runtime import write_config

RUN_TIMEOUT = 600.0
VM_NAME = "kata-qemu"
CMD = ["true"]
WRAPPER = """#!/bin/sh
s=$(date +%s.%N)
{runtime} "$@"
rc=$?
echo "$s $(date +%s.%N) $rc $*" >> {log}
exit $rc
"""


def write_script(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def vm_config(path: Path, cache_dir: str, accel: str) -> Path:
    """A kata-runtime configuration.toml at ``path``: ``hypervisor = "qemu"`` booting this
    kata-py's guest image (kata_runtime.image.build_image in ``cache_dir``: a cache hit, or a
    build of minutes with its progress on stderr), ``accel``, no debug logs. Raises ImageError."""
    from kata_runtime.image import build_image

    image = build_image(cache_dir)
    return write_config(path, **{
        "runtime": {"hypervisor": "qemu", "enable_debug": False},
        "hypervisor.qemu": {"kernel": str(image.kernel), "initrd": str(image.initrd), "image": str(image.image),
                            "accel": accel},
        "proxy.kata": {"debug": False}, "shim.kata": {"debug": False}, "agent.kata": {"enable_debug": False}})


def is_vm_config(path: str) -> bool:
    """Whether a kata-runtime configuration file chooses ``[runtime] hypervisor = "qemu"``."""
    import tomllib

    with open(path, "rb") as f:
        return (tomllib.load(f).get("runtime") or {}).get("hypervisor") == "qemu"


def runtimes(cd: Containerd, args) -> tuple[dict[str, str | None], set[str]]:
    """({name: --runc-binary path or None for the shim's default runc}, names of the VM tiers)."""
    found: dict[str, str | None] = {"runc": None}
    vms: set[str] = set()
    if args.no_kata:
        return found, vms
    reason = kata_runtime_missing()
    if reason:
        print(f"# {reason}: runc only", file=sys.stderr)
        return found, vms
    found["kata"] = str(KATA_RUNTIME)
    configs = list(args.kata_config)
    if args.vm:
        configs.append(f"{VM_NAME[len('kata-'):]}={vm_config(cd.base / 'qemu.toml', args.image_cache, args.accel)}")
    for spec in configs:
        name, _, conf = spec.partition("=")
        script = f'#!/bin/sh\nexec {KATA_RUNTIME} --kata-config {os.path.abspath(conf)} "$@"\n'
        found[f"kata-{name}"] = write_script(cd.base / f"kata-{name}.sh", script)
        if is_vm_config(conf):
            vms.add(f"kata-{name}")
    return found, vms


def run_once(cd: Containerd, image: str, binary: str | None, prefix: str) -> float:
    """One ``ctr run --rm IMAGE ID true``: wall seconds. RuntimeError if it did not exit 0."""
    cid = new_id(prefix)
    t0 = time.perf_counter()
    res = cd.run(image, cid, CMD, runtime=binary, timeout=RUN_TIMEOUT)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"ctr run {cid} ({binary or 'runc'}) exited {res.returncode}: "
                           f"{res.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def serial(cd: Containerd, image: str, rts: dict, rounds: int, vms: set[str] = frozenset(),
           vm_rounds: int = 0) -> dict[str, list[float]]:
    """{runtime: [seconds per run]}: ``rounds`` rounds, the runtime order rotated each round; the
    runtimes in ``vms`` only in the first ``vm_rounds`` of them."""
    names = list(rts)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if name not in vms or r < vm_rounds:
                times[name].append(run_once(cd, image, rts[name], f"s{name}"))
    return times


def parallel(cd: Containerd, image: str, binary: str | None, name: str, n: int) -> float:
    """Wall seconds for ``n`` ``ctr run --rm`` started at once, until the last exits."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda _i: run_once(cd, image, binary, f"p{name}"), range(n)))
    return time.perf_counter() - t0


def breakdown(cd: Containerd, image: str, name: str, binary: str) -> list[tuple[str, float, float]]:
    """One run through a timing wrapper: [(call, start offset s, duration s)] in call order."""
    log = cd.base / f"calls-{name}.log"
    wrapper = write_script(cd.base / f"timed-{name}.sh", WRAPPER.format(runtime=binary, log=log))
    t0 = time.time()
    run_once(cd, image, wrapper, f"b{name}")
    calls = []
    for line in log.read_text().splitlines():
        start, end, rc, *argv = line.split()
        words = [a for a in argv if not a.startswith("/") and a not in ("--root", "--log", "--log-format", "json",
                                                                         "--bundle", "--pid-file")]
        calls.append((" ".join(words[:-1]) + f" (rc {rc})", float(start) - t0, float(end) - float(start)))
    return calls


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def print_serial(times: dict[str, list[float]]) -> dict[str, float]:
    base = statistics.median(times["runc"])
    print(f"{'runtime':<14}{'runs':>6}{'median ms':>12}{'p90 ms':>10}{'ratio':>8}")
    medians = {}
    for name, values in times.items():
        medians[name] = statistics.median(values)
        print(f"{name:<14}{len(values):>6}{medians[name] * 1e3:>12.0f}{pct(values, 0.9) * 1e3:>10.0f}"
              f"{medians[name] / base:>8.2f}")
    return medians


def parallel_all(cd: Containerd, image: str, rts: dict, counts: dict[str, int]) -> tuple[dict, dict]:
    """Each runtime's ``counts[name]`` containers at once, runc at every count used: prints the
    table; returns ({name: wall seconds}, {count: runc's wall seconds})."""
    print(f"\n{'runtime':<14}{'parallel':>9}{'wall s':>9}{'ratio':>8}")
    runc = {n: parallel(cd, image, rts["runc"], "runc", n) for n in sorted(set(counts.values()))}
    par = {}
    for name, binary in rts.items():
        n = counts[name]
        par[name] = runc[n] if name == "runc" else parallel(cd, image, binary, name, n)
        print(f"{name:<14}{n:>9}{par[name]:>9.2f}{par[name] / runc[n]:>8.2f}")
    return par, runc


def result_line(rts: dict, medians: dict, par: dict, runc_par: dict, counts: dict, par_n: int) -> str:
    """The machine-readable last line (see the module docstring)."""
    fields = {"runc_ms": f"{medians['runc'] * 1e3:.0f}"}
    for name in rts:
        if name != "runc":
            key = name.replace("-", "_")
            fields[f"{key}_ms"] = f"{medians[name] * 1e3:.0f}"
            fields[f"{key}_ratio"] = f"{medians[name] / medians['runc']:.2f}"
    fields.update(par_n=str(par_n), runc_par_s=f"{par['runc']:.2f}")
    for name in rts:
        if name != "runc":
            key = name.replace("-", "_")
            if counts[name] != par_n:
                fields[f"{key}_par_n"] = str(counts[name])
            fields[f"{key}_par_s"] = f"{par[name]:.2f}"
            fields[f"{key}_par_ratio"] = f"{par[name] / runc_par[counts[name]]:.2f}"
    return "RESULT " + " ".join(f"{k}={v}" for k, v in fields.items())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.containerd_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke: 2 rounds, 2 in parallel")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--breakdown", action="store_true", help="time each runtime call of one kata run")
    ap.add_argument("--kata-config", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument("--no-kata", action="store_true", help="runc only")
    ap.add_argument("--vm", action="store_true", help=f"add {VM_NAME}: hypervisor = qemu, this kata-py's guest image")
    ap.add_argument("--vm-rounds", type=int, default=3, help="serial rounds of the VM tiers (the first N)")
    ap.add_argument("--vm-parallel", type=int, default=4, help="VM tier containers started at once")
    ap.add_argument("--image-cache", default=os.environ.get("KATA_PY_TEST_IMAGE_CACHE") or DEFAULT_CACHE_DIR,
                    metavar="DIR", help="the guest image cache of --vm (default: $KATA_PY_TEST_IMAGE_CACHE, "
                                        "else kata-runtime image build's)")
    ap.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"), help="accel of --vm")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.parallel, args.vm_rounds, args.vm_parallel = 2, 2, 1, 2
    reason = missing_requirements()
    if reason:
        print(f"containerd_bench: {reason}", file=sys.stderr)
        return 2
    cd = Containerd.start()
    try:
        tar = build_busybox_image_tar(cd.base / "busybox.tar")
        cd.import_image(tar.path)
        image = tar.name
        rts, vms = runtimes(cd, args)
        print(f"# ctr run --rm IMAGE ID {' '.join(CMD)}; containerd 1.6 + containerd-shim-runc-v2; "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        run_once(cd, image, None, "warm")  # snapshot and shim binaries in the page cache
        for name in sorted(vms):  # guest image files in the page cache; the accel probe's verdict cached
            run_once(cd, image, rts[name], f"warm{name}")
        medians = print_serial(serial(cd, image, rts, args.rounds, vms, args.vm_rounds))
        counts = {name: args.vm_parallel if name in vms else args.parallel for name in rts}
        par, runc_par = parallel_all(cd, image, rts, counts)
        if args.breakdown:
            for name, binary in rts.items():
                if binary:
                    print(f"\n{name}: the shim's calls in one ctr run (start offset, duration)")
                    for call, start, dur in breakdown(cd, image, name, binary):
                        print(f"  +{start:6.2f}s {dur:6.2f}s  {call}")
    finally:
        cd.stop()
    print(result_line(rts, medians, par, runc_par, counts, args.parallel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
