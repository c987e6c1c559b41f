"""CPU time of a server process tree, read from /proc: the figure a shared machine keeps steady.

Requests per second move with whatever else the cores are doing; the CPU a process
spends per request hardly does. `CpuSample.take(pid)` reads user+system time of `pid`
and of every process below it (the workers of `server.workers: N`), split into the main
threads (the event loops) and every other thread (SQLite's writer, reader, checkpointer,
executors). Threads that ended meanwhile still count: a process's own total includes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _times(stat: Path) -> float:
    """user+system seconds from a /proc stat file (fields 14 and 15, after the `(comm)`)."""
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (children of children too), found by parent pid."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rpartition(")")[2].split()[1])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds used so far by a process tree: main threads and the other threads."""

    main: float
    other: float

    @property
    def total(self) -> float:
        return self.main + self.other

    @classmethod
    def take(cls, pid: int) -> CpuSample:
        main = total = 0.0
        for each in descendants(pid):
            try:
                total += _times(Path(f"/proc/{each}/stat"))
                main += _times(Path(f"/proc/{each}/task/{each}/stat"))
            except (FileNotFoundError, ProcessLookupError):  # it exited between the reads
                continue
        return cls(main=main, other=total - main)

    def __sub__(self, earlier: CpuSample) -> CpuSample:
        return CpuSample(main=self.main - earlier.main, other=self.other - earlier.other)
