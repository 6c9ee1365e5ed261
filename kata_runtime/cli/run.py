"""kata-runtime run ID: create + start, attached, exit with the container's status (runc run)."""

import click

from kata_runtime.cli import Globals


@click.command(help="Create and start a container; wait for it and exit with its status (--detach: do not).")
@click.argument("container_id", metavar="ID")
@click.option("--bundle", "-b", default=".", show_default=True, metavar="DIR", help="The OCI bundle.")
@click.option("--pid-file", metavar="FILE", help="Write the container process's pid (the shim's) here.")
@click.option("--console-socket", metavar="PATH", help="Unix socket that receives the pty master.")
@click.option("--detach", "-d", is_flag=True, help="Return once started (the container keeps running).")
@click.option("--keep", is_flag=True, help="Do not delete the container after it exits.")
@click.option("--no-pivot", is_flag=True, help="Accepted (runc compatibility).")
@click.option("--no-new-keyring", is_flag=True, help="Accepted (runc compatibility).")
@click.pass_obj
def command(g: Globals, container_id, bundle, pid_file, console_socket, detach, keep, no_pivot, no_new_keyring):
    from kata_runtime import container, shim

    store = g.store()
    child = container.create(store, g.config(), container_id, bundle, pid_file=pid_file,
                             console_socket=console_socket, detach=detach)
    try:
        container.start(store, container_id)
    except BaseException:
        container.delete(store, container_id, force=True)
        raise
    if detach:
        return 0
    status = shim.wait(child)
    if not keep:
        container.delete(store, container_id, force=True)
    return status
