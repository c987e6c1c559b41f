"""create_app: routes, health, and the resources whose lifetime is the server's."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import structlog
from aiohttp import web

from bridge.admin import mount as mount_admin
from bridge.console import mount as mount_console
from bridge.errors import StorageError
from bridge.ingest import handle_webhook
from bridge.metrics import METRICS, handle_metrics
from bridge.runtime import RUNTIME, Runtime

log = structlog.get_logger("bridge.app")

Hook = Callable[[web.Application], AsyncIterator[None]]

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


def create_app(runtime: Runtime, *, hooks: Sequence[Hook] = ()) -> web.Application:
    """The bridge's web application. `hooks` are cleanup contexts run after the store opens."""
    app = web.Application(
        client_max_size=runtime.bundle.config.server.max_body_bytes, handler_args=HTTP_LIMITS
    )
    app[RUNTIME] = runtime
    app[METRICS] = runtime.metrics

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
