"""kata-runtime delete [--force] ID: remove a container (and its sandbox), as runc delete."""

import click

from kata_runtime.cli import Globals


@click.command(help="Delete a stopped container (--force: also a running or half-created one).")
@click.argument("container_id", metavar="ID")
@click.option("--force", "-f", is_flag=True, help="Kill and delete a running container too.")
@click.pass_obj
def command(g: Globals, container_id, force):
    from kata_runtime import container

    container.delete(g.store(), container_id, force=force)
