"""Hot reload: on SIGHUP or a changed file, validate a new bundle and swap it in whole.

On any error the running bundle stays and `config.reload_failed` carries the same
messages `voxys-bridge check` prints. Sections that only take effect at start
(server, storage, voxys) are reported as needing a restart and are not applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from bridge import logs
from bridge.bundle import Bundle, load_bundle
from bridge.errors import ConfigErrors
from bridge.runtime import RUNTIME, Runtime

log = structlog.get_logger("bridge.reload")

RESTART_SECTIONS = ("server", "storage", "voxys")
WATCH_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class Changes:
    """What a reload changed, for the `config.reloaded` line."""

    sources: dict[str, list[str]]
    rules: dict[str, list[str]]
    lookups: list[str]
    restart_required: list[str]

    def as_log(self) -> dict[str, Any]:
        return {
            "sources": self.sources,
            "rules": self.rules,
            "lookups": self.lookups,
            "restart_required": self.restart_required,
        }


def _diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    return {
        "added": sorted(new.keys() - old.keys()),
        "removed": sorted(old.keys() - new.keys()),
        "changed": sorted(k for k in old.keys() & new.keys() if old[k] != new[k]),
    }


def changes_between(old: Bundle, new: Bundle) -> Changes:
    """Compare two bundles section by section (secrets compare as values, never shown)."""
    old_rules = {r.rule.name: r for r in old.loaded.rules}
    new_rules = {r.rule.name: r for r in new.loaded.rules}
    lookups = _diff(old.loaded.lookups, new.loaded.lookups)
    restart = [
        section
        for section in RESTART_SECTIONS
        if getattr(old.config, section) != getattr(new.config, section)
    ]
    return Changes(
        sources=_diff(old.config.sources, new.config.sources),
        rules=_diff(old_rules, new_rules),
        lookups=sorted({*lookups["added"], *lookups["removed"], *lookups["changed"]}),
        restart_required=restart,
    )


class Reloader:
    """Reloads one runtime's bundle from its config file."""

    def __init__(self, runtime: Runtime, config_path: str) -> None:
        self.runtime = runtime
        self.config_path = config_path
        self._seen = self._fingerprint()

    def _watched(self) -> list[str]:
        # Files read last time, plus whatever the include globs match now (a new rule file).
        files = set(self.runtime.bundle.loaded.files)
        base = Path(self.config_path).parent
        for entry in self.runtime.bundle.config.rules:
            if isinstance(entry, dict) and "include" in entry:
                files.update(glob.glob(str(base / str(entry["include"]))))
        return sorted(files)

    def _fingerprint(self) -> dict[str, tuple[float, int] | None]:
        out: dict[str, tuple[float, int] | None] = {}
        for name in self._watched():
            try:
                st = os.stat(name)
                out[name] = (st.st_mtime, st.st_size)
            except OSError:
                out[name] = None
        return out

    def files_changed(self) -> bool:
        """True once per change of any watched file (mtime, size, appearance, removal)."""
        now = self._fingerprint()
        changed = now != self._seen
        self._seen = now
        return changed

    def reload(self, trigger: str) -> bool:
        """Load, validate and swap; returns whether the new bundle is now running."""
        metrics = self.runtime.metrics
        try:
            new = load_bundle(self.config_path)
        except ConfigErrors as exc:
            metrics.reloads.labels(result="failed").inc()
            log.error(
                "config.reload_failed",
                trigger=trigger,
                errors=[str(e) for e in exc.errors],
            )
            return False
        old = self.runtime.bundle
        changes = changes_between(old, new)
        if changes.restart_required:
            # Keep what needs a restart exactly as it started; apply the rest.
            kept = new.config.model_copy(
                update={s: getattr(old.config, s) for s in changes.restart_required}
            )
            new = Bundle(
                loaded=new.loaded.model_copy(update={"config": kept}),
                sources=new.sources,
                rules=new.rules,
            )
        logs.REDACTOR.update([*old.secrets(), *new.secrets()])
        self.runtime.bundle = new
        self._seen = self._fingerprint()
        metrics.reloads.labels(result="ok").inc()
        log.info("config.reloaded", trigger=trigger, **changes.as_log())
        return True


async def reload_hook(app: web.Application) -> AsyncIterator[None]:
    """Reload on SIGHUP and when a config, rule or lookup file changes."""
    runtime = app[RUNTIME]
    config_path = runtime.bundle.loaded.path
    reloader = Reloader(runtime, config_path)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reloader.reload, "sighup")

    async def watch() -> None:
        while True:
            await asyncio.sleep(WATCH_EVERY_S)
            if reloader.files_changed():
                reloader.reload("file_changed")

    runtime.supervisor.start("reload", watch)
    yield
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.remove_signal_handler(signal.SIGHUP)
