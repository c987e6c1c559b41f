"""The SQLite writer thread: one commit per group, and a failing job fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from bridge.errors import StorageError
from bridge.store.sqlite.threads import Writer


@pytest.fixture
async def writer(tmp_path: Path):
    db = tmp_path / "w.db"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        conn.execute("CREATE TABLE IF NOT EXISTS t (v TEXT PRIMARY KEY)")
        return conn

    w = Writer(connect)
    await w.start()
    yield w, db
    await w.stop()


def insert(value: str, then_fail: Exception | None = None):
    def work(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
        if then_fail is not None:
            raise then_fail
        return value

    return work


def rows(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        return sorted(v for (v,) in conn.execute("SELECT v FROM t"))


async def queued_as_one_group(w: Writer, *works):
    """Hold the writer busy while the jobs queue, so that they share one group."""
    entered, gate = threading.Event(), threading.Event()

    def block(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(5)

    blocker = asyncio.ensure_future(w.submit("block", block))
    await asyncio.to_thread(entered.wait, 5)  # the writer thread is inside the blocker
    jobs = [asyncio.ensure_future(w.submit(f"job{n}", work)) for n, work in enumerate(works)]
    await asyncio.sleep(0)  # each job's task runs up to putting its job on the queue
    gate.set()
    await blocker
    return await asyncio.gather(*jobs, return_exceptions=True)


async def test_jobs_queued_together_share_one_commit(writer) -> None:
    w, db = writer
    before = w.commits
    results = await queued_as_one_group(w, insert("a"), insert("b"), insert("c"))
    assert results == ["a", "b", "c"]
    assert rows(db) == ["a", "b", "c"]
    assert w.commits - before == 2  # the blocker's group, then one for the three


async def test_a_job_that_raises_fails_alone_and_leaves_no_writes(writer) -> None:
    w, db = writer
    results = await queued_as_one_group(
        w, insert("a"), insert("b", then_fail=ValueError("a bug")), insert("c")
    )
    assert results[0] == "a"
    assert isinstance(results[1], ValueError)
    assert results[2] == "c"
    assert rows(db) == ["a", "c"]  # b's insert was undone, a's and c's kept


async def test_a_job_sqlite_refuses_fails_alone_with_a_storage_error(writer) -> None:
    w, db = writer
    await w.submit("seed", insert("dup"))
    results = await queued_as_one_group(w, insert("a"), insert("dup"), insert("c"))
    assert results[0] == "a"
    assert isinstance(results[1], StorageError)
    assert "job1" in str(results[1])
    assert results[2] == "c"
    assert rows(db) == ["a", "c", "dup"]
