"""kata-runtime resume ID: thaw a paused container, as runc resume."""

import click

from kata_runtime.cli import Globals


@click.command(help="Resume a paused container.")
@click.argument("container_id", metavar="ID")
@click.pass_obj
def command(g: Globals, container_id):
    from kata_runtime import container

    container.resume(g.store(), container_id)
