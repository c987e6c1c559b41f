"""Cross-process wake-ups: a process that stored new work wakes the deliverer elsewhere.

Within one process ingest wakes the worker directly (`Runtime.on_stored`). When several
processes share a store, the deliverer may be another process; without a signal it
would find the work only at its next safety-net poll.

- SQLite (`server.workers: N`, one machine): the deliverer binds a Unix datagram socket
  `<db>.wake` (in the temp directory when that path is too long for a socket); every
  ingest process sends it one byte after each commit. Sending never blocks and a lost
  datagram costs nothing: any one wakes the worker, which then claims everything due.
- PostgreSQL (replicas): `NOTIFY voxys_bridge_work` after each commit; the deliverer
  `LISTEN`s on its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import unquote

import structlog

from bridge.errors import StorageError

log = structlog.get_logger("bridge.wakeup")

CHANNEL: Final = "voxys_bridge_work"
MAX_SOCKET_PATH: Final = 100  # bytes; Linux allows 107 in sun_path


class Wakeup(Protocol):
    def publish(self) -> None:
        """Tell the deliverer, wherever it runs, that new work was stored. Never blocks."""

    async def listen(self, callback: Callable[[], None]) -> None:
        """Call `callback` on every publication until `close` (the deliverer's side)."""

    async def close(self) -> None: ...


class Local:
    """A store no other process shares: the in-process wake-up is all there is."""

    def publish(self) -> None:
        return None

    async def listen(self, callback: Callable[[], None]) -> None:
        return None

    async def close(self) -> None:
        return None


class UnixDatagram:
    """One byte to `<db>.wake`; the deliverer holds the socket (only the lease holder binds)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._send: socket.socket | None = None
        self._recv: socket.socket | None = None

    def publish(self) -> None:
        if self._send is None:
            self._send = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._send.setblocking(False)
        with contextlib.suppress(OSError):  # no deliverer bound, or its buffer is full
            self._send.sendto(b"!", str(self.path))

    async def listen(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a dead holder's socket; we hold the lease now
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind(str(self.path))
        self._recv = sock

        def readable() -> None:
            with contextlib.suppress(BlockingIOError):
                while sock.recv(64):
                    pass
            callback()

        asyncio.get_running_loop().add_reader(sock.fileno(), readable)

    async def close(self) -> None:
        if self._recv is not None:
            asyncio.get_running_loop().remove_reader(self._recv.fileno())
            self._recv.close()
            self._recv = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if self._send is not None:
            self._send.close()
            self._send = None


class PostgresNotify:
    """NOTIFY after each commit; LISTEN on a connection of the deliverer's own."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._notifier: Any = None
        self._listener: Any = None
        self._pending: asyncio.Task[None] | None = None

    def publish(self) -> None:
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        import asyncpg

        try:
            if self._notifier is None or self._notifier.is_closed():
                self._notifier = await asyncpg.connect(self.dsn, timeout=5)
            await self._notifier.execute(f"NOTIFY {CHANNEL}")
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            # The deliverer's safety-net poll still finds the work.
            log.warning("wakeup.notify_failed", error=type(exc).__name__)
            self._notifier = None

    async def listen(self, callback: Callable[[], None]) -> None:
        import asyncpg

        self._listener = await asyncpg.connect(self.dsn, timeout=5)
        await self._listener.add_listener(CHANNEL, lambda *_: callback())

    async def close(self) -> None:
        for conn in (self._listener, self._notifier):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=2)
        self._listener = self._notifier = None


async def wake_deliverer(storage_url: str) -> None:
    """Wake the deliverer of the store at `storage_url` once; return once the signal is out.

    For a process that changed the store without serving it (`dead-letters retry`,
    `replay`): it exits right after, so unlike `publish` this waits for the NOTIFY.
    SQLite sends one datagram (when no server is bound there is nothing to wake).
    Raises StorageError when PostgreSQL cannot be reached.
    """
    wakeup = wakeup_for(storage_url)
    try:
        if isinstance(wakeup, PostgresNotify):
            import asyncpg

            try:
                conn = await asyncpg.connect(wakeup.dsn, timeout=5)
                try:
                    await conn.execute(f"NOTIFY {CHANNEL}")
                finally:
                    await conn.close(timeout=2)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                raise StorageError(f"NOTIFY failed: {type(exc).__name__}") from None
        else:
            wakeup.publish()
    finally:
        await wakeup.close()


def socket_path(db: Path) -> Path:
    """`<db>.wake`, or a name in the temp directory when that path is too long for a socket."""
    beside = db.parent.resolve() / (db.name + ".wake")
    if len(os.fsencode(beside)) <= MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(os.fsencode(beside)).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"voxys-bridge-{digest}.wake"


def wakeup_for(storage_url: str) -> Wakeup:
    """How processes sharing the store at `storage_url` wake its deliverer."""
    scheme, _, rest = storage_url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        path = rest.partition("?")[0]
        if path in ("", ":memory:", "/:memory:"):
            return Local()
        return UnixDatagram(socket_path(Path(unquote(path[1:]))))
    if scheme in ("postgresql", "postgres"):
        from bridge.store.postgres import PostgresStore

        return PostgresNotify(PostgresStore.from_url(storage_url).dsn)
    return Local()
