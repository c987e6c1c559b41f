"""The running application, put together in one place: routes, health, and the resources
whose lifetime is the server's (`build_app`: a bundle and its resources in, an app out)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from bridge.admin import mount as mount_admin
from bridge.bundle import Bundle
from bridge.console import mount as mount_console
from bridge.delivery import Doorbell, delivery_hook
from bridge.errors import StorageError
from bridge.ingest import handle_webhook
from bridge.lease import Timing
from bridge.reload import reload_hook
from bridge.runtime import RUNTIME, Runtime
from bridge.store.base import Backend
from bridge.voxys import VoxysClient

log = structlog.get_logger("bridge.app")

Hook = Callable[[web.Application], AsyncIterator[None]]

PURGE_EVERY_S = 3600.0

# Limits on what a client may send before its request is even read (aiohttp's parser).
# Chosen, not inherited: webhook senders send a few small headers; anything bigger is
# refused with 400/431 before it costs memory. An idle keep-alive connection is closed
# after 75 s (aiohttp's default would keep it an hour).
HTTP_LIMITS: dict[str, Any] = {
    "max_line_size": 8190,  # request line and each header line, bytes
    "max_field_size": 8190,  # one header value, bytes
    "max_headers": 128,
    "keepalive_timeout": 75.0,
}


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """Ready: config loaded, the store writable, and no background task down."""
    runtime = request.app[RUNTIME]
    broken = runtime.supervisor.broken()
    if broken:
        return web.json_response(
            {"ok": False, "error": "background task down", "tasks": broken}, status=503
        )
    try:
        await runtime.store.ping()
    except StorageError as exc:
        return web.json_response({"ok": False, "error": str(exc)}, status=503)
    return web.json_response(
        {
            "ok": True,
            "sources": sorted(runtime.bundle.sources),
            "delivery_role": runtime.delivery.role,
        }
    )


async def handle_metrics(request: web.Request) -> web.Response:
    """GET /metrics: refresh the store gauges, then expose everything."""
    runtime = request.app[RUNTIME]
    now = runtime.clock()
    runtime.metrics.update_from(await runtime.store.stats(now), now)
    resp = web.Response(body=runtime.metrics.render())
    resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return resp


def create_app(runtime: Runtime, *, hooks: Sequence[Hook] = ()) -> web.Application:
    """The bridge's web application. `hooks` are cleanup contexts run after the store opens."""
    app = web.Application(
        client_max_size=runtime.bundle.config.server.max_body_bytes, handler_args=HTTP_LIMITS
    )
    app[RUNTIME] = runtime

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        await runtime.store.open()
        try:
            yield
        finally:
            await runtime.store.close()

    async def supervisor_ctx(app: web.Application) -> AsyncIterator[None]:
        # Last in, first out: every supervised task has stopped before the hooks that
        # started them close what the tasks use.
        yield
        await runtime.supervisor.stop()

    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.extend(hooks)
    app.cleanup_ctx.append(supervisor_ctx)
    app.router.add_post("/webhooks/{source}", handle_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", handle_metrics)
    mount_console(app, runtime)  # before /admin: its prefix would take /admin/ui/ too
    mount_admin(app, runtime)
    return app


def build_app(
    bundle: Bundle,
    backend: Backend,
    *,
    client: VoxysClient | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[web.Application, Runtime]:
    """The app `serve` and `demo` run, from a bundle and its resources: the store backend,
    the Voxys client (one from `bundle` when None) and the clock."""
    doorbell = Doorbell(backend.wakeup)
    runtime = Runtime(bundle=bundle, store=backend.store, clock=clock, new_work=doorbell)
    client = client or VoxysClient(bundle.config.voxys)
    timing = Timing(ttl=bundle.config.storage.lease_ttl)
    hooks: list[Hook] = [
        retention_hook,
        reload_hook,
        delivery_hook(backend, client, timing, doorbell),
    ]
    return create_app(runtime, hooks=hooks), runtime


async def retention_hook(app: web.Application) -> AsyncIterator[None]:
    """Delete settled events older than storage.retention, hourly (a supervised task)."""
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

    runtime.supervisor.start("retention", loop)
    yield
