"""`voxys-bridge serve`: wire the store, the web app and the delivery worker, then run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from bridge import __version__, logs
from bridge.app import Hook, create_app
from bridge.bundle import Bundle
from bridge.errors import StorageError
from bridge.lease import Timing
from bridge.runtime import RUNTIME, Runtime
from bridge.store import open_backend

log = structlog.get_logger("bridge.serve")

PURGE_EVERY_S = 3600.0
RESPAWN_DELAY_S = 1.0  # before replacing a worker that died, so a crash loop stays slow
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


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


def build(bundle: Bundle, *, config_path: str) -> tuple[web.Application, Runtime]:
    """The app and runtime `serve` runs; tests build the same thing."""
    backend = open_backend(bundle.config.storage.url)
    runtime = Runtime(bundle=bundle, store=backend.store, clock=time.time)
    from bridge.delivery import delivery_hook
    from bridge.reload import reload_hook

    timing = Timing(ttl=bundle.config.storage.lease_ttl)
    hooks: list[Hook] = [retention_hook, reload_hook, delivery_hook(backend, timing)]
    return create_app(runtime, hooks=hooks), runtime


def serve(bundle: Bundle, *, config_path: str) -> int:
    """Run until SIGTERM/SIGINT: stop accepting, finish requests in flight, close, exit 0.

    With `server.workers: N` (N > 1) the process forks N servers sharing the port
    (SO_REUSEPORT: the kernel spreads connections) and the store; one of them holds the
    delivery lease and delivers (see bridge/lease.py). It forwards SIGTERM, SIGINT and
    SIGHUP to them and restarts one that dies.
    """
    config = bundle.config
    logs.configure(level=config.logging.level, fmt=config.logging.format, secrets=bundle.secrets())
    for source in bundle.sources.values():
        for warning in source.startup_warnings():
            log.warning("source.unsigned", source=source.key, message=warning)
    if config.server.workers > 1:
        return supervise(bundle, config_path=config_path, workers=config.server.workers)
    return run_server(bundle, config_path=config_path, reuse_port=False)


def run_server(bundle: Bundle, *, config_path: str, reuse_port: bool) -> int:
    config = bundle.config
    app, _ = build(bundle, config_path=config_path)

    async def announce(app: web.Application) -> None:
        log.info(
            "bridge.started",
            version=__version__,
            host=config.server.host,
            port=config.server.port,
            sources=sorted(bundle.sources),
            rules=len(bundle.rules.rules),
            pid=os.getpid(),
        )

    async def goodbye(app: web.Application) -> None:
        log.info("bridge.stopping", pid=os.getpid())

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
        reuse_port=reuse_port or None,
    )
    log.info("bridge.stopped", pid=os.getpid())
    return 0


def supervise(bundle: Bundle, *, config_path: str, workers: int) -> int:
    """Fork `workers` servers on one port and keep them running until told to stop."""
    children: dict[int, int] = {}  # pid -> worker number
    stopping = False

    def spawn(number: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            for signum in FORWARDED:
                signal.signal(signum, signal.SIG_DFL)
            code = 1
            try:
                code = run_server(bundle, config_path=config_path, reuse_port=True)
            finally:
                os._exit(code)
        children[pid] = number

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum != signal.SIGHUP:
            stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for number in range(workers):
        spawn(number)
    for signum in FORWARDED:
        signal.signal(signum, forward)
    log.info("bridge.supervising", workers=workers, pids=sorted(children))
    failed = False
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        if pid not in children:
            continue
        number = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            failed |= code != 0
            continue
        log.error("bridge.worker_exited", worker=number, pid=pid, code=code)
        time.sleep(RESPAWN_DELAY_S)
        spawn(number)
    log.info("bridge.stopped", pid=os.getpid())
    return 1 if failed else 0
