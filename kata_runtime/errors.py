"""Errors of kata-runtime: each carries the one line the user sees (exit status 1).

Messages follow runc's where a caller parses them: ``container ID does not exist`` style for
unknown ids, ``container with id exists`` for duplicates.
"""


class KataError(Exception):
    """A command failed; ``str(error)`` is the one line printed on stderr and logged."""

    exit_code = 1


class NotFound(KataError):
    """No container (or sandbox) with that id."""


class AlreadyExists(KataError):
    """The id is taken."""


class InvalidArgument(KataError):
    """Bad input: an id, a flag value, a file given on the command line."""


class WrongState(KataError):
    """The container is not in a state that allows the command (e.g. delete of a running one)."""


class StepError(KataError):
    """A step of a multi-step command failed; the message says which step and why."""

    def __init__(self, step: str, cause: BaseException | str):
        self.step = step
        self.cause = cause
        text = str(cause) if not isinstance(cause, BaseException) else _describe(cause)
        super().__init__(f"{step}: {text}")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror and not text:
        return exc.strerror
    return " ".join(text.split()) or type(exc).__name__


def container_not_found(container_id: str) -> NotFound:
    """runc's wording for an unknown id."""
    return NotFound(f"container {container_id} does not exist")
