"""kata-runtime env [--json]: effective configuration and component versions (Kata's kata-env)."""

import json
import sys

import click

from kata_runtime.cli import Globals


@click.command(help="Print the effective configuration and the versions of every component (TOML, or --json).")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of TOML.")
@click.pass_obj
def command(g: Globals, as_json):
    from kata_runtime.env import environment, to_toml

    report = environment(g.config())
    sys.stdout.write(json.dumps(report, indent=2) + "\n" if as_json else to_toml(report) + "\n")
    sys.stdout.flush()
