"""kata-runtime's command line: runc's commands and global flags, plus Kata's.

Each command lives in its own module ``kata_runtime.cli.<name>`` exposing ``command`` (a
click command: flags and a thin action over the library). The group imports a command's
module only when that command runs, so ``kata-runtime state`` never pays for what
``create`` needs (gRPC, protobuf): containerd calls the runtime several times per
container. To add a command, add its module name to :data:`COMMANDS`.

The click group and its global flags are in ``group.py``. The commands a caller runs for
every container (``create``, ``start``, ``state``, ``kill``, ``delete``) and ``list`` are
first offered to ``fast.py``, which runs them without importing click when the command
line is plain; anything else goes to click.

Importing ``kata_runtime.cli.list`` (and ``.exec``) binds those names in this package, so
this module must not call the built-ins ``list`` or ``exec``.

Errors: every failure is one line on stderr (runc's message where callers parse it) and,
with ``--log FILE``, one record in that file (``--log-format json``:
``{"level":"error","msg":...,"time":...}``, what containerd-shim reads); exit status 1.
"""

import gc
import os
import sys

from kata_runtime import log as klog
from kata_runtime.errors import KataError

#: Command modules, in the order ``--help`` lists them (runc's, then Kata's).
COMMANDS = [
    "create", "start", "run", "exec", "state", "kill", "delete", "ps", "list",
    "pause", "resume", "update", "events", "env",
    "spec",
    "version",
    "check",
    "image",
    "factory",
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
        """The effective configuration.toml (see kata_runtime.config.load; its parsed document
        cached under --root)."""
        from kata_runtime.config import load

        return load(self.kata_config, cache_dir=self.root)


def read_json_object(flag: str, source: str, *, dash_is_stdin: bool = False) -> dict:
    """The JSON object in file ``source`` (stdin for "-" when ``dash_is_stdin``) given with ``flag``
    (``--process``, ``--resources``); InvalidArgument naming both when it is unreadable or not an object."""
    import json

    from kata_runtime.errors import InvalidArgument

    try:
        if dash_is_stdin and source == "-":
            data = json.load(sys.stdin)
        else:
            with open(source) as f:
                data = json.load(f)
    except (OSError, ValueError) as e:
        raise InvalidArgument(f"{flag} {source}: {getattr(e, 'strerror', None) or e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"{flag} {source}: not a JSON object")
    return data


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

    Run as the program (``argv`` None: the kata-runtime script, ``python -m kata_runtime``),
    a command of the fast path ends the process itself once stdout and stderr are flushed
    (:func:`exit_now`): what it made is written and closed, and the interpreter's teardown
    of the modules it loaded (asyncio, protobuf) would add 20-30 ms to every create.
    """
    as_program = argv is None
    argv = sys.argv[1:] if argv is None else [*argv]
    from kata_runtime.cli import fast

    plan = fast.parse(argv)
    if plan is None:
        return _guarded(_click_main, argv)
    code = _guarded(_without_cycle_collector, fast.run, plan)
    if as_program:
        exit_now(code)
    return code


def _guarded(fn, *args) -> int:
    """``fn(*args)``, an exit status; a failure is reported (one line, report_error) as its status."""
    try:
        return fn(*args)
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


def exit_now(code: int) -> None:
    """End the process with ``code`` now: stdout and stderr flushed, no interpreter teardown
    (no atexit handlers, no module clean-up; the runtime's log is written unbuffered)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _without_cycle_collector(fn, *args):
    """``fn(*args)`` with the cycle collector off: a short command makes many objects (imports)
    and no garbage, so collecting would only cost time. On again afterwards (tests call main())."""
    gc.disable()
    try:
        return fn(*args)
    finally:
        gc.enable()


def _click_main(argv: list[str]) -> int:
    import click

    from kata_runtime.cli.group import main_group

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
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
