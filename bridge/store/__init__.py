"""Storage backends behind one Store protocol; `open_store` picks one from `storage.url`."""

from __future__ import annotations

from bridge.errors import ConfigError
from bridge.store.base import Store


def open_store(url: str) -> Store:
    """An unopened Store for `url`; call `await store.open()` before use.

    sqlite:///relative/path.db    relative to the working directory
    sqlite:////absolute/path.db   absolute
    sqlite://:memory:             a throwaway database, deleted at close (tests, demos)
    Options: ?synchronous=full|normal, ?mode=ro (refuse writes).
    postgresql://user:password@host:5432/db (or postgres://)   PostgreSQL, several replicas
    Options: ?schema=NAME (tables in that schema), ?mode=ro, ?pool_max=N; see postgres.py.
    Raises ConfigError.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        from bridge.store.sqlite import SqliteStore

        return SqliteStore.from_url(url)
    if scheme in ("postgresql", "postgres"):
        # Imported here so that asyncpg is only needed when PostgreSQL is used.
        from bridge.store.postgres import PostgresStore

        return PostgresStore.from_url(url)
    # Only the scheme is quoted back: a database URL may carry a password.
    shown = f"scheme {scheme + '://'!r}" if scheme else "no scheme"
    raise ConfigError(
        f"storage URL with {shown} is not supported;"
        " expected sqlite:///path.db or postgresql://host/db",
        key="storage.url",
    )
