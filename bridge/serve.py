"""`voxys-bridge serve`: the process model: bind, fork workers, forward signals, run the app.

What runs is put together by `bridge.app.build_app`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time

import structlog
from aiohttp import web

from bridge import __version__, logs
from bridge.app import build_app
from bridge.bundle import Bundle
from bridge.errors import StartupError, StorageError
from bridge.store import open_backend, open_store

log = structlog.get_logger("bridge.serve")

BACKLOG = 128  # pending connections per listening socket (aiohttp's default)
RESPAWN_DELAY_S = 1.0  # before replacing a worker that died, so a crash loop stays slow
EXIT_STARTUP = 3  # a worker that could not start: the supervisor stops rather than respawn
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def serve(bundle: Bundle) -> int:
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
        return supervise(bundle, workers=config.server.workers)
    return run_server(bundle, reuse_port=False)


def listen(host: str, port: int, *, reuse_port: bool) -> list[socket.socket]:
    """Listening sockets on every address `host` resolves to, bound before anything starts;
    StartupError naming the address and the reason when one cannot be bound."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {shown}: {exc.strerror}") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:  # as asyncio does: one family per socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise StartupError(f"cannot listen on {shown}: {exc.strerror}") from None
    return sockets


def check_store(url: str) -> None:
    """Open the store once (creating or migrating it) and close it; StartupError if it fails."""

    async def probe() -> None:
        store = open_store(url)
        await store.open()
        await store.close()

    try:
        asyncio.run(probe())
    except StorageError as exc:
        raise StartupError(f"cannot open the store: {exc}") from None


def run_server(bundle: Bundle, *, reuse_port: bool) -> int:
    """Serve until SIGTERM/SIGINT. The port is bound and the store opened before
    `bridge.started`; when either fails, StartupError says which and why."""
    config = bundle.config
    sockets = listen(config.server.host, config.server.port, reuse_port=reuse_port)
    app, _ = build_app(bundle, open_backend(bundle.config.storage.url))

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
    try:
        web.run_app(
            app,
            sock=sockets,
            shutdown_timeout=config.server.shutdown_timeout,
            access_log=None,
            print=None,
            handle_signals=True,
        )
    except StorageError as exc:  # the store did not open: nothing was started
        raise StartupError(f"cannot open the store: {exc}") from None
    finally:
        for sock in sockets:
            sock.close()
    log.info("bridge.stopped", pid=os.getpid())
    return 0


def supervise(bundle: Bundle, *, workers: int) -> int:
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
                code = run_server(bundle, reuse_port=True)
            except StartupError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                code = EXIT_STARTUP
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

    # Port and store are checked here, before any worker exists, so that a mistake is
    # one line rather than one per worker; the workers bind and open their own.
    for sock in listen(bundle.config.server.host, bundle.config.server.port, reuse_port=True):
        sock.close()
    check_store(bundle.config.storage.url)
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
        if code == EXIT_STARTUP and not stopping:  # it said why; the others would fail too
            failed = True
            forward(signal.SIGTERM, None)
        if stopping:
            failed |= code != 0
            continue
        log.error("bridge.worker_exited", worker=number, pid=pid, code=code)
        time.sleep(RESPAWN_DELAY_S)
        if not stopping:  # told to stop meanwhile (the log line may have found stdout gone)
            spawn(number)
    log.info("bridge.stopped", pid=os.getpid())
    return 1 if failed else 0
