"""kata-runtime create ID --bundle B: create a container (not started), as runc create.

Usually run by kata_runtime.cli.fast without click; the click command is the same action.
"""

import click

from kata_runtime.cli import Globals
from kata_runtime.cli.fast import create


@click.command(help="Create a container (its sandbox, agent, proxy and shim); `start` runs its process.")
@click.argument("container_id", metavar="ID")
@click.option("--bundle", "-b", default=".", show_default=True, metavar="DIR", help="The OCI bundle.")
@click.option("--pid-file", metavar="FILE", help="Write the container process's pid (the shim's) here.")
@click.option("--console-socket", metavar="PATH",
              help="Unix socket that receives the pty master (process.terminal: true).")
@click.option("--no-pivot", is_flag=True, help="Accepted (runc compatibility).")
@click.option("--no-new-keyring", is_flag=True, help="Accepted (runc compatibility).")
@click.option("--preserve-fds", type=int, default=0, hidden=True, help="Accepted; must be 0.")
@click.pass_obj
def command(g: Globals, container_id, bundle, pid_file, console_socket, no_pivot, no_new_keyring, preserve_fds):
    create(g, container_id, bundle, pid_file, console_socket, preserve_fds)
