"""configuration.toml: which hypervisor driver, and how the proxy, shim and agent run.

Where it is read from (the first that exists, as Kata 1.x):

1. ``--kata-config FILE`` or ``$KATA_CONF_FILE`` (must exist);
2. /etc/kata-containers/configuration.toml;
3. /usr/share/defaults/kata-containers/configuration.toml;
4. the packaged default, ``kata_runtime/configuration.toml`` (every key commented out,
   with its default and what it does).

Sections and keys use Kata 1.x names (see :data:`SCHEMA`); a key left out takes its
default. An unknown section or key, or a bad value, is a :class:`ConfigError` whose one
line names the file and the key (``/etc/...toml: [hypervisor.qemu] accel: must be one of
auto, kvm, tcg (got 'xen')``).

    config = load(path_or_None)
    config.hypervisor            # "process" (the driver, [runtime] hypervisor)
    config.section("proxy.kata") # {"path": "", "debug": False}

With a ``cache_dir`` (kata-runtime's --root), the parsed documents of the files read last
are kept there as JSON (:data:`CACHE_FILE`), each with the exact text it was parsed from: a
command that reads a file whose text is unchanged skips the TOML parser, whose import alone
(tomllib: re, string, typing, datetime) costs ~15 ms, and containerd runs a create, a
start, a kill and a delete for every container. The file is read and compared whole every
time (a few KB), so no rewrite can look unchanged, whatever the filesystem's timestamps;
the checks of :func:`parse` run every time.
"""

from __future__ import annotations

import os

from kata_runtime.errors import KataError

SEARCH_PATHS = (
    "/etc/kata-containers/configuration.toml",
    "/usr/share/defaults/kata-containers/configuration.toml",
)
PACKAGED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configuration.toml")


class ConfigError(KataError):
    """configuration.toml cannot be used; the message names the file and the key."""


# --------------------------------------------------------------- value checks
# Each check returns the value to use or raises ValueError with what is wrong.


def _string(value):
    if not isinstance(value, str):
        raise ValueError(f"must be a string (got {value!r})")
    return value


def _path(value):
    value = _string(value)
    if value and not value.startswith("/"):
        raise ValueError(f"must be an absolute path (got {value!r})")
    return value


def _bool(value):
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false (got {value!r})")
    return value


def _int_at_least(low: int):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"must be an integer >= {low} (got {value!r})")
        return value
    return check


def _seconds(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"must be a number of seconds > 0 (got {value!r})")
    return float(value)


def _false_only(what: str):
    def check(value):
        if _bool(value):
            raise ValueError(f"{what} is not supported by kata-py (got true)")
        return value
    return check


def _one_of(*choices: str):
    def check(value):
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)} (got {value!r})")
        return value
    return check


HYPERVISORS = ("process", "qemu")

#: section -> key -> (default, check). Kata 1.x names where Kata had the setting.
SCHEMA: dict[str, dict[str, tuple]] = {
    "hypervisor.qemu": {
        "path": ("/usr/bin/qemu-system-x86_64", _path),
        "kernel": ("", _path),
        "initrd": ("", _path),
        "image": ("", _path),
        "machine_type": ("pc", _string),
        "default_vcpus": (1, _int_at_least(1)),
        "default_memory": (2048, _int_at_least(64)),
        "kernel_params": ("", _string),
        "accel": ("auto", _one_of("auto", "kvm", "tcg")),
        "boot_timeout": (120.0, _seconds),
        "entropy_source": ("/dev/urandom", _path),
        "firmware": ("", _path),
        "image_cache_dir": ("/var/cache/kata-py/images", _path),
        "shared_fs": ("virtio-9p", _one_of("virtio-9p")),
        "enable_debug": (False, _bool),
    },
    "hypervisor.process": {
        "path": ("", _path),
        "unshare": ("unshare", _string),
        "ready_timeout": (60.0, _seconds),
    },
    "proxy.kata": {
        "path": ("", _path),
        "debug": (False, _bool),
    },
    "shim.kata": {
        "path": ("", _path),
        "debug": (False, _bool),
    },
    "agent.kata": {
        "enable_debug": (False, _bool),
    },
    "runtime": {
        "enable_debug": (False, _bool),
        "hypervisor": ("process", _one_of(*HYPERVISORS)),
        "internetworking_model": ("tcfilter", _one_of("tcfilter", "none")),
    },
    "factory": {
        # Kata 1.x's VM templating; kata-py has the VM cache (vm_cache_number) instead.
        "enable_template": (False, _false_only("VM templating (use vm_cache_number)")),
        "vm_cache_number": (0, _int_at_least(0)),
        "vm_cache_endpoint": ("/var/run/kata-containers/cache.sock", _path),
    },
}

#: Top-level tables that hold sub-sections ([hypervisor.qemu] is {"hypervisor": {"qemu": ...}}).
_NESTED = {"hypervisor", "proxy", "shim", "agent"}


class Config:
    """The effective configuration: every key of :data:`SCHEMA`, defaults filled in."""

    def __init__(self, values: dict[str, dict], path: str):
        self.values = values
        self.path = path

    def section(self, name: str) -> dict:
        """A copy of one section's values, e.g. ``section("shim.kata")``."""
        return dict(self.values[name])

    @property
    def hypervisor(self) -> str:
        """The hypervisor driver ([runtime] hypervisor)."""
        return self.values["runtime"]["hypervisor"]

    @property
    def hypervisor_section(self) -> dict:
        """The selected driver's section ([hypervisor.<driver>])."""
        return self.section(f"hypervisor.{self.hypervisor}")

    @property
    def vm_cache_endpoint(self) -> str | None:
        """[factory] vm_cache_endpoint when the VM cache is on (vm_cache_number > 0), else None."""
        factory = self.values["factory"]
        return factory["vm_cache_endpoint"] if factory["vm_cache_number"] > 0 else None

    @property
    def debug(self) -> bool:
        """[runtime] enable_debug: debug records in the runtime's --log."""
        return self.values["runtime"]["enable_debug"]

    def to_toml(self) -> str:
        """The effective configuration as TOML (what ``kata-runtime env`` prints)."""
        return dump_toml(self.values)


def find(explicit: str | None) -> str:
    """The file to read: ``explicit`` (must exist), else the first of the search paths, else the packaged one."""
    if explicit:
        if not os.path.isfile(explicit):
            raise ConfigError(f"{explicit}: configuration file does not exist")
        return os.path.abspath(explicit)
    for path in SEARCH_PATHS:
        if os.path.isfile(path):
            return path
    return PACKAGED


#: The parsed-document cache's file name in ``load``'s ``cache_dir``.
CACHE_FILE = "configuration.cache.json"
#: How many configuration files' documents it keeps (the ones read last).
CACHE_ENTRIES = 8


def load(explicit: str | None = None, cache_dir: str | None = None) -> Config:
    """Read and check the configuration (see the module docstring); ``cache_dir``: where the
    parsed document may be cached (made if missing; None: no cache). Raises ConfigError."""
    path = find(explicit)
    text = _read_text(path)
    cache = os.path.join(cache_dir, CACHE_FILE) if cache_dir else None
    entries = _cache_entries(cache) if cache else {}
    data = _cached_document(entries, path, text)
    if data is None:
        data = _parse_toml(text, path)
        if cache:
            _cache_document(cache, entries, path, text, data)
    return Config(parse(data, path), path)


def _read_text(path: str) -> str:
    """The file's text (TOML is UTF-8). Raises ConfigError."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _parse_toml(text: str, path: str) -> dict:
    import tomllib

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _cache_entries(cache: str) -> dict:
    """The cache's entries, ``{config path: {"text": the file's text, "document": ...}}``
    ({} when there is no cache or it is unreadable)."""
    from kata_log import cjson

    try:
        with open(cache, "rb") as f:
            entries = cjson.loads(f.read())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _cached_document(entries: dict, path: str, text: str) -> dict | None:
    """The document cached for ``path`` when it was parsed from exactly the ``text`` the file
    holds now (a whole-text compare: no timestamp can make a rewrite look unchanged), else None."""
    entry = entries.get(path)
    if not isinstance(entry, dict) or not isinstance(entry.get("document"), dict):
        return None
    return entry["document"] if entry.get("text") == text else None


def _cache_document(cache: str, entries: dict, path: str, text: str, data: dict) -> None:
    """Keep ``data`` as the document of ``path``'s ``text``, beside the entries of the
    other files read last (at most :data:`CACHE_ENTRIES`). Best effort: a document JSON cannot
    hold (a TOML date), or a directory that cannot be made or written, is not cached; two
    commands writing at once each replace the file whole (write + rename), and an entry one of
    them dropped is parsed again next time. The directory is made (0700) if missing, as runc
    makes its --root."""
    from kata_log import cjson
    from kata_runtime.state import write_atomic

    kept = {k: v for k, v in entries.items() if k != path}
    kept = dict(list(kept.items())[-(CACHE_ENTRIES - 1):]) if CACHE_ENTRIES > 1 else {}
    kept[path] = {"text": text, "document": data}
    try:
        os.makedirs(os.path.dirname(cache), mode=0o700, exist_ok=True)
        write_atomic(cache, cjson.dumps(kept))
    except (OSError, TypeError, ValueError):
        pass


def parse(data: dict, path: str) -> dict[str, dict]:
    """Check a parsed TOML document against :data:`SCHEMA`; returns every section with defaults."""
    values = {name: {key: default for key, (default, _) in keys.items()} for name, keys in SCHEMA.items()}
    for name, table in _sections(data, path):
        schema = SCHEMA.get(name)
        if schema is None:
            raise ConfigError(f"{path}: unknown section [{name}] (known: {', '.join(SCHEMA)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table")
        for key, value in table.items():
            if key not in schema:
                raise ConfigError(f"{path}: [{name}] {key}: unknown key (known: {', '.join(schema)})")
            try:
                values[name][key] = schema[key][1](value)
            except ValueError as e:
                raise ConfigError(f"{path}: [{name}] {key}: {e}") from None
    return values


def _sections(data: dict, path: str):
    for top, value in data.items():
        if top in _NESTED and isinstance(value, dict):
            for sub, table in value.items():
                yield f"{top}.{sub}", table
        elif isinstance(value, dict):
            yield top, value
        else:
            raise ConfigError(f"{path}: {top}: a key outside any section (known sections: {', '.join(SCHEMA)})")


# ------------------------------------------------------------------ TOML out


def toml_value(value) -> str:
    """One TOML value (strings, bools, numbers, lists of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if value is None:
        return '""'
    import json

    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def dump_toml(sections: dict[str, dict]) -> str:
    """``{"a.b": {"k": v}}`` -> ``[a.b]\\nk = v\\n`` blocks separated by blank lines."""
    blocks = []
    for name, table in sections.items():
        lines = [f"[{name}]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"
