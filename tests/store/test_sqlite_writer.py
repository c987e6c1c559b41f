"""The SQLite writer thread: one commit per group, a failing job fails alone, and webhooks
that share a commit are stored as if they had come one by one."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from bridge.errors import StorageError
from bridge.lease import take_free
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite.lease import SqliteLease
from bridge.store.sqlite.threads import Writer

from .conftest import T0, Events


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


async def queued_as_one_group(w: Writer, *works, submit=None):
    """Hold the writer busy while the jobs queue, so that they share one group.

    `submit(n, work)` queues one job (default: `w.submit(f"job{n}", work)`).
    """
    entered, gate = threading.Event(), threading.Event()

    def block(conn: sqlite3.Connection) -> None:
        entered.set()
        gate.wait(5)

    blocker = asyncio.ensure_future(w.submit("block", block))
    await asyncio.to_thread(entered.wait, 5)  # the writer thread is inside the blocker
    submit = submit or (lambda n, work: w.submit(f"job{n}", work))
    jobs = [asyncio.ensure_future(submit(n, work)) for n, work in enumerate(works)]
    while w.queued < len(works):  # each job's task runs up to putting its job on the queue
        await asyncio.sleep(0)
    gate.set()
    await blocker
    return await asyncio.gather(*jobs, return_exceptions=True)


class InsertMany:
    """A `many` function for submit_many that records each call's items."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, conn: sqlite3.Connection, values: list[str]) -> list[str]:
        self.calls.append(list(values))
        conn.execute("INSERT INTO t (v) SELECT value FROM json_each(?)", (json.dumps(values),))
        if "boom" in values:
            raise ValueError("a bug")
        return [v.upper() for v in values]


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


async def test_neighbouring_jobs_of_one_many_function_run_in_one_call(writer) -> None:
    w, db = writer
    many = InsertMany()
    results = await queued_as_one_group(
        w, "a", "b", "c", submit=lambda n, v: w.submit_many(f"job{n}", many, v)
    )
    assert results == ["A", "B", "C"]
    assert many.calls == [["a", "b", "c"]]
    assert rows(db) == ["a", "b", "c"]


async def test_a_plain_job_between_them_keeps_the_order_of_the_queue(writer) -> None:
    w, db = writer
    many = InsertMany()

    def submit(n: int, value: str):
        if value == "plain":
            return w.submit(f"job{n}", insert(value))
        return w.submit_many(f"job{n}", many, value)

    results = await queued_as_one_group(w, "a", "b", "plain", "c", submit=submit)
    assert results == ["A", "B", "plain", "C"]
    assert many.calls == [["a", "b"], ["c"]]
    assert rows(db) == ["a", "b", "c", "plain"]


async def test_a_failing_item_of_a_batch_fails_alone(writer) -> None:
    w, db = writer
    many = InsertMany()
    results = await queued_as_one_group(
        w, "a", "boom", "c", submit=lambda n, v: w.submit_many(f"job{n}", many, v)
    )
    assert results[0] == "A"
    assert isinstance(results[1], ValueError)
    assert results[2] == "C"
    assert rows(db) == ["a", "c"]  # boom's insert was undone with its own transaction
    assert many.calls == [["a", "boom", "c"], ["a"], ["boom"], ["c"]]


async def test_webhooks_sharing_a_commit_are_stored_as_if_they_had_come_one_by_one(
    tmp_path: Path,
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    events = Events()
    try:
        await store.ingest([events.matched(event_id="evt_old", lead_id=9)], T0)
        requests = [
            [events.matched(event_id="evt_a", lead_id=1)],
            [events.matched(event_id="evt_old", lead_id=9)],  # stored before: duplicate
            [events.matched(event_id="evt_b", lead_id=2), events.ignored()],
            [events.matched(event_id="evt_a", lead_id=1)],  # first stored in this group
            [events.matched(event_id="evt_c", lead_id=1), events.matched(event_id="evt_c")],
        ]
        results = await queued_as_one_group(
            store.writer, *requests, submit=lambda n, items: store.ingest(items, T0 + n)
        )
        counts = [(r.stored, r.duplicates, r.transitions) for r in results]
        assert counts == [(1, 0, 1), (0, 1, 0), (2, 0, 1), (0, 1, 0), (1, 1, 1)]
        assert store.largest_group >= len(requests)  # they did share a commit
        lead_1 = await store.ledger(7, 1)
        assert sorted((e.event_id, e.created_at) for e in lead_1) == [
            ("evt_a", T0),
            ("evt_c", T0 + 4),  # each request's transitions carry its own time
        ]
        term = await take_free(SqliteLease(store))
        claim = await store.claim_due(T0 + 10, 10, coalesce=False, epoch=term.epoch)
        assert sorted(t.lead_id for t in claim.claimed) == [1, 2, 9]  # every lead is due
    finally:
        await store.close()
