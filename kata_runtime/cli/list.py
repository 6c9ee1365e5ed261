"""kata-runtime list: every container under --root, runc's table, JSON or ids (no gRPC).

Usually run by kata_runtime.cli.fast without click; the click command is the same action.
"""

import click

from kata_runtime.cli import Globals
from kata_runtime.cli.fast import HEADER, print_list, tabwriter  # noqa: F401


@click.command(name="list", help="List the containers (runc's table, --format json, or --quiet ids).")
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--quiet", "-q", is_flag=True, help="Only the container ids.")
@click.pass_obj
def command(g: Globals, fmt, quiet):
    print_list(g, fmt, quiet)
