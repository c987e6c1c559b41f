"""The delivery lease of a PostgreSQL store: one row of its `lease` table.

The row lives beside the store's tables, so every replica that reaches those tables -
through any URL spelling, `?schema=public` or none - shares one lease; bridges in other
schemas have their own. Expiry is kept by the database's clock (`clock_timestamp()`),
never compared with a replica's. The lease talks over a connection of its own, so
that a pool busy with ingest cannot delay a renewal; every call is bounded by a timeout.

Claims and settles share-lock the row (queue.check_epoch): an acquisition, which
updates it, waits for them to commit, so a new holder's epoch is never written between
a stale holder's check and its write.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Final

import asyncpg

from bridge.errors import StorageError
from bridge.store.base import LeaseGrant

NOW: Final = "extract(epoch FROM clock_timestamp())"
CALL_TIMEOUT: Final = 5.0  # seconds for one lease statement, connecting included
_FAILURES: Final = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)

_ACQUIRE: Final = f"""
    UPDATE lease SET holder = $1, epoch = epoch + 1, expires_at = {NOW} + $2
    WHERE name = 'delivery' AND (holder IS NULL OR expires_at <= {NOW})
    RETURNING epoch
"""  # noqa: S608 (constant fragments)
_LEFT: Final = f"SELECT expires_at - {NOW} FROM lease WHERE name = 'delivery'"  # noqa: S608
# Renewing a lease that expired is fine as long as nobody took it: the epoch is ours.
_RENEW: Final = f"""
    UPDATE lease SET expires_at = {NOW} + $3
    WHERE name = 'delivery' AND holder = $1 AND epoch = $2
    RETURNING epoch
"""  # noqa: S608
_RELEASE: Final = f"""
    UPDATE lease SET holder = NULL, expires_at = {NOW}
    WHERE name = 'delivery' AND holder = $1 AND epoch = $2
"""  # noqa: S608


class PostgresLease:
    """The Lease protocol on the `lease` row, over a dedicated connection."""

    def __init__(self, dsn: str, settings: dict[str, str]) -> None:
        self.dsn = dsn
        self.settings = {**settings, "application_name": "voxys-bridge-lease"}
        self._conn: Any = None

    async def _call(self, op: str, sql: str, *args: Any) -> Any:
        try:
            return await asyncio.wait_for(self._statement(sql, *args), CALL_TIMEOUT)
        except _FAILURES as exc:
            await self.close()
            raise StorageError(f"postgresql {op} failed: {type(exc).__name__}") from None

    async def _statement(self, sql: str, *args: Any) -> Any:
        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.dsn, server_settings=self.settings)
        return await self._conn.fetch(sql, *args)

    async def acquire(self, holder: str, ttl: float) -> LeaseGrant:
        taken = await self._call("lease acquire", _ACQUIRE, holder, ttl)
        if taken:
            return LeaseGrant(epoch=int(taken[0][0]))
        left = await self._call("lease acquire", _LEFT)
        return LeaseGrant(epoch=None, expires_in=max(0.0, float(left[0][0])) if left else None)

    async def renew(self, holder: str, epoch: int, ttl: float) -> bool:
        return bool(await self._call("lease renew", _RENEW, holder, epoch, ttl))

    async def release(self, holder: str, epoch: int) -> None:
        await self._call("lease release", _RELEASE, holder, epoch)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)
