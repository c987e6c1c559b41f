"""create_app: routes, health, and the resources whose lifetime is the server's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence

import structlog
from aiohttp import web

from bridge.admin import mount as mount_admin
from bridge.errors import StorageError
from bridge.ingest import RUNTIME, Runtime, handle_webhook
from bridge.metrics import METRICS, handle_metrics

log = structlog.get_logger("bridge.app")

Hook = Callable[[web.Application], AsyncIterator[None]]


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """Ready: config loaded and the store writable."""
    runtime = request.app[RUNTIME]
    try:
        await runtime.store.ping()
    except StorageError as exc:
        return web.json_response({"ok": False, "error": str(exc)}, status=503)
    return web.json_response({"ok": True, "sources": sorted(runtime.bundle.sources)})


def create_app(runtime: Runtime, *, hooks: Sequence[Hook] = ()) -> web.Application:
    """The bridge's web application. `hooks` are cleanup contexts run after the store opens."""
    app = web.Application(client_max_size=runtime.bundle.config.server.max_body_bytes)
    app[RUNTIME] = runtime
    app[METRICS] = runtime.metrics

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        await runtime.store.open()
        try:
            yield
        finally:
            await runtime.store.close()

    app.cleanup_ctx.append(store_ctx)
    app.cleanup_ctx.extend(hooks)
    app.router.add_post("/webhooks/{source}", handle_webhook)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", handle_metrics)
    mount_admin(app, runtime)
    return app
