"""kata-runtime delete [--force] ID: remove a container (and its sandbox), as runc delete.

Usually run by kata_runtime.cli.fast without click; the click command is the same action.
"""

import click

from kata_runtime.cli import Globals
from kata_runtime.cli.fast import delete


@click.command(help="Delete a stopped container (--force: also a running or half-created one).")
@click.argument("container_id", metavar="ID")
@click.option("--force", "-f", is_flag=True, help="Kill and delete a running container too.")
@click.pass_obj
def command(g: Globals, container_id, force):
    delete(g, container_id, force)
