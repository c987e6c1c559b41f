"""Standard output for a command whose reader may go away (`voxys-bridge check | head -1`).

Python ignores SIGPIPE, so writing to a pipe whose reader exited raises BrokenPipeError
wherever the write happens: in a print, in a log line inside a request handler, in
the interpreter's last flush. `ReaderAware` catches it at the one place every write
goes through: from then on output is discarded (fd 1 points at /dev/null) and
`on_closed` runs once, so that a long-running command can stop as it would on Ctrl-C.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TextIO

#: The exit status of a command whose output was cut short, as if SIGPIPE had ended it.
EXIT_READER_GONE = 141


class ReaderAware:
    """A text stream wrapper that survives its reader going away."""

    def __init__(self, stream: TextIO) -> None:
        self.wrapped = stream
        self.reader_gone = False
        self.on_closed: Callable[[], None] | None = None

    def write(self, text: str) -> int:
        if not self.reader_gone:
            try:
                return self.wrapped.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.reader_gone:
            try:
                self.wrapped.flush()
            except BrokenPipeError:
                self._gone()

    def _gone(self) -> None:
        self.reader_gone = True
        # Bytes still buffered, and the interpreter's final flush, go nowhere from now on
        # instead of failing again (the recipe of Python's signal module documentation).
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.wrapped.fileno())
        finally:
            os.close(devnull)
        if self.on_closed is not None:
            self.on_closed()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)  # isatty, fileno, encoding, …
