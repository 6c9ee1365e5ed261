"""``state`` and ``list`` without click: the commands containerd calls most, kept cheap.

:func:`parse` accepts only a plain command line: runc's global flags in their usual
spellings, then ``state ID`` or ``list`` with ``--format``/``-f`` and ``--quiet``/``-q``.
Anything else (``--help``, an unknown or repeated flag, a missing or extra argument)
returns None and the command goes through click (kata_runtime.cli.group), which parses
the same flags, so the two paths cannot disagree on what they both accept; the tests run
both on the same command lines.
"""

from __future__ import annotations

import json
import os
import sys

from kata_runtime.cli import CONFIG_ENV, DEFAULT_ROOT, Globals

#: Global flags that take a value -> their key; flags without one.
_VALUE_FLAGS = {"--root": "root", "--log": "log", "--log-format": "log_format", "--kata-config": "kata_config",
                "--criu": None, "--rootless": None}
_BOOL_FLAGS = {"--debug": "debug", "--systemd-cgroup": "systemd_cgroup"}


class Plan:
    """A parsed plain command line: the global flags and one of the fast commands."""

    def __init__(self):
        self.globals = {"root": DEFAULT_ROOT, "log": None, "log_format": "text", "debug": False,
                        "systemd_cgroup": False, "kata_config": os.environ.get(CONFIG_ENV) or None}
        self.command = ""
        self.container_id = ""
        self.fmt = "table"
        self.quiet = False


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
    """A Plan for a plain ``state``/``list`` command line, else None (click handles it)."""
    plan = Plan()
    i = _globals(argv, plan)
    if i is None or i >= len(argv):
        return None
    plan.command, rest = argv[i], argv[i + 1:]
    if plan.command == "state":
        if len(rest) != 1 or rest[0].startswith("-"):
            return None
        plan.container_id = rest[0]
        return plan
    if plan.command == "list":
        return plan if _list_flags(rest, plan) else None
    return None


def _list_flags(rest: list[str], plan: Plan) -> bool:
    i, seen = 0, set()
    while i < len(rest):
        name, value = _split(rest[i])
        if name in ("--quiet", "-q") and value is None and "q" not in seen:
            plan.quiet, _ = True, seen.add("q")
        elif name in ("--format", "-f") and "f" not in seen:
            seen.add("f")
            if value is None:
                i += 1
                if i >= len(rest):
                    return False
                value = rest[i]
            if value not in ("table", "json"):
                return False
            plan.fmt = value
        else:
            return False
        i += 1
    return True


def run(plan: Plan) -> int:
    """Run a parsed fast command, exactly as its click command would."""
    from kata_runtime import log as klog

    g = plan.globals
    klog.configure(g["log"], g["log_format"], g["debug"])
    globals_ = Globals(g["root"], g["log"], g["log_format"], g["debug"], g["systemd_cgroup"], g["kata_config"])
    if plan.command == "state":
        print_state(globals_, plan.container_id)
    else:
        print_list(globals_, plan.fmt, plan.quiet)
    return 0


# ------------------------------------------------------------- the actions


def print_state(g: Globals, container_id: str) -> None:
    """As runc: json.MarshalIndent(state, "", "  "), no newline after it."""
    from kata_runtime.state import Store
    from kata_runtime.status import state

    sys.stdout.write(json.dumps(state(Store(g.root), container_id), indent=2))
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
    from kata_runtime.state import Store
    from kata_runtime.status import list_states

    states = list_states(Store(g.root))
    if quiet:
        out = "".join(s["id"] + "\n" for s in states)
    elif fmt == "json":
        out = json.dumps(states or None, separators=(",", ":")) + "\n"  # runc: a nil slice is null
    else:
        rows = [HEADER] + [(s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], s["owner"])
                           for s in states]
        out = tabwriter(rows)
    sys.stdout.write(out)
    sys.stdout.flush()
