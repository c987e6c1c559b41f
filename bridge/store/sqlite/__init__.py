"""The SQLite backend: the embedded default, one database file shared by the processes of
one machine (`server.workers: N`). Its store, delivery lease and wake-up channel."""

from __future__ import annotations

from bridge.store.base import Backend
from bridge.store.sqlite.lease import SqliteLease
from bridge.store.sqlite.store import SqliteStore
from bridge.store.sqlite.wakeup import Private, UnixDatagram

__all__ = ["SqliteStore", "backend"]


def backend(url: str) -> Backend:
    """Store, lease and wake-up for a `sqlite://` URL (see SqliteStore.from_url)."""
    store = SqliteStore.from_url(url)
    wakeup = Private() if store.configured_path is None else UnixDatagram(store.configured_path)
    return Backend(store=store, lease=SqliteLease(store), wakeup=wakeup)
