"""``kata-runtime events``: the agent's cgroup statistics as runc's event JSON lines.

One line per event, as runc's ``events`` (runc/types/events.go)::

    {"type":"stats","id":"c1","data":{"cpu":{...},"memory":{...},"pids":{...},"blkio":{...},"hugetlb":{...}}}

:func:`runc_stats` maps the agent's StatsContainerResponse (CgroupStats, the Kata 1.x
agent's shape) onto runc's ``types.Stats``, with Go's ``omitempty`` rules per field (as
Kata 1.x's runtime did in cli/events.go). runc's cpuset and intel_rdt parts have no
source in the agent API and are left out.
"""

from __future__ import annotations

import json

_BLKIO = (
    ("io_service_bytes_recursive", "ioServiceBytesRecursive"),
    ("io_serviced_recursive", "ioServicedRecursive"),
    ("io_queued_recursive", "ioQueueRecursive"),
    ("io_service_time_recursive", "ioServiceTimeRecursive"),
    ("io_wait_time_recursive", "ioWaitTimeRecursive"),
    ("io_merged_recursive", "ioMergedRecursive"),
    ("io_time_recursive", "ioTimeRecursive"),
    ("sectors_recursive", "sectorsRecursive"),
)


def _nonzero(**fields) -> dict:
    """Go's omitempty: drop zero / empty values."""
    return {k: v for k, v in fields.items() if v}


def _cpu(cpu) -> dict:
    u, t = cpu.cpu_usage, cpu.throttling_data
    usage = _nonzero(total=u.total_usage, percpu=list(u.percpu_usage))
    usage.update(kernel=u.usage_in_kernelmode, user=u.usage_in_usermode)
    return {"usage": usage, "throttling": _nonzero(periods=t.periods, throttledPeriods=t.throttled_periods,
                                                   throttledTime=t.throttled_time)}


def _memory_entry(d) -> dict:
    out = {"limit": d.limit}
    out.update(_nonzero(usage=d.usage, max=d.max_usage))
    out["failcnt"] = d.failcnt
    return out


def _memory(mem) -> dict:
    out = _nonzero(cache=mem.cache)
    out.update(usage=_memory_entry(mem.usage), swap=_memory_entry(mem.swap_usage),
               kernel=_memory_entry(mem.kernel_usage))
    if mem.stats:
        out["raw"] = dict(sorted(mem.stats.items()))
    return out


def _blkio(blkio) -> dict:
    out = {}
    for src, dst in _BLKIO:
        entries = [_nonzero(major=e.major, minor=e.minor, op=e.op, value=e.value) for e in getattr(blkio, src)]
        if entries:
            out[dst] = entries
    return out


def runc_stats(response) -> dict:
    """A StatsContainerResponse -> runc's ``types.Stats`` as a JSON-ready dict."""
    cg = response.cgroup_stats
    out = {
        "cpu": _cpu(cg.cpu_stats),
        "memory": _memory(cg.memory_stats),
        "pids": _nonzero(current=cg.pids_stats.current, limit=cg.pids_stats.limit),
        "blkio": _blkio(cg.blkio_stats),
        "hugetlb": {size: {**_nonzero(usage=h.usage, max=h.max_usage), "failcnt": h.failcnt}
                    for size, h in sorted(cg.hugetlb_stats.items())},
    }
    nets = [{"name": n.name, "rx_bytes": n.rx_bytes, "rx_packets": n.rx_packets, "rx_errors": n.rx_errors,
             "rx_dropped": n.rx_dropped, "tx_bytes": n.tx_bytes, "tx_packets": n.tx_packets,
             "tx_errors": n.tx_errors, "tx_dropped": n.tx_dropped} for n in response.network_stats]
    out["network_interfaces"] = nets or None
    return out


def event_line(kind: str, container_id: str, data: dict | None = None) -> str:
    """One runc event line (no newline): ``{"type":...,"id":...,"data":...}`` (data omitted when empty)."""
    event = {"type": kind, "id": container_id}
    if data:
        event["data"] = data
    return json.dumps(event, separators=(",", ":"))
