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
from bridge.store.postgres_schema import SCHEMA_VERSION

from .conftest import POSTGRES_DSN_ENV, T0, Events, drop_schema, fresh_schema, postgres_url

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
    try:
        for store in opened:
            await store.open()
        yield opened
    finally:
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
        *(stores[n % 2].claim_due(T0, 3, coalesce=False) for n in range(10))
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
            claim = await store.claim_due(T0, 2, coalesce=False)
            assert claim.stale == []
            for queued in claim.claimed:
                # Recorded before the lead is released: a second claim of this lead
                # can only come after the mark_delivered below has committed.
                sent.append((queued.id, queued.lead_id, queued.occurred_at))
                await store.mark_delivered(queued.id, T0, 200)
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

    assert store._dsn == "postgresql://u:pw@h:5433/db?sslmode=disable"
    assert (store._schema, store._read_only, store._pool_max) == ("bridge_1", True, 3)


@pytest.mark.parametrize(
    "query", ["schema=a;drop", "schema=", "mode=readonly", "pool_max=0", "pool_max=x"]
)
def test_bad_url_options_are_refused_without_quoting_the_url(query: str) -> None:
    with pytest.raises(ConfigError) as caught:
        PostgresStore.from_url(f"postgresql://u:s3cret-pw@h/db?{query}")

    assert "s3cret-pw" not in str(caught.value)
