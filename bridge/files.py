"""The files one config load read: each fingerprinted before it is read, kept parsed.

Hot reload compares these fingerprints with the files as they are now. Taking each one
*before* reading means that a file changed while a load was reading it (or right after)
never looks like what that load saw, so it triggers another load instead of being
marked as seen. Keeping what each file parsed into lets the next load skip every file
that did not change: a large lookup CSV is parsed once, not at every rule edit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# (device, inode, size, modification time in ns) of a file; None when it cannot be
# stat'ed. The inode catches a file replaced by a rename with the same size and time.
Fingerprint = tuple[int, int, int, int] | None
Parser = Callable[[Path], Any]


def fingerprint(path: str) -> Fingerprint:
    """How `path` looks now, cheaply: one stat, no read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class ReadFile:
    """One file as a load found it: its fingerprint before reading and what it parsed into."""

    fingerprint: Fingerprint
    parser: Parser | None  # None when it could not be parsed (then `value` is None)
    value: Any


class FileReads:
    """The files one load read, in order, and what each parsed into.

    `reuse` are earlier loads' reads: a file whose fingerprint is the one an earlier load
    saw before reading it is not read again; that load's result is used as is. Parsed
    values are shared between loads, so parsers must return values nobody mutates.
    """

    def __init__(self, reuse: Iterable[FileReads] = ()) -> None:
        self.files: dict[str, ReadFile] = {}
        self._reuse: dict[tuple[str, Parser, Fingerprint], Any] = {
            (name, read.parser, read.fingerprint): read.value
            for earlier in reuse
            for name, read in earlier.files.items()
            if read.parser is not None and read.fingerprint is not None
        }

    def parse(self, path: Path, parser: Callable[[Path], T]) -> T:
        """`parser(path)`, or the value an earlier load got from the file as it is now."""
        name = str(path)
        before = fingerprint(name)
        key = (name, parser, before)
        if key in self._reuse:
            value: T = self._reuse[key]
        else:
            # Recorded first, so that a file that fails to parse is still watched.
            self.files[name] = ReadFile(before, None, None)
            value = parser(path)
        self.files[name] = ReadFile(before, parser, value)
        return value

    def __contains__(self, path: object) -> bool:
        return path in self.files

    def done(self) -> None:
        """Forget the earlier loads' values: this object may outlive them (in a bundle)."""
        self._reuse = {}

    def changed(self, candidates: Iterable[str] = ()) -> bool:
        """True when a file read changed since, or one of `candidates` was not read at all."""
        if any(name not in self.files for name in candidates):
            return True
        return any(fingerprint(name) != read.fingerprint for name, read in self.files.items())
