"""`make demo`: a busybox container in its own VM, run by kata-runtime as a user runs it.

    python -m bench.demo [--cache-dir DIR] [--accel auto|kvm|tcg]

1. the guest image: `kata-runtime image build` (a first build takes minutes and shows its steps;
   cached after, under /var/cache/kata-py/images unless --cache-dir or $KATA_PY_IMAGE_CACHE says);
2. the accelerator: `kata-runtime check --json` — the KVM probe's verdict and why (on a PVM
   host /dev/kvm opens but cannot boot a stock kernel: TCG);
3. `kata-runtime run` of a busybox bundle with a configuration.toml of `hypervisor = "qemu"`,
   `accel = "auto"` written to a temp dir; the container's output as it comes, timed from `run`;
4. clean-up: every container deleted, and checked: no QEMU, kata-proxy, kata-shim, mount or state
   left. Also after Ctrl-C, SIGTERM or a failure (bench/vm_tools.py does the stopping).

Ends with the container's `uname -r` (the guest's kernel) beside the host's, and the time from
`run` to the first output. Exit status 0 when the container ran in a VM and nothing was left.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

from bench.vm_tools import DEFAULT_CACHE_DIR, DemoError, Workspace, host_kernel, terminate_on_sigterm, \
    write_busybox_bundle

#: Seconds the container gets from `run` to its last line (a TCG boot on a loaded 2-core host).
RUN_TIMEOUT = 300.0
INDENT = "      "
#: What the container prints: the kernel it sees, then a little of the (virtual) machine.
CONTAINER_SCRIPT = ('echo "kernel   $(uname -r)"; echo "hostname $(hostname)"; '
                    'grep -m1 "model name" /proc/cpuinfo; grep MemTotal /proc/meminfo')


def say(text: str = "") -> None:
    print(text, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", default=os.environ.get("KATA_PY_IMAGE_CACHE") or DEFAULT_CACHE_DIR,
                        help="the guest image cache of `kata-runtime image build` (default: %(default)s)")
    parser.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"),
                        help="[hypervisor.qemu] accel of the demo's configuration (default: auto)")
    return parser.parse_args(argv)


# ------------------------------------------------------------------- steps


def image_step(ws: Workspace) -> None:
    """Build the guest image, or find it in the cache."""
    say(f"[1/4] guest image: kata-runtime image build --cache-dir {ws.cache_dir}")
    paths = ws.image_build(indent=INDENT)
    for name in ("kernel", "initrd", "image"):
        say(f"{INDENT}{name:<6} {paths.get(name, '?')}")


def accel_step(ws: Workspace, accel: str) -> str:
    """The KVM probe's verdict (`kata-runtime check`, cached in the workspace's --root for `run`);
    returns the accelerator the run will use."""
    say("\n[2/4] accelerator: kata-runtime check (KVM probe: a short boot that must reach its initrd)")
    started = time.monotonic()
    verdict = ws.check()["kvm"]
    chosen = verdict["accel"] if accel == "auto" else accel
    say(f"{INDENT}KVM usable: {'yes' if verdict['usable'] else 'no'} ({time.monotonic() - started:.1f} s)")
    say(f"{INDENT}why: {verdict['reason']}")
    say(f"{INDENT}accel {accel} -> {chosen}")
    return chosen


def run_step(ws: Workspace) -> tuple[list[str], float | None, int]:
    """`kata-runtime run` of the busybox bundle; returns (lines, seconds to first output, status)."""
    cid = f"demo-{uuid.uuid4().hex[:6]}"
    write_busybox_bundle(ws.bundle, ["sh", "-c", CONTAINER_SCRIPT], hostname="kata-demo")
    say(f"\n[3/4] kata-runtime --kata-config {ws.config} run --bundle {ws.bundle} {cid}")
    for line in filter(None, ws.config.read_text().splitlines()):
        say(f"{INDENT}config | {line}")
    run = ws.run(cid)
    lines, first = read_lines(run)
    status = run.wait(60.0)
    for line in ws.stderr_text().splitlines():
        say(f"{INDENT}stderr | {line}")
    say(f"{INDENT}exit status {status}")
    return lines, first, status


def read_lines(run) -> tuple[list[str], float | None]:
    """The container's stdout lines, printed as they come with their time since `run` started."""
    deadline = run.started + RUN_TIMEOUT
    lines, first, pending = [], None, b""
    while True:
        at, data = run.reader.next_chunk(deadline)
        if not data:
            break
        first = first if first is not None else at - run.started
        pending += data
        *complete, pending = pending.split(b"\n")
        for raw in complete:
            line = raw.decode("utf-8", "replace")
            lines.append(line)
            say(f"{INDENT}+{at - run.started:5.1f} s | {line}")
    if pending:
        lines.append(pending.decode("utf-8", "replace"))
    return lines, first


def summary(lines: list[str], first: float | None, accel: str) -> bool:
    """Host and guest kernel side by side and the time to first output; True if they differ."""
    guest = next((line.split(None, 1)[1] for line in lines if line.startswith("kernel ")), "?")
    host = host_kernel()
    say("\n      uname -r")
    say(f"host  {host}")
    say(f"VM    {guest}   <- the container's kernel: its own guest's, not the host's")
    took = f"{first:.1f} s" if first is not None else "no output"
    say(f"kata-runtime run -> first output: {took} (accel {accel})")
    return guest not in ("?", host)


def demo(ws: Workspace, accel: str) -> tuple[list[str], float | None, int, str]:
    """Steps 1-3: (the container's lines, seconds to its first output, exit status, accel used)."""
    image_step(ws)
    chosen = accel_step(ws, accel)
    lines, first, status = run_step(ws)
    return lines, first, status, chosen


def clean_up(ws: Workspace | None) -> list[str]:
    """Step 4: every container deleted and checked gone; returns what was left (empty: clean)."""
    if ws is None:
        return []
    left = ws.close()
    say("\n[4/4] clean-up: " + ("every container deleted; no QEMU, kata-proxy, kata-shim, mount or state left"
                               if not left else "LEFT BEHIND: " + "; ".join(left)))
    return left


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    terminate_on_sigterm()
    say('kata-py demo: a busybox container in its own VM (kata-runtime, hypervisor = "qemu")\n')
    result, ws = None, None
    try:
        ws = Workspace("kata-demo-", args.cache_dir, accel=args.accel)
        result = demo(ws, args.accel)
    except KeyboardInterrupt:
        say("\ninterrupted: stopping what the demo started")
    except DemoError as exc:
        say(f"\ndemo failed: {exc}")
    finally:
        left = clean_up(ws)
    if result is None:
        return 1
    lines, first, status, chosen = result
    in_vm = summary(lines, first, chosen)
    return 0 if in_vm and status == 0 and not left else 1


if __name__ == "__main__":
    sys.exit(main())
