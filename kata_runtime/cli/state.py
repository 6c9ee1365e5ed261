"""kata-runtime state ID: runc's state JSON (state files and /proc only: no gRPC)."""

import json
import sys

import click

from kata_runtime.cli import Globals


@click.command(help="Print the state of a container (runc's JSON).")
@click.argument("container_id", metavar="ID")
@click.pass_obj
def command(g: Globals, container_id):
    from kata_runtime.container import state

    # As runc: json.MarshalIndent(state, "", "  "), no newline after it.
    sys.stdout.write(json.dumps(state(g.store(), container_id), indent=2))
    sys.stdout.flush()
