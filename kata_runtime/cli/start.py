"""kata-runtime start ID: run the created container's process, as runc start.

Usually run by kata_runtime.cli.fast without click; the click command is the same action.
"""

import click

from kata_runtime.cli import Globals
from kata_runtime.cli.fast import start


@click.command(help="Start a created container's process.")
@click.argument("container_id", metavar="ID")
@click.pass_obj
def command(g: Globals, container_id):
    start(g, container_id)
