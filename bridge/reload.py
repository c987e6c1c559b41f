"""Hot reload: on SIGHUP or a changed file, load the config again off the loop; all or nothing.

- The load runs in a thread, so webhooks keep being answered meanwhile; the new bundle
  replaces the running one in one assignment, on the loop.
- A config that fails to load leaves the running one; `config.reload_failed` carries
  the same messages `voxys-bridge check` prints.
- A config that changes anything of `server`, `storage` or `voxys` (read only at start:
  the listening socket, the store, the Voxys client) applies nothing at all: rules and
  sources built from it would disagree with the running client (PATCHes to the new
  account with the old token) and URL (HubSpot signatures). `config.restart_required`
  names the changed keys, never their values (some are secrets).
- Files are fingerprinted before they are read (`bridge/files.py`): a file written
  while a load runs triggers another load. Files that did not change are not parsed
  again. One task runs every load, so SIGHUP and the file watcher never load at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog
from aiohttp import web
from pydantic import BaseModel

from bridge import logs
from bridge.bundle import Bundle, load_bundle
from bridge.config import Config
from bridge.errors import ConfigErrors
from bridge.files import FileReads
from bridge.runtime import RUNTIME, ReloadRecord, Runtime

log = structlog.get_logger("bridge.reload")

RESTART_SECTIONS = ("server", "storage", "voxys")
WATCH_EVERY_S = 1.0  # a stat of each watched file per second costs the loop microseconds
# The loading thread holds the GIL between switches; the event loop, wanting it back to
# answer a webhook, waits up to the switch interval (5 ms by default) every time. While a
# load runs the interpreter switches every millisecond instead (measured: webhook p99
# during a 1,000,000-row reload, see docs/benchmarks.md).
LOADING_SWITCH_INTERVAL_S = 0.001

Outcome = Literal["applied", "failed", "restart_required"]


@dataclass(frozen=True, slots=True)
class Changes:
    """What an applied reload changed, for the `config.reloaded` line."""

    sources: dict[str, list[str]]
    rules: dict[str, list[str]]
    lookups: list[str]

    def as_log(self) -> dict[str, Any]:
        return {"sources": self.sources, "rules": self.rules, "lookups": self.lookups}


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    # `is` first: a lookup table nobody touched is the same object, and comparing a
    # million rows holds the GIL.
    return {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": sorted(
            k for k in old.keys() & new.keys() if old[k] is not new[k] and old[k] != new[k]
        ),
    }


def changes_between(old: Bundle, new: Bundle) -> Changes:
    """Compare two bundles' sources, rules and lookups (secrets compare as values, never shown)."""
    old_rules = {r.rule.name: r for r in old.loaded.rules}
    new_rules = {r.rule.name: r for r in new.loaded.rules}
    lookups = _diff(old.loaded.lookups, new.loaded.lookups)
    return Changes(
        sources=_diff(old.config.sources, new.config.sources),
        rules=_diff(old_rules, new_rules),
        lookups=sorted({*lookups["added"], *lookups["removed"], *lookups["changed"]}),
    )


def restart_keys(old: Config, new: Config) -> list[str]:
    """The dotted keys under `server`, `storage` and `voxys` whose values differ."""
    return sorted(
        key
        for section in RESTART_SECTIONS
        for key in _changed_keys(getattr(old, section), getattr(new, section), section)
    )


def _changed_keys(old: Any, new: Any, prefix: str) -> Iterator[str]:
    if isinstance(old, BaseModel) and type(old) is type(new):
        for name in type(old).model_fields:
            yield from _changed_keys(getattr(old, name), getattr(new, name), f"{prefix}.{name}")
    elif old != new:
        yield prefix


class Reloader:
    """Reloads one runtime's bundle from its config file, one load at a time."""

    def __init__(self, runtime: Runtime, config_path: str) -> None:
        self.runtime = runtime
        self.config_path = config_path
        self._last = runtime.bundle.loaded.files  # what the latest load read, even a failed one
        self._hangup = asyncio.Event()

    def _includes(self) -> list[str]:
        # What the include globs match now: a new rule file is a change.
        base = Path(self.config_path).parent
        found: list[str] = []
        for entry in self.runtime.bundle.config.rules:
            if isinstance(entry, dict) and "include" in entry:
                found.extend(glob.glob(str(base / str(entry["include"]))))
        return found

    def files_changed(self) -> bool:
        """True when a file differs from how the latest load saw it before reading it."""
        return self._last.changed(self._includes())

    def hangup(self) -> None:
        """Ask for a reload (the SIGHUP handler); one arriving during a load runs after it."""
        self._hangup.set()

    @property
    def hangup_pending(self) -> bool:
        """A SIGHUP arrived that no load has taken up yet."""
        return self._hangup.is_set()

    async def reload(self, trigger: str) -> Outcome:
        """Load the config in a thread, then apply all of it or nothing."""
        metrics = self.runtime.metrics
        old = self.runtime.bundle
        files = FileReads(reuse=(old.loaded.files, self._last))
        self._last = files
        started = time.perf_counter()
        interval = sys.getswitchinterval()
        sys.setswitchinterval(LOADING_SWITCH_INTERVAL_S)
        try:
            new = await asyncio.to_thread(load_bundle, self.config_path, files)
        except ConfigErrors as exc:
            metrics.reloads.labels(result="failed").inc()
            errors = [str(e) for e in exc.errors]
            log.error("config.reload_failed", trigger=trigger, errors=errors)
            self._record(trigger, "failed", None, errors=logs.REDACTOR.scrub(errors))
            return "failed"
        finally:
            sys.setswitchinterval(interval)
        duration_ms = round((time.perf_counter() - started) * 1000, 1)
        logs.REDACTOR.update([*old.secrets(), *new.secrets()])
        keys = restart_keys(old.config, new.config)
        if keys:
            metrics.reloads.labels(result="restart_required").inc()
            log.warning(
                "config.restart_required",
                trigger=trigger,
                keys=keys,
                applied=False,
                duration_ms=duration_ms,
            )
            self._record(trigger, "restart_required", duration_ms, keys=keys)
            return "restart_required"
        self.runtime.bundle = new
        metrics.reloads.labels(result="ok").inc()
        changes = changes_between(old, new).as_log()
        log.info("config.reloaded", trigger=trigger, duration_ms=duration_ms, **changes)
        self._record(trigger, "applied", duration_ms, **changes)
        return "applied"

    def _record(self, trigger: str, outcome: str, duration_ms: float | None, **detail: Any) -> None:
        self.runtime.last_reload = ReloadRecord(
            self.runtime.clock(), trigger, outcome, duration_ms, detail
        )

    async def _next_trigger(self) -> str:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._hangup.wait(), WATCH_EVERY_S)
            if self._hangup.is_set():
                self._hangup.clear()
                return "sighup"
            if self.files_changed():
                return "file_changed"

    async def run(self) -> None:
        """Reload on SIGHUP and on changed files until cancelled."""
        while True:
            trigger = await self._next_trigger()
            try:
                await self.reload(trigger)
            except Exception as exc:  # the boundary: a reload never stops the next one
                self.runtime.metrics.reloads.labels(result="failed").inc()
                errors = [f"internal error: {type(exc).__name__}"]
                log.exception("config.reload_failed", trigger=trigger, errors=errors)
                self._record(trigger, "failed", None, errors=errors)


async def reload_hook(app: web.Application) -> AsyncIterator[None]:
    """Reload on SIGHUP and when a config, rule or lookup file changes."""
    runtime = app[RUNTIME]
    reloader = Reloader(runtime, runtime.bundle.loaded.path)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reloader.hangup)
    runtime.supervisor.start("reload", reloader.run)
    yield
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.remove_signal_handler(signal.SIGHUP)
