"""containerd benchmark: ``ctr run --rm`` wall time with kata-runtime vs plain runc, same run.

    python -m bench.containerd_bench [--quick] [--rounds N] [--parallel N] [--breakdown]
                                     [--kata-config NAME=FILE ...] [--no-kata]

Everything real: a containerd 1.6 of its own (tests/support/containerd.py: config, root, state and
sockets in a temp dir, killed and removed at the end), the unmodified containerd-shim-runc-v2,
a busybox image built and imported locally, and ``ctr run --rm --runc-binary <runtime> IMAGE ID
true`` timed from the test's fork to ctr's exit.

- serial: ``--rounds`` rounds, each running one container per runtime in turn (the order rotates
  every round, so a drifting machine load hits every runtime alike); median and p90 in ms, and
  each runtime's median / runc's median.
- parallel: ``--parallel`` containers started at once per runtime (one runtime at a time), wall
  time until the last ctr exits; the ratio to runc's.
- ``--breakdown``: one more serial round per kata runtime through a timing wrapper that logs
  every call the shim makes (create, start, delete, delete --force) with its duration.

Runtimes: ``runc`` (the host's, the shim's default), ``kata`` (the venv's kata-runtime with its
default configuration: the process sandbox until the VM tier is the default) and one
``kata-NAME`` per ``--kata-config NAME=FILE`` (kata-runtime --kata-config FILE, e.g. a qemu
configuration for the VM tier). Needs root, containerd, ctr, containerd-shim-runc-v2, runc.
Never asserts; the last line is machine-readable:

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

from tests.support.containerd import KATA_RUNTIME, Containerd, kata_runtime_missing, missing_requirements, new_id
from tests.support.oci_image import build_busybox_image_tar

RUN_TIMEOUT = 600.0
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


def runtimes(cd: Containerd, args) -> dict[str, str | None]:
    """{name: --runc-binary path or None for the shim's default runc}."""
    found: dict[str, str | None] = {"runc": None}
    if args.no_kata:
        return found
    reason = kata_runtime_missing()
    if reason:
        print(f"# {reason}: runc only", file=sys.stderr)
        return found
    found["kata"] = str(KATA_RUNTIME)
    for spec in args.kata_config:
        name, _, conf = spec.partition("=")
        script = f'#!/bin/sh\nexec {KATA_RUNTIME} --kata-config {os.path.abspath(conf)} "$@"\n'
        found[f"kata-{name}"] = write_script(cd.base / f"kata-{name}.sh", script)
    return found


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


def serial(cd: Containerd, image: str, rts: dict, rounds: int) -> dict[str, list[float]]:
    """{runtime: [seconds per run]}: ``rounds`` rounds, the runtime order rotated each round."""
    names = list(rts)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.containerd_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke: 2 rounds, 2 in parallel")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--breakdown", action="store_true", help="time each runtime call of one kata run")
    ap.add_argument("--kata-config", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument("--no-kata", action="store_true", help="runc only")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.parallel = 2, 2
    reason = missing_requirements()
    if reason:
        print(f"containerd_bench: {reason}", file=sys.stderr)
        return 2
    cd = Containerd.start()
    try:
        tar = build_busybox_image_tar(cd.base / "busybox.tar")
        cd.import_image(tar.path)
        image = tar.name
        rts = runtimes(cd, args)
        print(f"# ctr run --rm IMAGE ID {' '.join(CMD)}; containerd 1.6 + containerd-shim-runc-v2; "
              f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        run_once(cd, image, None, "warm")  # snapshot and shim binaries in the page cache
        medians = print_serial(serial(cd, image, rts, args.rounds))
        print(f"\n{'runtime':<14}{'parallel':>9}{'wall s':>9}{'ratio':>8}")
        par = {}
        for name, binary in rts.items():
            par[name] = parallel(cd, image, binary, name, args.parallel)
            print(f"{name:<14}{args.parallel:>9}{par[name]:>9.2f}{par[name] / par['runc']:>8.2f}")
        if args.breakdown:
            for name, binary in rts.items():
                if binary:
                    print(f"\n{name}: the shim's calls in one ctr run (start offset, duration)")
                    for call, start, dur in breakdown(cd, image, name, binary):
                        print(f"  +{start:6.2f}s {dur:6.2f}s  {call}")
    finally:
        cd.stop()
    fields = {"runc_ms": f"{medians['runc'] * 1e3:.0f}"}
    for name in rts:
        if name != "runc":
            key = name.replace("-", "_")
            fields[f"{key}_ms"] = f"{medians[name] * 1e3:.0f}"
            fields[f"{key}_ratio"] = f"{medians[name] / medians['runc']:.2f}"
    fields.update(par_n=str(args.parallel), runc_par_s=f"{par['runc']:.2f}")
    for name in rts:
        if name != "runc":
            key = name.replace("-", "_")
            fields[f"{key}_par_s"] = f"{par[name]:.2f}"
            fields[f"{key}_par_ratio"] = f"{par[name] / par['runc']:.2f}"
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
