"""The PostgreSQL backend: one database shared by replicas on several machines. Its store,
delivery lease and wake-up channel."""

from __future__ import annotations

from bridge.store.base import Backend
from bridge.store.postgres.lease import PostgresLease
from bridge.store.postgres.store import PostgresStore
from bridge.store.postgres.wakeup import PostgresNotify

__all__ = ["PostgresStore", "backend"]


def backend(url: str) -> Backend:
    """Store, lease and wake-up for a `postgresql://` URL (see PostgresStore.from_url)."""
    store = PostgresStore.from_url(url)
    lease = PostgresLease(store.dsn, store.settings)
    wakeup = PostgresNotify(store.dsn, store.settings, store.resolved_schema)
    return Backend(store=store, lease=lease, wakeup=wakeup)
