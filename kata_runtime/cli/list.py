"""kata-runtime list: every container under --root, runc's table, JSON or ids (no gRPC)."""

import json
import sys

import click

from kata_runtime.cli import Globals

HEADER = ("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")


def tabwriter(rows, minwidth: int = 12, padding: int = 3) -> str:
    """Go's text/tabwriter as runc's list uses it (minwidth 12, tabwidth 1, padding 3, spaces):
    every cell but a line's last is padded to its column's width (widest cell + padding, at
    least minwidth)."""
    widths = [max(minwidth, max(len(row[i]) for row in rows) + padding) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1] + "\n")
    return "".join(lines)


@click.command(name="list", help="List the containers (runc's table, --format json, or --quiet ids).")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Only the container ids.")
@click.pass_obj
def command(g: Globals, fmt, quiet):
    from kata_runtime.container import list_states

    states = list_states(g.store())
    if quiet:
        out = "".join(s["id"] + "\n" for s in states)
    elif fmt == "json":
        out = json.dumps(states or None, separators=(",", ":")) + "\n"  # runc: a nil slice is null
    else:
        rows = [HEADER] + [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"])
                           for s in states]
        out = tabwriter(rows)
    sys.stdout.write(out)
    sys.stdout.flush()
