"""kata-runtime pause ID: freeze every process of the container, as runc pause."""

import click

from kata_runtime.cli import Globals


@click.command(help="Pause (freeze) every process of a running container.")
@click.argument("container_id", metavar="ID")
@click.pass_obj
def command(g: Globals, container_id):
    from kata_runtime import container

    container.pause(g.store(), container_id)
