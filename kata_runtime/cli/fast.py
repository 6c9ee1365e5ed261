"""The commands a caller runs for every container, without click: create, start, state, kill,
delete, and list.

containerd calls the runtime several times per container; importing click costs more
than some of these commands' own work. :func:`parse` accepts only a plain command line:
runc's global flags in their usual spellings, then one of these commands with its
flags spelt ``--name value``, ``--name=value`` or ``-n value`` (no clusters, no ``--``,
each flag at most once) and its arguments. Anything else (``--help``, an unknown or
repeated flag, a value that looks like a flag, a missing or extra argument) returns None
and the command goes through click (kata_runtime.cli.group), which parses the same
flags, so the two paths cannot disagree on what they both accept; the tests run both
on the same command lines.

Each command's action is a function here (named after it); its click command in
``kata_runtime.cli.<name>`` calls the same function, so both paths do the same work.
"""

import os
import sys

from kata_runtime.cli import CONFIG_ENV, DEFAULT_ROOT, Globals

#: Global flags that take a value -> their key; flags without one.
_VALUE_FLAGS = {"--root": "root", "--log": "log", "--log-format": "log_format", "--kata-config": "kata_config",
                "--criu": None, "--rootless": None}
_BOOL_FLAGS = {"--debug": "debug", "--systemd-cgroup": "systemd_cgroup"}


class Spec:
    """What one command accepts: positional arguments (``optional`` of them may be left out, at
    the end), and flags: spelling -> (key, takes a value)."""

    def __init__(self, positional: tuple[str, ...], flags: dict | None = None, optional: int = 0,
                 defaults: dict | None = None):
        self.positional = positional
        self.flags = flags or {}
        self.optional = optional
        self.defaults = defaults or {}


def _flag(key: str, *spellings: str, value: bool = False) -> dict:
    return {s: (key, value) for s in spellings}


#: The fast commands (the same flags as their click commands, with the same defaults).
COMMANDS = {
    "state": Spec(("container_id",)),
    "list": Spec((), {**_flag("fmt", "--format", "-f", value=True), **_flag("quiet", "--quiet", "-q")},
                 defaults={"fmt": "table", "quiet": False}),
    "start": Spec(("container_id",)),
    "delete": Spec(("container_id",), _flag("force", "--force", "-f"), defaults={"force": False}),
    "kill": Spec(("container_id", "signal"), _flag("all_processes", "--all", "-a"), optional=1,
                 defaults={"signal": "SIGTERM", "all_processes": False}),
    "create": Spec(("container_id",), {
        **_flag("bundle", "--bundle", "-b", value=True), **_flag("pid_file", "--pid-file", value=True),
        **_flag("console_socket", "--console-socket", value=True), **_flag("no_pivot", "--no-pivot"),
        **_flag("no_new_keyring", "--no-new-keyring"), **_flag("preserve_fds", "--preserve-fds", value=True)},
        defaults={"bundle": ".", "pid_file": None, "console_socket": None, "no_pivot": False,
                  "no_new_keyring": False, "preserve_fds": "0"}),
}
#: Values a flag must have for the fast path (others are click's to refuse or convert).
_VALID = {"fmt": lambda v: v in ("table", "json"), "preserve_fds": lambda v: v.isascii() and v.isdigit()}


class Plan:
    """A parsed plain command line: the global flags, the command and its arguments."""

    def __init__(self):
        self.globals = {"root": DEFAULT_ROOT, "log": None, "log_format": "text", "debug": False,
                        "systemd_cgroup": False, "kata_config": os.environ.get(CONFIG_ENV) or None}
        self.command = ""
        self.args: dict = {}

    @property
    def container_id(self) -> str:
        return self.args.get("container_id", "")

    @property
    def fmt(self) -> str:
        return self.args.get("fmt", "table")


def _split(arg: str) -> tuple[str, str | None]:
    name, eq, value = arg.partition("=")
    return (name, value) if eq else (arg, None)


def _globals(argv: list[str], plan: Plan) -> int | None:
    """Consume the global flags; the index of the command, or None if not plain."""
    i, seen = 0, set()
    while i < len(argv) and argv[i].startswith("-"):
        name, value = _split(argv[i])
        if name in seen:
            return None
        seen.add(name)
        if name in _BOOL_FLAGS and value is None:
            plan.globals[_BOOL_FLAGS[name]] = True
        elif name in _VALUE_FLAGS:
            if value is None:
                i += 1
                if i >= len(argv):
                    return None
                value = argv[i]
            if _VALUE_FLAGS[name]:
                plan.globals[_VALUE_FLAGS[name]] = value
        else:
            return None
        i += 1
    if plan.globals["log_format"] not in ("text", "json"):
        return None
    return i


def parse(argv: list[str]) -> Plan | None:
    """A Plan for a plain command line of one of :data:`COMMANDS`, else None (click handles it)."""
    plan = Plan()
    i = _globals(argv, plan)
    if i is None or i >= len(argv) or argv[i] not in COMMANDS:
        return None
    plan.command = argv[i]
    args = _command_args(COMMANDS[plan.command], argv[i + 1:])
    if args is None:
        return None
    plan.args = args
    return plan


def _command_args(spec: Spec, rest: list[str]) -> dict | None:
    """The command's flags and arguments (defaults filled in), or None if the line is not plain."""
    args, positional, i = dict(spec.defaults), [], 0
    seen: set[str] = set()
    while i < len(rest):
        arg = rest[i]
        i += 1
        if not arg.startswith("-"):
            positional.append(arg)
            continue
        name, value = _split(arg)
        if name not in spec.flags:
            return None
        key, takes_value = spec.flags[name]
        if key in seen or (value is not None and not takes_value):
            return None
        seen.add(key)
        if takes_value and value is None:
            if i >= len(rest) or rest[i].startswith("-"):
                return None
            value, i = rest[i], i + 1
        if takes_value and not _VALID.get(key, lambda v: True)(value):
            return None
        args[key] = value if takes_value else True
    if not len(spec.positional) - spec.optional <= len(positional) <= len(spec.positional):
        return None
    args.update(zip(spec.positional, positional))
    return args


def run(plan: Plan) -> int:
    """Run a parsed fast command, exactly as its click command would."""
    from kata_runtime import log as klog

    g = plan.globals
    klog.configure(g["log"], g["log_format"], g["debug"])
    globals_ = Globals(g["root"], g["log"], g["log_format"], g["debug"], g["systemd_cgroup"], g["kata_config"])
    a = plan.args
    if plan.command == "state":
        print_state(globals_, a["container_id"])
    elif plan.command == "list":
        print_list(globals_, a["fmt"], a["quiet"])
    elif plan.command == "start":
        start(globals_, a["container_id"])
    elif plan.command == "delete":
        delete(globals_, a["container_id"], a["force"])
    elif plan.command == "kill":
        kill(globals_, a["container_id"], a["signal"], a["all_processes"])
    else:
        create(globals_, a["container_id"], a["bundle"], a["pid_file"], a["console_socket"], int(a["preserve_fds"]))
    return 0


# ------------------------------------------------------------- the actions


def create(g: Globals, container_id: str, bundle: str, pid_file: str | None, console_socket: str | None,
           preserve_fds: int) -> None:
    """``create``: the container, its sandbox and its shim (kata_runtime.container.create)."""
    from kata_runtime import container
    from kata_runtime.errors import InvalidArgument

    if preserve_fds:
        raise InvalidArgument("--preserve-fds is not supported: file descriptors cannot cross into the sandbox")
    container.create(g.store(), g.config(), container_id, bundle, pid_file=pid_file,
                     console_socket=console_socket, detach=True)


def start(g: Globals, container_id: str) -> None:
    """``start``: StartContainer."""
    from kata_runtime import container

    container.start(g.store(), container_id)


def kill(g: Globals, container_id: str, signal: str, all_processes: bool) -> None:
    """``kill``: SignalProcess with runc's signal spellings."""
    from kata_runtime import container
    from kata_runtime.signals import parse_signal

    container.kill(g.store(), container_id, parse_signal(signal), all_processes)


def delete(g: Globals, container_id: str, force: bool) -> None:
    """``delete [--force]`` (the process sandbox stops without asyncio; a VM's driver imports it
    when it stops the guest)."""
    from kata_runtime import container

    container.delete(g.store(), container_id, force=force)


def print_state(g: Globals, container_id: str) -> None:
    """As runc: json.MarshalIndent(state, "", "  "), no newline after it."""
    from kata_log import cjson
    from kata_runtime.state import Store
    from kata_runtime.status import state

    sys.stdout.write(cjson.dumps(state(Store(g.root), container_id), indent=2))
    sys.stdout.flush()


HEADER = ("ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER")


def tabwriter(rows, minwidth: int = 12, padding: int = 3) -> str:
    """Go's text/tabwriter as runc's list uses it (minwidth 12, tabwidth 1, padding 3, spaces):
    every cell but a line's last is padded to its column's width (widest cell + padding, at
    least minwidth)."""
    widths = [max(minwidth, max(len(row[i]) for row in rows) + padding) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1] + "\n")
    return "".join(lines)


def print_list(g: Globals, fmt: str, quiet: bool) -> None:
    """runc's list output: ids (quiet), a JSON array (null when empty) or the table."""
    from kata_log import cjson
    from kata_runtime.state import Store
    from kata_runtime.status import list_states

    states = list_states(Store(g.root))
    if quiet:
        out = "".join(s["id"] + "\n" for s in states)
    elif fmt == "json":
        out = cjson.dumps(states or None, separators=(",", ":")) + "\n"  # runc: a nil slice is null
    else:
        rows = [HEADER] + [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"])
                           for s in states]
        out = tabwriter(rows)
    sys.stdout.write(out)
    sys.stdout.flush()
