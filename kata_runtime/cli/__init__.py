"""kata-runtime's command line: runc's commands and global flags, plus Kata's.

Each command lives in its own module ``kata_runtime.cli.<name>`` exposing ``command`` (a
click command: flags and a thin action over the library). The group imports a command's
module only when that command runs, so ``kata-runtime state`` never pays for what
``create`` needs (gRPC, protobuf): containerd calls the runtime several times per
container. To add a command, add its module name to :data:`COMMANDS`.

Importing ``kata_runtime.cli.list`` (and ``.exec``) binds those names in this package, so
this module must not call the built-ins ``list`` or ``exec``.

Errors: every failure is one line on stderr (runc's message where callers parse it) and,
with ``--log FILE``, one record in that file (``--log-format json``:
``{"level":"error","msg":...,"time":...}``, what containerd-shim reads); exit status 1.
"""

from __future__ import annotations

import importlib
import os
import sys

import click

from kata_runtime import log as klog
from kata_runtime.errors import KataError

#: Command modules, in the order ``--help`` lists them (runc's, then Kata's).
COMMANDS = [
    "create", "start", "run", "exec", "state", "kill", "delete", "ps", "list",
    "pause", "resume", "update", "events", "env",
    "spec",
    "version",
    "check",
]

DEFAULT_ROOT = "/run/kata-py"
CONFIG_ENV = "KATA_CONF_FILE"


class Globals:
    """runc's global flags (and Kata's --kata-config), handed to every command as ``ctx.obj``."""

    def __init__(self, root: str, log: str | None, log_format: str, debug: bool, systemd_cgroup: bool,
                 kata_config: str | None):
        self.root = os.path.abspath(root)
        self.log = log
        self.log_format = log_format
        self.debug = debug
        self.systemd_cgroup = systemd_cgroup
        self.kata_config = kata_config

    def store(self):
        """The state store under --root."""
        from kata_runtime.state import Store

        return Store(self.root)

    def config(self):
        """The effective configuration.toml (see kata_runtime.config.load)."""
        from kata_runtime.config import load

        return load(self.kata_config)


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


def report_error(message: str) -> None:
    """The one failure line: on stderr, and in the --log file when there is one (runc's fatal())."""
    message = " ".join(str(message).split()) or "unknown error"
    log = klog.current()
    if log.path:
        log.error(message)
    try:
        sys.stderr.write(f"{message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def main(argv=None) -> int:
    """Entry point (setup.cfg's ``kata-runtime``): returns the exit status.

    0 on success; a command's own status where it has one (``run`` and ``exec`` exit with
    the container process's); 1 on any error (usage errors included, as runc).
    """
    argv = sys.argv[1:] if argv is None else [*argv]
    try:
        result = main_group.main(args=argv, prog_name="kata-runtime", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        report_error(exc.format_message())
        return 1
    except click.Abort:
        report_error("aborted")
        return 1
    except KataError as exc:
        report_error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        report_error("interrupted")
        return 130
    except Exception as exc:  # a bug: still one line for the caller, the traceback in a --debug log
        import traceback

        klog.current().debug("internal error", traceback=traceback.format_exc())
        report_error(f"internal error: {type(exc).__name__}: {exc}")
        return 1
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
