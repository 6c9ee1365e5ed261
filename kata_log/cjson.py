"""JSON without the ``json`` package, for start paths that pay for every import.

containerd calls ``kata-runtime state`` several times per container: importing ``json`` costs
~11 ms on the host (it imports ``re`` and ``enum`` and compiles its regular expressions), a
third of the whole command, and much more in a TCG guest, where kata-agent's first
CreateContainer writes runc's config.json. This module does the same work with the standard
library's own C codec (CPython's ``_json``: the scanner and string escaper that ``json``
itself runs on), so it costs no import beyond that extension. Here, at the bottom of the
package graph, both kata-runtime and kata-agent use it:

* :func:`loads` equals ``json.loads`` for text: the same values, NaN/Infinity accepted, and a
  ValueError for anything ``json.loads`` refuses (``json``'s own JSONDecodeError where the C
  scanner raises one).
* :func:`dumps` equals ``json.dumps(value, indent=indent, sort_keys=sort_keys,
  separators=...)`` with ``ensure_ascii`` (the default) for dicts with ``str`` keys, lists,
  tuples, ``str``, ``int``, ``float``, ``bool`` and None; anything else is a TypeError.

The tests compare both with ``json`` on generated documents. Where ``_json`` is missing (an
interpreter other than CPython), ``json`` is used.
"""

try:
    import _json
except ImportError:  # pragma: no cover - CPython always has it
    _json = None

_WHITESPACE = " \t\n\r"


class _ScannerContext:
    """The attributes ``_json.make_scanner`` reads: json.JSONDecoder's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # "NaN", "Infinity", "-Infinity": float() reads all three
    memo: dict = {}


_scan = _json.make_scanner(_ScannerContext()) if _json is not None else None


def loads(text: str | bytes):
    """The value of the JSON document ``text`` (bytes are UTF-8, a byte order mark allowed, lone
    surrogates kept, as json.loads reads UTF-8 bytes). Raises ValueError (json's JSONDecodeError
    is one) when it is not exactly one JSON value with optional whitespace."""
    if isinstance(text, (bytes, bytearray)):
        # utf-8-sig without its codec module (an import on `kata-runtime state`'s path)
        text = (text[3:] if text[:3] == b"\xef\xbb\xbf" else text).decode("utf-8", "surrogatepass")
    if _scan is None:  # pragma: no cover
        import json

        return json.loads(text)
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    except SystemError:
        # CPython's _json raises an error inside an object, array or string as
        # json.decoder.JSONDecodeError, which it looks up in sys.modules only: while json.decoder
        # is not loaded, the scanner fails with no exception set (SystemError). Load it (only
        # for a malformed document) and scan again, which raises the real JSONDecodeError.
        import json.decoder  # noqa: F401

        value, end = _scan(text, start)
    if text[end:].strip(_WHITESPACE):
        raise ValueError(f"Extra data: char {end}")
    return value


def _quote_fallback(text: str) -> str:  # pragma: no cover
    from json.encoder import encode_basestring_ascii

    return encode_basestring_ascii(text)


_quote = _json.encode_basestring_ascii if _json is not None else _quote_fallback


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def dumps(value, *, indent: int | None = None, sort_keys: bool = False,
          separators: tuple[str, str] | None = None) -> str:
    """``value`` as JSON text, exactly as ``json.dumps`` with the same arguments (see the module
    docstring for the types). Raises TypeError for another type or a non-str key, ValueError
    for a cycle (as json)."""
    if separators is None:
        separators = (", ", ": ") if indent is None else (",", ": ")
    out: list[str] = []
    _encode(value, out, indent, 0, separators, sort_keys, set())
    return "".join(out)


def _encode(value, out: list[str], indent, level: int, separators, sort_keys: bool, seen: set) -> None:
    if isinstance(value, str):
        out.append(_quote(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, (list, tuple, dict)):
        if id(value) in seen:
            raise ValueError("Circular reference detected")
        seen.add(id(value))
        _encode_container(value, out, indent, level, separators, sort_keys, seen)
        seen.discard(id(value))
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _encode_container(value, out: list[str], indent, level: int, separators, sort_keys: bool, seen: set) -> None:
    is_dict = isinstance(value, dict)
    opening, closing = ("{", "}") if is_dict else ("[", "]")
    if not value:
        out.append(opening + closing)
        return
    item_separator, key_separator = separators
    if indent is not None:
        inner = "\n" + " " * (indent * (level + 1))
        item_separator = item_separator + inner
        out.append(opening + inner)
    else:
        out.append(opening)
    items = value.items() if is_dict else value
    if is_dict and sort_keys:
        items = sorted(items)
    for i, item in enumerate(items):
        if i:
            out.append(item_separator)
        if is_dict:
            key, item = item
            if not isinstance(key, str):
                raise TypeError(f"keys must be str, not {type(key).__name__}")
            out.append(_quote(key) + key_separator)
        _encode(item, out, indent, level + 1, separators, sort_keys, seen)
    if indent is not None:
        out.append("\n" + " " * (indent * level))
    out.append(closing)
