"""kata-runtime ps ID [ps options]: the container's processes, as runc ps."""

import json
import sys

import click

from kata_runtime.cli import Globals


@click.command(help="List the processes of a container (`ps -ef` table, or --format json: their pids).",
               context_settings={"ignore_unknown_options": True})
@click.option("--format", "-f", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.argument("container_id", metavar="ID")
@click.argument("ps_args", nargs=-1, type=click.UNPROCESSED, metavar="[PS OPTIONS]...")
@click.pass_obj
def command(g: Globals, fmt, container_id, ps_args):
    from kata_runtime import container
    from kata_runtime.errors import InvalidArgument

    if fmt == "json" and ps_args:
        raise InvalidArgument("ps options cannot be used with --format json")
    out = container.ps(g.store(), container_id, fmt, list(ps_args))
    if fmt == "json":
        # runc: json.NewEncoder(os.Stdout).Encode(pids) -> compact, one newline
        sys.stdout.write(json.dumps(json.loads(out or b"[]"), separators=(",", ":")) + "\n")
    else:
        sys.stdout.write(out.decode("utf-8", "replace"))
    sys.stdout.flush()
