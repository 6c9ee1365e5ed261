"""kata-runtime kill ID [SIGNAL] [--all]: signal the container's process, as runc kill."""

import click

from kata_runtime.cli import Globals


@click.command(help="Send a signal (default TERM; a name with or without SIG, or a number) to the container.")
@click.argument("container_id", metavar="ID")
@click.argument("signal", default="SIGTERM", metavar="[SIGNAL]")
@click.option("--all", "-a", "all_processes", is_flag=True, help="Signal every process of the container.")
@click.pass_obj
def command(g: Globals, container_id, signal, all_processes):
    from kata_runtime import container
    from kata_runtime.signals import parse_signal

    container.kill(g.store(), container_id, parse_signal(signal), all_processes)
