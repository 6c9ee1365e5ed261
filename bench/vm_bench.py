"""VM sandbox benchmark: kata-runtime with `hypervisor = "qemu"`, one boot, figures beside the Go anchors.

    python -m bench.vm_bench [--quick] [--cache-dir DIR] [--accel auto|kvm|tcg] [--mib N] [--checks N]
                             [--kernel-params WORDS] [--entropy-source PATH] [--firmware PATH]
                             [--guest-dir DIR]

Everything real, driven as a user drives it (bench/vm_tools.py: the CLI in a temp dir, left clean
even on Ctrl-C). ONE sandbox is booted; its container runs

    echo ready; read n; dd if=/dev/zero bs=1048576 count=$n; read x; exit 0

with its stdio on pipes of this process (through kata-shim, kata-proxy and the agent in the VM), and:

- agent ready: QEMU start -> the agent answers Health Check through kata-proxy (the runtime's own
  figure: the ``waited`` of its "agent ready" debug record);
- run -> first output: from starting `kata-runtime run` to the container's "ready"; beside it
  QEMU's CPU time by then (utime + stime of all its threads): what the guest's boot cost, which a
  loaded machine changes much less than the wall time;
- Check round trip: grpc.health.v1-style Check of the agent API through the sandbox's proxy.sock
  (one gRPC channel, as the shims hold them), after a warm-up; p50 and p90, and the CPU time QEMU
  (the guest: the agent, emulated) and kata-proxy spent per call;
- stdout: N MiB of zeros (``n``, sent on stdin) from the container to this process, MiB/s;
- memory per sandbox: QEMU, kata-proxy and kata-shim, RSS, PSS and USS (Private_Clean +
  Private_Dirty of /proc/PID/smaps_rollup), idle (before the stdout run) and after it;
- accel: what `accel` resolved to, and the KVM probe's reason.

Go anchors (issue 13, the original Go stack in a TCG guest on this kind of machine): agent ready
4.2 s, Check 2.48 ms, 32 MiB of stdout at 0.49 MiB/s, kata-proxy 5.7 MB RSS, kata-shim 16.4 MB
RSS (taken as MiB here). Targets: agent ready <= 1.2x, Check <= 1.0x, stdout >= 1.0x. Never
asserts. ``--quick`` (the CI smoke): 1 MiB and 50 Checks, same single boot. Last line::

    RESULT accel=tcg agent_ready_s=.. first_output_s=.. check_p50_ms=.. stdout_mib_s=.. ...
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid

from bench.vm_tools import DEFAULT_CACHE_DIR, DemoError, Workspace, processes_mentioning, terminate_on_sigterm, \
    write_busybox_bundle

MiB = 1 << 20
#: Issue 13's anchors: the Go kata stack in a TCG guest on this kind of machine.
GO_AGENT_READY_S = 4.2
GO_CHECK_MS = 2.48
GO_STDOUT_MIB_S = 0.49
GO_PROXY_RSS_MIB = 5.7
GO_SHIM_RSS_MIB = 16.4
CONTAINER_SCRIPT = "echo ready; read n; dd if=/dev/zero bs=1048576 count=$n 2>/dev/null; read x; exit 0"
BOOT_DEADLINE = 300.0
CHECK_WARMUP = 20
EXIT_TIMEOUT = 60.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.vm_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke: 1 MiB of stdout, 50 Checks")
    parser.add_argument("--cache-dir", default=os.environ.get("KATA_PY_IMAGE_CACHE") or DEFAULT_CACHE_DIR,
                        help="the guest image cache of `kata-runtime image build` (default: %(default)s)")
    parser.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    parser.add_argument("--mib", type=int, help="MiB of container stdout (default 32; --quick 1)")
    parser.add_argument("--checks", type=int, help="Check calls timed (default 1000; --quick 50)")
    parser.add_argument("--kernel-params", metavar="WORDS",
                        help="[hypervisor.qemu] kernel_params: extra guest kernel parameters (e.g. norandmaps "
                             "for layout-stable A/B runs)")
    parser.add_argument("--guest-dir", metavar="DIR",
                        help="boot the vmlinux, initrd.img and rootfs.img of this image build (e.g. an older "
                             "one in the cache, for a before/after comparison) instead of this tree's")
    parser.add_argument("--firmware", metavar="PATH",
                        help="[hypervisor.qemu] firmware (default: the runtime's, qboot where QEMU ships it)")
    parser.add_argument("--entropy-source", metavar="PATH",
                        help='[hypervisor.qemu] entropy_source ("" = no virtio-rng; default: the runtime\'s)')
    args = parser.parse_args(argv)
    args.mib = args.mib or (1 if args.quick else 32)
    args.checks = args.checks or (50 if args.quick else 1000)
    return args


# ------------------------------------------------------------------ memory


def smaps_rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup as {field: KiB} (Rss, Pss, Private_Clean, ...); {} if it is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[-1] == "kB":
                    fields[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        return {}
    return fields


def memory_kib(pid: int) -> dict[str, int]:
    """{"rss", "pss", "uss"} in KiB; USS = Private_Clean + Private_Dirty (+ Private_Hugetlb)."""
    f = smaps_rollup(pid)
    uss = f.get("Private_Clean", 0) + f.get("Private_Dirty", 0) + f.get("Private_Hugetlb", 0)
    return {"rss": f.get("Rss", 0), "pss": f.get("Pss", 0), "uss": uss}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0.0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU time of each thread of a process (schedstat, ns precision), in seconds, by tid."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                out[int(tid)] = int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
    return out


def split_vcpu(before: dict[int, float], after: dict[int, float]) -> tuple[float, float]:
    """(CPU of the busiest thread, of all the others) between two thread_cpu_seconds samples: with
    one vCPU under TCG the busiest QEMU thread is the vCPU (the guest), the rest is QEMU's main
    loop and I/O threads (virtio-serial, the chardev sockets)."""
    deltas = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
    return (deltas[0], sum(deltas[1:])) if deltas else (0.0, 0.0)


def sandbox_pids(vm_dir: str, shim_pid_file: str) -> dict[str, int]:
    """{"qemu", "kata-proxy", "kata-shim"}: QEMU's pid file, the proxy listening on the sandbox's
    proxy.sock, and the shim of `run --pid-file`."""
    pids = {}
    with open(os.path.join(vm_dir, "qemu.pid")) as f:
        pids["qemu"] = int(f.read().strip())
    proxies = [p for p in processes_mentioning(f"--listen-socket {vm_dir}/proxy.sock") if "kata-proxy" in p]
    if proxies:
        pids["kata-proxy"] = int(proxies[0].split(":")[0])
    with open(shim_pid_file) as f:
        pids["kata-shim"] = int(f.read().strip())
    return pids


def sample_memory(pids: dict[str, int]) -> dict[str, dict[str, int]]:
    """memory_kib of each process, and their "total"."""
    sample = {name: memory_kib(pid) for name, pid in pids.items()}
    sample["total"] = {k: sum(m[k] for m in sample.values()) for k in ("rss", "pss", "uss")}
    return sample


# ------------------------------------------------------------ measurements


def agent_ready_seconds(ws: Workspace) -> float | None:
    """The runtime's own "QEMU start -> agent answered" (the ``waited`` of its "agent ready" record)."""
    for record in ws.log_records():
        if record.get("msg") == "agent ready" and "waited" in record:
            return float(record["waited"])
    return None


def check_round_trips(proxy_socket: str, calls: int) -> list[float]:
    """Seconds per Health Check through kata-proxy, ``calls`` of them after a warm-up."""
    import grpc
    from katapb import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"unix:{proxy_socket}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.CheckRequest()
        for _ in range(CHECK_WARMUP):
            stub.Check(request, timeout=30)
        times = []
        for _ in range(calls):
            t0 = time.perf_counter()
            stub.Check(request, timeout=30)
            times.append(time.perf_counter() - t0)
    return times


def wait_ready_line(run) -> float:
    """Seconds from `run` to the container's first output (which must be "ready")."""
    at, data = run.reader.next_chunk(run.started + BOOT_DEADLINE)
    if not data.startswith(b"ready"):
        raise DemoError(f"the container's first output is {data[:80]!r}, not 'ready' (exit: see its stderr)")
    return at - run.started


def stdout_rate(run, mib: int) -> float:
    """Ask the container for ``mib`` MiB of stdout; MiB/s from the request to the last byte."""
    want = mib * MiB
    got = 0
    t0 = time.monotonic()
    run.child.proc.stdin.write(f"{mib}\n".encode())
    run.child.proc.stdin.flush()
    deadline = t0 + 60.0 + 20.0 * mib
    while got < want:
        at, data = run.reader.next_chunk(deadline)
        if not data:
            raise DemoError(f"the container's stdout ended after {got} of {want} bytes")
        got += len(data)
    return mib / (at - t0)


def finish(run) -> int:
    """Let the container end (`read x` gets EOF); the exit status of `run`."""
    run.child.proc.stdin.close()
    return run.wait(EXIT_TIMEOUT)


def measure(ws: Workspace, args) -> dict:
    """One boot, every figure (see the module docstring)."""
    ws.image_build(indent="  ")
    report = ws.check()
    verdict = report["kvm"]
    figures = {"accel": verdict["accel"] if args.accel == "auto" else args.accel, "why": verdict["reason"]}
    write_busybox_bundle(ws.bundle, ["sh", "-c", CONTAINER_SCRIPT], hostname="vm-bench")
    cid = f"vmb-{uuid.uuid4().hex[:6]}"
    shim_pid_file = str(ws.dir / "shim.pid")
    run = ws.run(cid, "--pid-file", shim_pid_file, stdin=subprocess.PIPE)
    figures["first_output_s"] = wait_ready_line(run)
    figures["agent_ready_s"] = agent_ready_seconds(ws)
    pids = sandbox_pids(run.vm_dir, shim_pid_file)
    figures["qemu_cpu_s"] = cpu_seconds(pids["qemu"])
    cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    qemu_threads = thread_cpu_seconds(pids["qemu"])
    checks = check_round_trips(os.path.join(run.vm_dir, "proxy.sock"), args.checks)
    calls = args.checks + CHECK_WARMUP
    figures["check_cpu_ms"] = {name: (cpu_seconds(pid) - cpu_before[name]) * 1e3 / calls
                               for name, pid in pids.items()}
    vcpu, rest = split_vcpu(qemu_threads, thread_cpu_seconds(pids["qemu"]))
    figures["check_cpu_ms"]["qemu vcpu"], figures["check_cpu_ms"]["qemu other"] = vcpu * 1e3 / calls, rest * 1e3 / calls
    figures["check_p50_ms"] = statistics.median(checks) * 1e3
    figures["check_p90_ms"] = statistics.quantiles(checks, n=10)[-1] * 1e3
    figures["memory_idle"] = sample_memory(pids)
    figures["stdout_mib_s"] = stdout_rate(run, args.mib)
    figures["memory_after"] = sample_memory(pids)
    figures["exit_status"] = finish(run)
    return figures


# ------------------------------------------------------------------ output


def ratio(value: float | None, anchor: float) -> str:
    return f"{value / anchor:.2f}x" if value is not None else "-"


def mib(kib: int) -> float:
    return kib / 1024


def table(f: dict, args) -> list[str]:
    """The figures beside the Go anchors, as a markdown table."""
    idle, after = f["memory_idle"], f["memory_after"]
    ready = f["agent_ready_s"]
    rows = [
        ("agent ready: QEMU start -> Check answered (s)", f"{ready:.2f}" if ready else "-", GO_AGENT_READY_S,
         ratio(ready, GO_AGENT_READY_S), "<= 1.2x"),
        ("kata-runtime run -> first output (s); QEMU CPU by then (s)",
         f"{f['first_output_s']:.2f}; {f['qemu_cpu_s']:.2f}", "", "", ""),
        (f"Check round trip p50 / p90 (ms, {args.checks} calls)",
         f"{f['check_p50_ms']:.2f} / {f['check_p90_ms']:.2f}", GO_CHECK_MS, ratio(f["check_p50_ms"], GO_CHECK_MS),
         "<= 1.0x"),
        ("CPU per Check: QEMU (the guest) / kata-proxy (ms)",
         f"{f['check_cpu_ms']['qemu']:.2f} / {f['check_cpu_ms'].get('kata-proxy', 0):.2f}", "", "", ""),
        ("CPU per Check in QEMU: the vCPU thread / its other threads (ms)",
         f"{f['check_cpu_ms']['qemu vcpu']:.2f} / {f['check_cpu_ms']['qemu other']:.2f}", "", "", ""),
        (f"container stdout, {args.mib} MiB (MiB/s)", f"{f['stdout_mib_s']:.2f}", GO_STDOUT_MIB_S,
         ratio(f["stdout_mib_s"], GO_STDOUT_MIB_S), ">= 1.0x"),
    ]
    for name, anchor in (("kata-proxy", GO_PROXY_RSS_MIB), ("kata-shim", GO_SHIM_RSS_MIB), ("qemu", None),
                         ("total", None)):
        rss = mib(after[name]["rss"])
        rows.append((f"{name} RSS / PSS / USS after stdout (MiB); RSS idle",
                     f"{rss:.1f} / {mib(after[name]['pss']):.1f} / {mib(after[name]['uss']):.1f}; "
                     f"{mib(idle[name]['rss']):.1f}",
                     anchor or "", ratio(rss, anchor) if anchor else "", ""))
    lines = ["| figure | kata-py | Go anchor | ratio | target |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    lines.append(f"| accel | {f['accel']} | | | |")
    return lines


def result_line(f: dict) -> str:
    after = f["memory_after"]
    parts = {"accel": f["accel"], "agent_ready_s": f"{f['agent_ready_s'] or 0:.2f}",
             "first_output_s": f"{f['first_output_s']:.2f}", "qemu_cpu_s": f"{f['qemu_cpu_s']:.2f}",
             "check_p50_ms": f"{f['check_p50_ms']:.3f}",
             "stdout_mib_s": f"{f['stdout_mib_s']:.3f}", "exit_status": f["exit_status"]}
    for name in ("qemu", "kata-proxy", "kata-shim", "total"):
        key = name.replace("kata-", "")
        parts[f"{key}_rss_kib"] = after[name]["rss"]
        parts[f"{key}_uss_kib"] = after[name]["uss"]
    return "RESULT " + " ".join(f"{k}={v}" for k, v in parts.items())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    terminate_on_sigterm()
    print(f"vm_bench: one sandbox, {args.mib} MiB stdout, {args.checks} Checks; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    figures, ws, left = None, None, []
    try:
        qemu = {} if args.entropy_source is None else {"entropy_source": args.entropy_source}
        if args.kernel_params:
            qemu["kernel_params"] = args.kernel_params
        if args.firmware:
            qemu["firmware"] = args.firmware
        if args.guest_dir:
            qemu.update({key: os.path.join(args.guest_dir, name) for key, name in
                         (("kernel", "vmlinux"), ("initrd", "initrd.img"), ("image", "rootfs.img"))})
        ws = Workspace("kata-vm-bench-", args.cache_dir, accel=args.accel, qemu=qemu)
        figures = measure(ws, args)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    except DemoError as exc:
        print(f"vm_bench failed: {exc}", flush=True)
    finally:
        left = ws.close() if ws is not None else []
    if left:
        print("LEFT BEHIND: " + "; ".join(left), flush=True)
    if figures is None or left:
        return 1
    print("\n".join(table(figures, args)))
    print(f"accel {figures['accel']}: {figures['why']}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(result_line(figures), flush=True)
    return 0 if figures["exit_status"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
