"""The click group of kata-runtime: runc's global flags, Kata's --kata-config, lazy commands."""

from __future__ import annotations

import importlib

import click

from kata_runtime import log as klog
from kata_runtime.cli import COMMANDS, CONFIG_ENV, DEFAULT_ROOT, Globals


class LazyGroup(click.Group):
    """A group whose commands are imported on first use from ``kata_runtime.cli.<name>``."""

    def list_commands(self, ctx):
        return [*COMMANDS]

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"kata_runtime.cli.{name}")
        return module.command

    def format_commands(self, ctx, formatter):
        # Listing help for every command would import them all; show names with one line each.
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=70)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def _print_version(ctx, param, value):
    # click calls an eager option's callback for every command: import version.py only when asked.
    if value:
        importlib.import_module("kata_runtime.cli.version").print_version(ctx, param, value)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]},
             help="kata-runtime: run OCI containers in Kata sandboxes (runc-compatible command line).")
@click.option("--version", "-v", is_flag=True, expose_value=False, is_eager=True, help="Print the version and exit (same as the version command).", callback=_print_version)
@click.option("--root", default=DEFAULT_ROOT, show_default=True, metavar="DIR",
              help="Directory for the state of containers and sandboxes.")
@click.option("--log", "log_path", metavar="FILE", help="Append the log to FILE (default: stderr).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="Format of the --log records.")
@click.option("--debug", is_flag=True, help="Log debug records too.")
@click.option("--systemd-cgroup", is_flag=True, help="Accepted for runc compatibility (cgroups live in the sandbox).")
@click.option("--criu", metavar="PATH", hidden=True, help="Accepted and ignored (runc compatibility).")
@click.option("--rootless", metavar="BOOL", hidden=True, help="Accepted and ignored (runc compatibility).")
@click.option("--kata-config", envvar=CONFIG_ENV, metavar="FILE",
              help=f"configuration.toml to use (also ${CONFIG_ENV}).")
@click.pass_context
def main_group(ctx, root, log_path, log_format, debug, systemd_cgroup, criu, rootless, kata_config):
    klog.configure(log_path, log_format, debug)
    ctx.obj = Globals(root, log_path, log_format, debug, systemd_cgroup, kata_config)


