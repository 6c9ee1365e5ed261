"""Progress of an image build: one line when a step starts, one when it ends, with elapsed time.

    progress = Progress(total=6)              # writes to stderr
    with progress.step("rootfs: mmdebstrap bookworm"):
        ...
        progress.detail("I: extracting archives...")

prints::

    image [1/6] rootfs: mmdebstrap bookworm ...
    image       I: extracting archives...
    image [1/6] rootfs: mmdebstrap bookworm: done in 41.2 s (total 41.2 s)

A failed step prints ``failed after N s`` instead. Plain lines, not a redrawn bar: a first build
takes a minute or more and its output is often a CI log or a pipe. Standard library only.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, TextIO

PREFIX = "image"


class Progress:
    """Step lines with elapsed seconds; `quiet` prints nothing (the steps are still timed)."""

    def __init__(self, total: int, stream: TextIO | None = None, *, quiet: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.clock = clock
        self.started = clock()
        self.index = 0
        #: (title, seconds) of every finished step, in order.
        self.timings: list[tuple[str, float]] = []

    def _line(self, text: str) -> None:
        if not self.quiet:
            self.stream.write(f"{PREFIX} {text}\n")
            self.stream.flush()

    @contextlib.contextmanager
    def step(self, title: str):
        self.index += 1
        tag = f"[{self.index}/{self.total}]"
        self._line(f"{tag} {title} ...")
        t0 = self.clock()
        try:
            yield self
        except BaseException:
            self._line(f"{tag} {title}: failed after {self.clock() - t0:.1f} s")
            raise
        spent = self.clock() - t0
        self.timings.append((title, spent))
        self._line(f"{tag} {title}: done in {spent:.1f} s (total {self.elapsed():.1f} s)")

    def detail(self, text: str) -> None:
        """An indented line of a step's own output (mmdebstrap's "I: ..." lines)."""
        self._line(f"      {text}")

    def note(self, text: str) -> None:
        self._line(text)

    def elapsed(self) -> float:
        return self.clock() - self.started
