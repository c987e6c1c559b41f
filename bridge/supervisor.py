"""Fail-stop supervision of the long-running tasks: none may end silently.

Every background task of a running bridge (delivery, retention purge, config watcher)
runs under one `Supervisor`. A task that raises is logged at error with its name and
traceback, then restarted after a backoff that doubles up to `maximum`; a task that
returns although nobody stopped it is treated the same way. While a task is down
between a failure and its restart, `broken()` names it, and `/readyz` answers 503.
Cleaning up after a failure (releasing the delivery lease, say) is the task's own
`finally`, which runs before the supervisor sees the exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Final

import structlog

log = structlog.get_logger("bridge.supervisor")

INITIAL_BACKOFF_S: Final = 1.0
MAX_BACKOFF_S: Final = 60.0
STABLE_AFTER_S: Final = 60.0  # a task that ran this long before failing starts over at 1 s

Run = Callable[[], Awaitable[None]]


class Supervisor:
    """Runs named tasks for the life of the process, restarting each one that ends."""

    def __init__(
        self,
        *,
        initial: float = INITIAL_BACKOFF_S,
        maximum: float = MAX_BACKOFF_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.initial = initial
        self.maximum = maximum
        self.clock = clock
        self.sleep = sleep
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._broken: dict[str, str] = {}
        self.restarts: dict[str, int] = {}

    def start(self, name: str, run: Run) -> None:
        """Run `run()` as task `name` until `stop`, restarting it whenever it ends."""
        if name in self._tasks:
            raise ValueError(f"task {name!r} is already supervised")
        self.restarts[name] = 0
        self._tasks[name] = asyncio.create_task(self._keep(name, run), name=name)

    def broken(self) -> dict[str, str]:
        """The tasks that are down right now (failed, waiting to restart), with why."""
        return dict(self._broken)

    async def _keep(self, name: str, run: Run) -> None:
        delay = self.initial
        while True:
            started = self.clock()
            try:
                await run()
            except Exception as exc:  # the one catch-all of a background task: logged here
                log.error("task.failed", task=name, error=repr(exc), exc_info=exc)
                self._broken[name] = f"{type(exc).__name__}: {exc}"[:300]
            else:
                log.error("task.ended", task=name)  # a task only ends when stopped
                self._broken[name] = "ended"
            if self.clock() - started >= STABLE_AFTER_S:
                delay = self.initial
            log.info("task.restarting", task=name, in_s=delay)
            await self.sleep(delay)
            delay = min(self.maximum, delay * 2)
            self.restarts[name] += 1
            self._broken.pop(name, None)

    async def stop(self) -> None:
        """Cancel every task and wait for each to finish its clean-up."""
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
