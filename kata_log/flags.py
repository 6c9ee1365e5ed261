"""The command-line vocabulary kata-proxy and kata-shim share with their Go originals.

Flags, as Go's ``flag`` package reads them (``flag.FlagSet.parseOne``, which both Go programs
use; it takes one dash or two)::

    -name value   -name=value   --name value   --name=value   -bool   -bool=false

* one or two dashes, the same flag; ``--`` ends the flags, and so does the first argument that
  is not one (``-`` alone is not one);
* a flag that takes a value takes ``=value`` or else the next argument, whatever it looks like;
  any other flag never takes the next argument (``-terminal false`` leaves ``false`` over);
* booleans: strconv.ParseBool's words (:func:`parse_bool`).

Addresses: ``-agent``, ``-listen-socket``, ``-mux-socket`` and ``-agent-logs-socket`` name a unix
socket the way the Go components read it, with url.Parse and ``Host + Path`` (kata-proxy's
unixAddr, the agent client's parse used by kata-shim): see :func:`unix_socket_path`.

Errors are :class:`FlagError`, one line each, worded as Go's flag package words them.  Standard
library only, no ``re``: kata-shim imports this module on every start.
"""


__all__ = ["FlagError", "Flag", "GoFlags", "parse_bool", "unix_socket_path"]

#: strconv.ParseBool's words
TRUE = ("1", "t", "T", "TRUE", "true", "True")
FALSE = ("0", "f", "F", "FALSE", "false", "False")

_SCHEME_FIRST = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SCHEME_REST = _SCHEME_FIRST + "0123456789+-."
_HEX = "0123456789abcdefABCDEF"


class FlagError(ValueError):
    """A bad command line; the message is one line (``flag provided but not defined: -x``)."""


def parse_bool(name: str, text: str) -> bool:
    """The value of boolean flag ``-name`` given as ``-name=text``, as strconv.ParseBool reads it.

    Raises FlagError ``invalid boolean value 'x' for flag -name``."""
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise FlagError(f"invalid boolean value {text!r} for flag -{name}")


class Flag:
    """One flag as :class:`GoFlags` read it: ``-name=value`` (``joined``), ``-name value`` or
    ``-name`` (``value`` None).  (Not a NamedTuple: ``typing`` is not on kata-shim's start path.)"""

    __slots__ = ("name", "value", "joined")

    def __init__(self, name: str, value: str | None = None, joined: bool = False):
        self.name = name
        self.value = value
        self.joined = joined

    def __repr__(self) -> str:
        return f"Flag({self.name!r}, {self.value!r}, joined={self.joined})"


class GoFlags:
    """The flags of ``argv``, one :class:`Flag` at a time, as Go's flag.FlagSet.Parse reads them.

    ``takes_value(name)`` says whether flag ``name`` takes a value.  ``value`` is the text after
    ``=``, else the next argument for a flag that takes a value, else None.  Iteration stops at
    the end of the flags; :attr:`rest` then holds the arguments after them (``--`` dropped).
    Raises FlagError ``bad flag syntax: ---x`` and ``flag needs an argument: -name``, in order, as
    the flags are read.  Unknown names are the caller's to refuse (``flag provided but not
    defined: -x``); refusing each as it comes keeps Go's order of errors.
    """

    def __init__(self, argv, takes_value):
        self.rest = list(argv)
        self.takes_value = takes_value

    def __iter__(self):
        while self.rest:
            arg = self.rest[0]
            if len(arg) < 2 or arg[0] != "-":
                return
            del self.rest[0]
            if arg == "--":
                return
            yield self._flag(arg)

    def _flag(self, arg: str) -> Flag:
        body = arg[2:] if arg.startswith("--") else arg[1:]
        if not body or body[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        name, eq, value = body.partition("=")
        if eq:
            return Flag(name, value, True)
        if not self.takes_value(name):
            return Flag(name, None)
        if not self.rest:
            raise FlagError(f"flag needs an argument: -{name}")
        return Flag(name, self.rest.pop(0))


def _split_scheme(address: str) -> tuple[str, str]:
    """(scheme in lower case or "", the rest), as Go's url.getScheme splits them."""
    if address[:1] and address[0] in _SCHEME_FIRST:
        for i, ch in enumerate(address):
            if ch == ":":
                return address[:i].lower(), address[i + 1:]
            if ch not in _SCHEME_REST:
                break
    return "", address


def _unescape(text: str, address: str) -> str:
    """``%XX`` escapes decoded (UTF-8), as url.Parse decodes a path.  FlagError for a bad one."""
    if "%" not in text:
        return text
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] != "%":
            out += text[i].encode("utf-8", "surrogateescape")
            i += 1
            continue
        digits = text[i + 1:i + 3]
        if len(digits) != 2 or not all(ch in _HEX for ch in digits):
            raise FlagError(f"invalid URL escape {text[i:i + 3]!r} in {address!r}")
        out.append(int(digits, 16))
        i += 3
    return out.decode("utf-8", "surrogateescape")


def unix_socket_path(address: str, what: str = "socket") -> str:
    """The socket path an address names, as the Go kata-proxy and kata-shim read it.

    Go's url.Parse, then ``Host + Path``: ``unix:///abs/p.sock`` and ``/abs/p.sock`` are
    ``/abs/p.sock``; ``unix://rel/p.sock`` and ``rel/p.sock`` are the relative path ``rel/p.sock``
    (relative to the working directory, as in Go); ``unix:/abs`` is ``/abs``.  As url.Parse: the
    scheme's case does not matter, ``?query`` and ``#fragment`` are dropped, ``%XX`` is decoded,
    and ``unix:rel`` (an opaque URL) names no path.  Unlike url.Parse, a host's ``%XX`` is
    decoded as a path's (url.Parse refuses most).  ``what`` names the flag in errors.

    Raises FlagError ``unsupported {what} scheme 'tcp' in ...`` for a scheme other than unix,
    ``{what} address ... has no socket path`` when it names none (``""``, ``unix://``, ``unix:rel``),
    and for a bad ``%`` escape or a colon in a first path segment (url.Parse's errors).
    """
    rest = address.partition("#")[0].partition("?")[0]
    scheme, rest = _split_scheme(rest)
    if scheme not in ("", "unix"):
        raise FlagError(f"unsupported {what} scheme {scheme!r} in {address!r} (want unix:///path/to/socket)")
    if rest.startswith("//") and (scheme or not rest.startswith("///")):
        path = rest[2:]  # authority and path: Host + Path is the rest without its "//"
    elif rest.startswith("/"):
        path = rest
    elif scheme:
        path = ""  # opaque ("unix:rel"): url.Parse gives no Host and no Path
    elif ":" in rest.partition("/")[0]:
        raise FlagError(f"{what} address {address!r}: first path segment in URL cannot contain colon")
    else:
        path = rest
    if not path:
        raise FlagError(f"{what} address {address!r} has no socket path "
                        "(want unix:///absolute/path or unix://relative/path)")
    return _unescape(path, address)
