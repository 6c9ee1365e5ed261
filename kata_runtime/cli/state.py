"""kata-runtime state ID: runc's state JSON (state files and /proc only: no gRPC).

Usually run by kata_runtime.cli.fast without click; the click command is the same action.
"""

import click

from kata_runtime.cli import Globals
from kata_runtime.cli.fast import print_state


@click.command(help="Print the state of a container (runc's JSON).")
@click.argument("container_id", metavar="ID")
@click.pass_obj
def command(g: Globals, container_id):
    print_state(g, container_id)
