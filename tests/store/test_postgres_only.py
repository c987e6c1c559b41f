"""What only the PostgreSQL store promises: safe migrations and claims across processes,
URL options, and error messages that never carry the password.

Several PostgresStores on one schema stand for several bridge processes: each has its
own connection pool, so they share nothing but the database.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from bridge.errors import ConfigError, StorageError
from bridge.models import Evaluation, LeadStatus, Outcome, Transition
from bridge.store import open_store
from bridge.store.postgres import PostgresStore
from bridge.store.postgres.lease import PostgresLease
from bridge.store.postgres.schema import SCHEMA_VERSION

from .conftest import (
    EPOCH,
    HOLDER,
    POSTGRES_DSN_ENV,
    T0,
    Events,
    drop_schema,
    fresh_schema,
    postgres_url,
)

DSN = os.environ.get(POSTGRES_DSN_ENV, "")


def needs_postgres(test: Any) -> Any:
    """Marks `test` as needing PostgreSQL, skipped with the reason where there is none."""
    skip = pytest.mark.skipif(not DSN, reason=f"{POSTGRES_DSN_ENV} is unset: no PostgreSQL")
    return pytest.mark.postgres(skip(test))


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    """A schema name of this test's own, dropped afterwards."""
    name = fresh_schema()
    try:
        yield name
    finally:
        await drop_schema(DSN, name)


@pytest.fixture
async def stores(schema: str) -> AsyncIterator[list[PostgresStore]]:
    """Two open stores on one schema: two bridge processes."""
    opened = [PostgresStore.from_url(postgres_url(DSN, schema)) for _ in range(2)]
    lease = PostgresLease(opened[0].dsn, opened[0].settings)
    try:
        for store in opened:
            await store.open()
        # Both claim under one term (EPOCH): the per-lead locks alone keep them apart.
        assert (await lease.acquire(HOLDER, 3600)).epoch == EPOCH
        yield opened
    finally:
        await lease.close()
        for store in opened:
            await store.close()


# --- migrations ---------------------------------------------------------------------------


@needs_postgres
async def test_replicas_starting_at_once_on_a_fresh_schema_migrate_it_once(schema: str) -> None:
    stores = [PostgresStore.from_url(postgres_url(DSN, schema)) for _ in range(4)]

    try:
        await asyncio.gather(*(store.open() for store in stores))

        conn = await asyncpg.connect(DSN)
        try:
            versions = await conn.fetch(
                f'SELECT version FROM "{schema}".schema_migrations ORDER BY version'  # noqa: S608
            )
        finally:
            await conn.close()
        assert [row["version"] for row in versions] == list(range(1, SCHEMA_VERSION + 1))
        for store in stores:
            await store.ping()
    finally:
        for store in stores:
            await store.close()


@needs_postgres
async def test_a_schema_newer_than_the_bridge_is_refused(schema: str) -> None:
    first = PostgresStore.from_url(postgres_url(DSN, schema))
    await first.open()
    await first.close()
    conn = await asyncpg.connect(DSN)
    try:
        await conn.execute(
            f'INSERT INTO "{schema}".schema_migrations (version) VALUES ($1)',  # noqa: S608
            SCHEMA_VERSION + 1,
        )
    finally:
        await conn.close()

    newer = PostgresStore.from_url(postgres_url(DSN, schema))
    with pytest.raises(StorageError, match="newer than this bridge"):
        await newer.open()


# --- several processes on one database ---------------------------------------------------


@needs_postgres
async def test_two_processes_claiming_at_once_never_hand_out_a_lead_twice(
    stores: list[PostgresStore], events: Events
) -> None:
    await stores[0].ingest([events.matched(lead_id=n % 20) for n in range(40)], T0)

    claims = await asyncio.gather(
        *(stores[n % 2].claim_due(T0, 3, coalesce=False, epoch=EPOCH) for n in range(10))
    )

    claimed = [q for claim in claims for q in claim.claimed]
    assert len(claimed) == 20
    assert len({q.id for q in claimed}) == 20
    assert len({q.lead_id for q in claimed}) == 20


@needs_postgres
async def test_two_racing_deliverers_send_every_transition_once_and_in_lead_order(
    stores: list[PostgresStore], events: Events
) -> None:
    leads, per_lead = 5, 10
    batch = [
        events.matched(lead_id=lead, occurred_at=T0 + n)
        for n in range(per_lead)
        for lead in range(leads)
    ]
    await stores[0].ingest(batch, T0)
    sent: list[tuple[int, int, float]] = []  # (transition id, lead, occurred_at) as claimed

    async def deliverer(store: PostgresStore) -> None:
        for _ in range(10_000):  # a bound, so a bug fails instead of hanging
            if len(sent) == leads * per_lead:
                return
            claim = await store.claim_due(T0, 2, coalesce=False, epoch=EPOCH)
            assert claim.stale == []
            for queued in claim.claimed:
                # Recorded before the lead is released: a second claim of this lead
                # can only come after the mark_delivered below has committed.
                sent.append((queued.id, queued.lead_id, queued.occurred_at))
                await store.mark_delivered(queued.id, T0, 200, epoch=EPOCH)
        raise AssertionError("deliverers did not finish")

    await asyncio.gather(deliverer(stores[0]), deliverer(stores[1]))

    assert len({tid for tid, _, _ in sent}) == leads * per_lead
    for lead in range(leads):
        order = [occurred for _, sent_lead, occurred in sent if sent_lead == lead]
        assert order == [T0 + n for n in range(per_lead)]
    stats = await stores[1].stats(T0)
    assert stats.transitions["delivered"] == leads * per_lead


@needs_postgres
async def test_ingest_commits_all_of_a_batch_or_nothing_and_quotes_no_values(
    stores: list[PostgresStore], events: Events
) -> None:
    good = events.matched(lead_id=1)
    event = events.event()
    too_big = Transition("paid", 7, 2**70, LeadStatus.WON)  # beyond PostgreSQL's bigint
    bad = (event, Evaluation(Outcome.MATCHED, (too_big,), (), ("paid",)))

    with pytest.raises(StorageError) as caught:
        await stores[0].ingest([good, bad], T0)

    assert (await stores[0].stats(T0)).events["matched"] == 0
    assert "argument $4 (value out of int64 range)" in str(caught.value)
    assert str(2**70) not in str(caught.value)  # argument values are never quoted
    assert await stores[0].ledger(7, 1) == []


@needs_postgres
async def test_text_that_postgresql_cannot_hold_is_stored_escaped(
    stores: list[PostgresStore], events: Events
) -> None:
    await stores[0].ingest([events.matched(notes="a\x00b\udc80", event_id="evt\x00")], T0)

    [entry] = await stores[0].ledger(7, 1)

    assert (entry.event_id, entry.notes) == ("evt\\x00", "a\\x00b\\udc80")


# --- URLs and errors (no database needed) ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_database_raises_storage_error_without_the_password() -> None:
    store = open_store(f"postgresql://bridge:s3cret-pw@127.0.0.1:{_free_port()}/db")

    with pytest.raises(StorageError) as caught:
        await store.open()

    assert "postgresql open failed" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "PostgreSQL"])
def test_postgresql_urls_open_a_postgres_store(scheme: str) -> None:
    assert isinstance(open_store(f"{scheme}://u@localhost/db"), PostgresStore)


def test_the_bridge_options_are_taken_out_of_the_url_and_the_others_kept() -> None:
    store = PostgresStore.from_url(
        "postgresql://u:pw@h:5433/db?schema=bridge_1&sslmode=disable&mode=ro&pool_max=3"
    )

    assert store.dsn == "postgresql://u:pw@h:5433/db?sslmode=disable"
    assert store.schema == "bridge_1"
    assert store.settings["default_transaction_read_only"] == "on"  # mode=ro
    assert store.pool_max == 3


@pytest.mark.parametrize(
    "query", ["schema=a;drop", "schema=", "mode=readonly", "pool_max=0", "pool_max=x"]
)
def test_bad_url_options_are_refused_without_quoting_the_url(query: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PostgresStore.from_url(f"postgresql://u:s3cret-pw@h/db?{query}")

    assert "s3cret-pw" not in str(caught.value)


@needs_postgres
async def test_a_purge_during_a_replay_keeps_the_event_and_the_transitions_it_queues(
    stores: list[PostgresStore], schema: str, events: Events
) -> None:
    # Given an old unmapped event, and lead 1 known to the store.
    old = events.event(received_at=T0 - 10_000)
    await stores[0].ingest([(old, Evaluation(Outcome.UNMAPPED)), events.matched(lead_id=1)], T0)
    [stored] = await stores[0].events_for_replay(outcome=Outcome.UNMAPPED)
    verdict = Evaluation(Outcome.MATCHED, (Transition("r", 7, 1, LeadStatus.WON),), (), ("r",))
    # ... and another session holding lead 1's row, so that the replay below stops right
    # after inserting its transition, with its transaction still open.
    blocker = await asyncpg.connect(DSN, server_settings={"search_path": schema})
    try:
        hold = blocker.transaction()
        await hold.start()
        await blocker.execute("SELECT 1 FROM leads WHERE account_id = 7 AND lead_id = 1 FOR UPDATE")
        replay = asyncio.create_task(stores[0].apply_replay(stored.pk, verdict, T0))
        await _until(lambda: _waiters(blocker), 1, "the replay never reached the lead lock")

        # When the retention purge runs meanwhile (on the other replica): it either
        # finishes, or waits for the replay (the bug: it would then delete the event).
        purge = asyncio.create_task(stores[1].purge(T0 - 1))

        async def purge_done_or_waiting() -> int:
            return 2 if purge.done() else await _waiters(blocker)

        await _until(purge_done_or_waiting, 2, "the purge neither finished nor waited")
        await hold.rollback()
        assert (await replay).transitions == 1
        await purge
    finally:
        await blocker.close()

    # ... then the event and its new transition are both still there.
    assert [e.pk for e in await stores[0].events_for_replay(ids=[stored.pk])] == [stored.pk]
    assert [e.rule for e in await stores[0].ledger(7, 1)].count("r") == 1


async def _waiters(conn: asyncpg.Connection) -> int:
    """How many of the bridge's sessions wait for another transaction's lock."""
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid IN (SELECT pid FROM"
        " pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'voxys-bridge')"
    )
    return count


async def _until(probe: Any, at_least: int, message: str) -> None:
    """Poll `probe()` until it returns at least `at_least`; bounded at 5 s."""
    for _ in range(500):
        if await probe() >= at_least:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(message)
