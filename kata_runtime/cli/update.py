"""kata-runtime update ID: change a container's cgroup limits, as runc update."""

import click

from kata_runtime.cli import Globals, read_json_object


@click.command(help="Update a container's resource limits (--resources FILE|- as OCI JSON, or the flags).")
@click.argument("container_id", metavar="ID")
@click.option("--resources", "-r", metavar="FILE|-", help="linux.resources JSON (- reads stdin); flags ignored.")
@click.option("--memory", metavar="SIZE", help="Memory limit (e.g. 64m, 1g; -1 unlimited).")
@click.option("--memory-reservation", metavar="SIZE", help="Memory soft limit.")
@click.option("--memory-swap", metavar="SIZE", help="Memory plus swap limit.")
@click.option("--cpu-period", type=int, metavar="US", help="CPU CFS period (microseconds).")
@click.option("--cpu-quota", type=int, metavar="US", help="CPU CFS quota (microseconds per period).")
@click.option("--cpu-share", "--cpu-shares", "cpu_shares", type=int, metavar="N", help="CPU shares (relative weight).")
@click.option("--cpuset-cpus", metavar="LIST", help="CPUs allowed (e.g. 0-3,5).")
@click.option("--cpuset-mems", metavar="LIST", help="Memory nodes allowed.")
@click.option("--pids-limit", type=int, metavar="N", help="Maximum number of processes.")
@click.option("--blkio-weight", type=int, metavar="N", help="Block IO weight (10-1000).")
@click.pass_obj
def command(g: Globals, container_id, resources, **flags):
    from kata_runtime import container

    res = read_json_object("--resources", resources, dash_is_stdin=True) if resources else resources_from_flags(**flags)
    container.update(g.store(), container_id, res)


def resources_from_flags(memory, memory_reservation, memory_swap, cpu_period, cpu_quota, cpu_shares,
                         cpuset_cpus, cpuset_mems, pids_limit, blkio_weight) -> dict:
    """runc update's flags -> an OCI linux.resources object (only what was given)."""
    from kata_runtime.signals import parse_bytes

    res: dict = {}
    mem = {k: parse_bytes(v) for k, v in (("limit", memory), ("reservation", memory_reservation),
                                          ("swap", memory_swap)) if v is not None}
    cpu = {k: v for k, v in (("period", cpu_period), ("quota", cpu_quota), ("shares", cpu_shares),
                             ("cpus", cpuset_cpus), ("mems", cpuset_mems)) if v is not None}
    if mem:
        res["memory"] = mem
    if cpu:
        res["cpu"] = cpu
    if pids_limit is not None:
        res["pids"] = {"limit": pids_limit}
    if blkio_weight is not None:
        res["blockIO"] = {"weight": blkio_weight}
    return res
