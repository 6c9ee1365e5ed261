"""kata-runtime start ID: run the created container's process, as runc start."""

import click

from kata_runtime.cli import Globals


@click.command(help="Start a created container's process.")
@click.argument("container_id", metavar="ID")
@click.pass_obj
def command(g: Globals, container_id):
    from kata_runtime import container

    container.start(g.store(), container_id)
