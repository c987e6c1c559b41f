"""The delivery lease: of all processes sharing one store, exactly one delivers.

Ingest scales out (every process answers webhooks); delivery does not need to, since
the Voxys rate limit bounds it, and one deliverer keeps the rate limit, per-lead order
and coalescing exact without coordination. Whoever holds the lease delivers; when the
holder dies its lock dies with it and another process takes over at its next try.

- SQLite (`server.workers: N` on one machine): an exclusive `flock` on `<db>.lease`.
  The kernel releases it when the holding process exits, however it exits.
- PostgreSQL (replicas on several machines): a session advisory lock held on a
  dedicated connection. The server releases it when that connection ends: at once when
  the process dies, or after TCP keepalive notices a dead host.
- A throwaway `sqlite://:memory:` store is private to one process: always held.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import zlib
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import unquote

from bridge.errors import StorageError

LEASE_KEY: Final = 0x766F787973  # "voxys": the advisory lock id of the delivery lease


class Lease(Protocol):
    async def try_acquire(self) -> bool:
        """Take the lease if nobody holds it; True when this process holds it now."""

    async def still_held(self) -> bool:
        """False once the lease was lost (its connection broke)."""

    async def release(self) -> None:
        """Give the lease up (shutdown)."""


class AlwaysHeld:
    """The lease of a store no other process can open."""

    async def try_acquire(self) -> bool:
        return True

    async def still_held(self) -> bool:
        return True

    async def release(self) -> None:
        return None


class FileLease:
    """An exclusive flock on a file next to the SQLite database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    async def still_held(self) -> bool:
        return self._fd is not None

    async def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class PostgresLease:
    """A session advisory lock on a connection of its own."""

    def __init__(self, dsn: str, schema: str | None = None) -> None:
        self.dsn = dsn
        # One lease per deployment: bridges in other schemas of the database have their own.
        self.key = LEASE_KEY + zlib.crc32((schema or "").encode())
        self._conn: Any = None

    async def try_acquire(self) -> bool:
        import asyncpg

        try:
            if self._conn is None or self._conn.is_closed():
                self._conn = await asyncpg.connect(self.dsn, timeout=5)
            held: bool = await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            await self._drop()
            raise StorageError(f"delivery lease: {type(exc).__name__}") from exc
        return held

    async def still_held(self) -> bool:
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            return False
        try:
            await asyncio.wait_for(self._conn.fetchval("SELECT 1"), 5)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            await self._drop()
            return False
        return True

    async def release(self) -> None:
        await self._drop()

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)


def lease_for(storage_url: str) -> Lease:
    """The lease that guards delivery on the store at `storage_url`."""
    scheme, _, rest = storage_url.partition("://")
    scheme = scheme.lower()
    if scheme == "sqlite":
        path = rest.partition("?")[0]
        if path in ("", ":memory:", "/:memory:"):
            return AlwaysHeld()
        return FileLease(Path(unquote(path[1:]) + ".lease"))
    if scheme in ("postgresql", "postgres"):
        from bridge.store.postgres import PostgresStore

        store = PostgresStore.from_url(storage_url)
        return PostgresLease(store.dsn, store.schema)
    return AlwaysHeld()
