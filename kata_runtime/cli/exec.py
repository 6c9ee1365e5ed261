"""kata-runtime exec ID COMMAND...: run a new process in a container, as runc exec.

Errors exit with 255, as runc's exec; otherwise the process's own status (attached).
"""

import click

from kata_runtime.cli import Globals, read_json_object


@click.command(name="exec", help="Run a new process in a running container.",
               context_settings={"allow_interspersed_args": False})
@click.argument("container_id", metavar="ID")
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="COMMAND [ARG]...")
@click.option("--process", "-p", "process_file", metavar="FILE", help="The process as OCI JSON (flags ignored).")
@click.option("--detach", "-d", is_flag=True, help="Return once the process started.")
@click.option("--pid-file", metavar="FILE", help="Write the process's pid (its shim's) here.")
@click.option("--console-socket", metavar="PATH", help="Unix socket that receives the pty master.")
@click.option("--tty", "-t", is_flag=True, help="Allocate a terminal.")
@click.option("--cwd", metavar="DIR", help="Working directory in the container.")
@click.option("--env", "-e", multiple=True, metavar="KEY=VALUE", help="Add an environment variable.")
@click.option("--user", "-u", metavar="UID[:GID]", help="Run as this user.")
@click.pass_obj
def command(g: Globals, container_id, args, process_file, detach, pid_file, console_socket, tty, cwd, env, user):
    from kata_runtime import container, shim
    from kata_runtime.errors import KataError

    try:
        process = _process(g, container_id, args, process_file, tty, cwd, env, user)
        child = container.exec_process(g.store(), container_id, process, detach=detach, pid_file=pid_file,
                                       console_socket=console_socket)
    except KataError as e:
        e.exit_code = 255
        if not str(e).startswith("exec failed"):
            e.args = (f"exec failed: {e}",)
        raise
    if detach:
        return 0
    return shim.wait(child)


def _process(g, container_id, args, process_file, tty, cwd, env, user) -> dict:
    from kata_runtime import container
    from kata_runtime.errors import InvalidArgument

    if process_file:
        return read_json_object("--process", process_file)
    if not args:
        raise InvalidArgument("exec needs a command to run (or --process FILE)")
    data = container.container_data(g.store(), container_id)
    return container.exec_process_spec(data, list(args), tty=tty, cwd=cwd, env=list(env), user=user)
