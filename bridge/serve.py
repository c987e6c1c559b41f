"""`voxys-bridge serve`: wire the store, the web app and the delivery worker, then run."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from bridge import __version__, logs
from bridge.app import Hook, create_app
from bridge.bundle import Bundle
from bridge.errors import StorageError
from bridge.ingest import RUNTIME, Runtime
from bridge.store import open_store

log = structlog.get_logger("bridge.serve")

PURGE_EVERY_S = 3600.0


async def retention_hook(app: web.Application) -> AsyncIterator[None]:
    """Delete settled events older than storage.retention, hourly."""
    runtime = app[RUNTIME]

    async def loop() -> None:
        while True:
            retention = runtime.bundle.config.storage.retention
            try:
                purged = await runtime.store.purge(runtime.clock() - retention)
                if purged:
                    log.info("storage.purged", events=purged)
            except StorageError as exc:
                log.error("storage.purge_failed", error=str(exc))
            await asyncio.sleep(PURGE_EVERY_S)

    task = asyncio.create_task(loop())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def build(bundle: Bundle, *, config_path: str) -> tuple[web.Application, Runtime]:
    """The app and runtime `serve` runs; tests build the same thing."""
    store = open_store(bundle.config.storage.url)
    runtime = Runtime(bundle=bundle, store=store, clock=time.time)
    from bridge.delivery import delivery_hook
    from bridge.reload import reload_hook

    hooks: list[Hook] = [retention_hook, reload_hook, delivery_hook]
    return create_app(runtime, hooks=hooks), runtime


def serve(bundle: Bundle, *, config_path: str) -> int:
    """Run until SIGTERM/SIGINT: stop accepting, finish requests in flight, close, exit 0."""
    config = bundle.config
    logs.configure(level=config.logging.level, fmt=config.logging.format, secrets=bundle.secrets())
    for source in bundle.sources.values():
        for warning in source.startup_warnings():
            log.warning("source.unsigned", source=source.key, message=warning)
    app, _ = build(bundle, config_path=config_path)

    async def announce(app: web.Application) -> None:
        log.info(
            "bridge.started",
            version=__version__,
            host=config.server.host,
            port=config.server.port,
            sources=sorted(bundle.sources),
            rules=len(bundle.rules.rules),
        )

    async def goodbye(app: web.Application) -> None:
        log.info("bridge.stopping")

    app.on_startup.append(announce)
    app.on_shutdown.append(goodbye)
    web.run_app(
        app,
        host=config.server.host,
        port=config.server.port,
        shutdown_timeout=config.server.shutdown_timeout,
        access_log=None,
        print=None,
        handle_signals=True,
    )
    log.info("bridge.stopped")
    return 0
