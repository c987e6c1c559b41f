"""The delivery lease of a SQLite store: one row of the database, written by its writer.

The row is in the database file itself, so every process that opens the file - by
any path, symlink or relative spelling - shares one lease. Times are the machine's
clock read by SQLite inside the statement; every process sharing a SQLite file runs
on the same machine, so they read one clock.
"""

from __future__ import annotations

import sqlite3
from functools import partial
from typing import TYPE_CHECKING, Final

from bridge.store.base import LeaseGrant

if TYPE_CHECKING:
    from bridge.store.sqlite.store import SqliteStore

NOW: Final = "((julianday('now') - 2440587.5) * 86400.0)"  # POSIX seconds, ms precision


def _acquire(conn: sqlite3.Connection, holder: str, ttl: float) -> LeaseGrant:
    taken = conn.execute(
        f"UPDATE lease SET holder = ?, epoch = epoch + 1, expires_at = {NOW} + ?"  # noqa: S608
        f" WHERE name = 'delivery' AND (holder IS NULL OR expires_at <= {NOW})"
        " RETURNING epoch",
        (holder, ttl),
    ).fetchall()
    if taken:
        return LeaseGrant(epoch=int(taken[0][0]))
    (left,) = conn.execute(
        f"SELECT expires_at - {NOW} FROM lease WHERE name = 'delivery'"  # noqa: S608
    ).fetchone()
    return LeaseGrant(epoch=None, expires_in=max(0.0, float(left)))


def _renew(conn: sqlite3.Connection, holder: str, epoch: int, ttl: float) -> bool:
    # Renewing a lease that expired is fine as long as nobody took it: the epoch is ours.
    renewed = conn.execute(
        f"UPDATE lease SET expires_at = {NOW} + ?"  # noqa: S608
        " WHERE name = 'delivery' AND holder = ? AND epoch = ?",
        (ttl, holder, epoch),
    ).rowcount
    return renewed == 1


def _release(conn: sqlite3.Connection, holder: str, epoch: int) -> None:
    conn.execute(
        f"UPDATE lease SET holder = NULL, expires_at = {NOW}"  # noqa: S608
        " WHERE name = 'delivery' AND holder = ? AND epoch = ?",
        (holder, epoch),
    )


class SqliteLease:
    """The Lease protocol on a SqliteStore's `lease` row."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    async def acquire(self, holder: str, ttl: float) -> LeaseGrant:
        return await self.store.write("lease_acquire", partial(_acquire, holder=holder, ttl=ttl))

    async def renew(self, holder: str, epoch: int, ttl: float) -> bool:
        work = partial(_renew, holder=holder, epoch=epoch, ttl=ttl)
        return await self.store.write("lease_renew", work)

    async def release(self, holder: str, epoch: int) -> None:
        await self.store.write("lease_release", partial(_release, holder=holder, epoch=epoch))

    async def close(self) -> None:
        return None
