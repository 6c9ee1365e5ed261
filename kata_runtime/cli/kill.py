"""kata-runtime kill ID [SIGNAL] [--all]: signal the container's process, as runc kill.

Usually run by kata_runtime.cli.fast without click; the click command is the same action.
"""

import click

from kata_runtime.cli import Globals
from kata_runtime.cli.fast import kill


@click.command(help="Send a signal (default TERM; a name with or without SIG, or a number) to the container.")
@click.argument("container_id", metavar="ID")
@click.argument("signal", default="SIGTERM", metavar="[SIGNAL]")
@click.option("--all", "-a", "all_processes", is_flag=True, help="Signal every process of the container.")
@click.pass_obj
def command(g: Globals, container_id, signal, all_processes):
    kill(g, container_id, signal, all_processes)
