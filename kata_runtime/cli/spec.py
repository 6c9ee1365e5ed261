"""`kata-runtime spec [--bundle DIR] [--rootless]`: write runc's default config.json.

Byte-identical to the host's `runc spec` (see kata_runtime.default_spec); never
overwrites an existing config.json ("File config.json exists. Remove it first",
runc's message, exit 1).
"""

from __future__ import annotations

import click


@click.command("spec", short_help="create a new specification file",
               help="Create a new specification file named config.json for the bundle "
                    "(runc's default spec; edit process.args before running it).")
@click.option("--bundle", "-b", default="", metavar="DIR",
              help="path to the root of the bundle directory (default: the current directory)")
@click.option("--rootless", is_flag=True,
              help="generate a configuration for a rootless container")
def command(bundle: str, rootless: bool) -> None:
    from kata_runtime.default_spec import write_spec
    from kata_runtime.errors import KataError

    try:
        write_spec(bundle or None, rootless=rootless)
    except OSError as err:
        raise KataError(str(err) if err.filename is None else f"{err.filename}: {err.strerror}") from None
