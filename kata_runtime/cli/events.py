"""kata-runtime events ID [--stats] [--interval 5s]: runc's event JSON lines."""

import re
import sys
import time

import click

from kata_runtime.cli import Globals

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration (``5s``, ``100ms``, ``1m30s``) -> seconds; InvalidArgument if malformed or <= 0."""
    from kata_runtime.errors import InvalidArgument

    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise InvalidArgument(f"invalid --interval {text!r} (a duration such as 5s or 500ms)")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise InvalidArgument("--interval must be greater than 0")
    return seconds


@click.command(help="Print container events as JSON lines: resource statistics every --interval, "
                    "or one with --stats.")
@click.argument("container_id", metavar="ID")
@click.option("--stats", is_flag=True, help="Print one statistics event and exit.")
@click.option("--interval", default="5s", show_default=True, metavar="DURATION", help="Time between statistics.")
@click.pass_obj
def command(g: Globals, container_id, stats, interval):
    from kata_runtime import container
    from kata_runtime.events import event_line
    from kata_runtime.status import state

    period = parse_duration(interval)
    store = g.store()
    while True:
        data = container.stats(store, container_id)
        sys.stdout.write(event_line("stats", container_id, data) + "\n")
        sys.stdout.flush()
        if stats:
            return
        time.sleep(period)
        if state(store, container_id)["status"] == "stopped":
            return
