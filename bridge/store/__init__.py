"""Storage backends: `open_backend` picks one from `storage.url` and returns its three parts.

sqlite:///relative/path.db    relative to the working directory
sqlite:////absolute/path.db   absolute
sqlite://:memory:             a throwaway database, deleted at close (tests, demos)
Options: ?synchronous=full|normal, ?mode=ro (refuse writes).
postgresql://user:password@host:5432/db (or postgres://)   PostgreSQL, several replicas
Options: ?schema=NAME (tables in that schema), ?mode=ro, ?pool_max=N; see postgres/store.py.
"""

from __future__ import annotations

from bridge.errors import ConfigError
from bridge.store.base import Backend, Store


def open_backend(url: str) -> Backend:
    """The unopened store, lease and wake-up for `url`; `await backend.store.open()` first.

    The URL is parsed once, here. Raises ConfigError.
    """
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        from bridge.store import sqlite

        return sqlite.backend(url)
    if scheme in ("postgresql", "postgres"):
        # Imported here so that asyncpg is only needed when PostgreSQL is used.
        from bridge.store import postgres

        return postgres.backend(url)
    # Only the scheme is quoted back: a database URL may carry a password.
    shown = f"scheme {scheme + '://'!r}" if scheme else "no scheme"
    raise ConfigError(
        f"storage URL with {shown} is not supported;"
        " expected sqlite:///path.db or postgresql://host/db",
        key="storage.url",
    )


def open_store(url: str) -> Store:
    """The unopened store for `url` alone (command-line tools that neither deliver nor wake)."""
    return open_backend(url).store
