"""`voxys-bridge backup`: a consistent copy of the SQLite store while the server runs.

SQLite's online backup API (Python's `sqlite3.Connection.backup`) copies the database
as of one read snapshot: in WAL mode the server keeps writing meanwhile. The copy is
taken in one step on purpose: a backup copied in several steps restarts whenever
another connection writes between them, which a busy bridge always does. The copy is
written beside the destination, checked (`PRAGMA quick_check`), synced to disk and
only then renamed into place, so a backup file that exists is a whole one. Nothing
here needs the `sqlite3` command-line tool, which the container image does not have.

The store is not opened as the server opens it (that would migrate an older schema
before an upgrade, when a backup matters most): only a read connection is made.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from bridge.errors import ConfigError
from bridge.store import open_store
from bridge.store.sqlite import SqliteStore


class BackupError(Exception):
    """Why no backup was made, in one line naming the path."""


@dataclass(frozen=True, slots=True)
class Backup:
    """A backup made: where from and to, how big, what it holds, how long it took."""

    source: Path
    destination: Path
    size: int
    events: int
    transitions: int
    seconds: float


def database_file(storage_url: str) -> Path:
    """The SQLite file `storage.url` names; BackupError for any other store."""
    try:
        store = open_store(storage_url)
    except ConfigError as exc:
        raise BackupError(str(exc)) from None
    if not isinstance(store, SqliteStore):
        raise BackupError("storage.url is PostgreSQL: back it up with pg_dump (docs/operations.md)")
    if store.file is None:
        raise BackupError("storage.url is a throwaway in-memory database: nothing to back up")
    return store.file


def backup(source: Path, destination: Path) -> Backup:
    """Copy the database at `source` to `destination` (which must not exist yet)."""
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    if destination.exists():
        raise BackupError(f"{destination} exists: choose another name, or remove it first")
    partial = destination.with_name(destination.name + ".partial")
    started = time.monotonic()
    try:
        _copy(source, partial)
        events, transitions = _check(partial)
        with partial.open("rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(partial, destination)
        _sync_directory(destination.parent)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {source} to {destination}: {exc}") from None
    except OSError as exc:
        raise BackupError(f"cannot write {exc.filename or destination}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return Backup(
        source,
        destination,
        destination.stat().st_size,
        events,
        transitions,
        time.monotonic() - started,
    )


def _sync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy(source: Path, destination: Path) -> None:
    # A read-only connection: the backup never writes the server's database.
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30)
    try:
        dst = sqlite3.connect(destination)
        try:
            src.backup(dst)  # pages=-1: the whole database from one snapshot
            # One self-contained file (no -wal beside it); serve turns WAL on again.
            dst.execute("PRAGMA journal_mode = DELETE")
        finally:
            dst.close()
    finally:
        src.close()


def _check(copy: Path) -> tuple[int, int]:
    """What the copy holds; BackupError when SQLite finds it damaged."""
    conn = sqlite3.connect(f"file:{copy}?mode=ro", uri=True)
    try:
        (verdict,) = conn.execute("PRAGMA quick_check").fetchone()
        if verdict != "ok":
            raise BackupError(f"the copy failed SQLite's quick_check: {verdict}")
        (events,) = conn.execute("SELECT count(*) FROM events").fetchone()
        (transitions,) = conn.execute("SELECT count(*) FROM transitions").fetchone()
    finally:
        conn.close()
    return events, transitions
