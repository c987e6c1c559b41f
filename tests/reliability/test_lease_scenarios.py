"""Issue 12's broken scenarios on real processes: each failed on the old delivery lease.

1. The wake-up (LISTEN) connection cannot be opened: delivery polls, and says so.
3. Recording an answer fails for longer than a retry or two: nothing stays in flight,
   and an auth pause whose probe could not be recorded still ends.
4. Two replays of the same events at once queue each transition once.
8. Two spellings of one store (a symlinked SQLite file; `?schema=public` and no schema)
   are one lease.

Real `voxys-bridge serve` processes, real SQLite files and PostgreSQL, Voxys in a
process of its own (`voxys-bridge sandbox --json`); the promises are checked from
outside, as in test_handover.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from structlog.testing import capture_logs

from bridge.bundle import load_bundle
from bridge.delivery import Deliverer
from bridge.fakevoxys import FakeVoxys
from bridge.lease import take_free
from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition
from bridge.runtime import Runtime
from bridge.store import open_store
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite.lease import SqliteLease
from bridge.voxys import VoxysClient
from tests.conftest import PG_DSN, needs_postgres
from tests.reliability.conftest import (
    ADMIN_TOKEN,
    STRIPE_SECRET,
    VOXYS_TOKEN,
    bridge_config,
    write_yaml,
)
from tests.reliability.fleet import STATUS_RULE, Fleet, Replica, leader, start_all, until
from tests.reliability.promises import accounted, settled
from tests.reliability.traffic import Stream, lead_events, status_event, time_to_voxys

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(90)]

TTL = 2.0
RATE = 20
MAX_IN_FLIGHT = 4


async def admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# --- 1. the wake-up channel cannot be opened ----------------------------------------------


def database_url(dsn: str, database: str, user: str | None = None) -> str:
    """`dsn` pointed at another database (and as another user)."""
    parts = urlsplit(dsn)
    userinfo, _, host = parts.netloc.rpartition("@")
    netloc = f"{user or userinfo}@{host}" if (user or userinfo) else host
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, ""))


@pytest.fixture
async def throwaway_database() -> AsyncIterator[str]:
    """A database of this test's own (never the shared one's public schema); dropped after."""
    name = f"vb_{uuid.uuid4().hex[:12]}"
    await admin(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        await admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def crowded_database() -> AsyncIterator[tuple[str, str]]:
    """A database and a role of this test's own: the role owns the database, and its
    CONNECTION LIMIT leaves room for a pool of one and the lease connection, but not for
    a LISTEN connection. Yields (database, role); both dropped afterwards."""
    role = f"vb_{uuid.uuid4().hex[:10]}"
    database = f"vb_{uuid.uuid4().hex[:12]}"
    await admin(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
    try:
        await admin(f"CREATE DATABASE {database} OWNER {role}")
        yield database, role
    finally:
        await admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        await admin(f"DROP ROLE IF EXISTS {role}")


@pytest.mark.postgres
@needs_postgres
async def test_a_listen_connection_the_role_cannot_open_degrades_delivery_to_polling_every_second(
    crowded_database: tuple[str, str], fleet: Fleet
) -> None:
    assert PG_DSN is not None
    database, role = crowded_database
    sandbox = fleet.sandbox()
    # The deliverer at its role's limit; a standby (another role) that receives the
    # webhooks, so that only a wake-up through PostgreSQL can tell the deliverer.
    crowded = database_url(PG_DSN, database, role) + "?pool_max=1"
    (deliverer,) = fleet.replicas(1, crowded, sandbox.url, ttl=TTL, rate=RATE, max_in_flight=4)
    (standby,) = fleet.replicas(
        1,
        database_url(PG_DSN, database),
        sandbox.url,
        ttl=TTL,
        rate=RATE,
        max_in_flight=4,
    )
    await start_all([deliverer])
    assert await leader([deliverer]) is deliverer
    await start_all([standby])
    await until(lambda: deliverer.lines("delivery.wakeup_unavailable"), 10, "the outage logged")

    waits = [await time_to_voxys(sandbox, standby, lead, STRIPE_SECRET) for lead in (1, 2, 3)]
    # Polled every second (DEGRADED_POLL_S), not every 30 s; nothing stopped, nothing failed.
    assert max(waits) < 1.8, waits
    status, text = await deliverer.get("/readyz")
    assert status == 200 and '"delivery_role": "deliverer"' in text, text
    assert not deliverer.lines("task.failed") and not deliverer.lines("task.ended")

    # Once the role has room again, the channel comes back and wakes the deliverer at once.
    await admin(f"ALTER ROLE {role} CONNECTION LIMIT 3")
    await until(lambda: deliverer.lines("delivery.wakeup_restored"), 10, "the channel back")
    waits = [await time_to_voxys(sandbox, standby, lead, STRIPE_SECRET) for lead in (4, 5, 6)]
    assert max(waits) < 0.5, waits


# --- 3. recording an answer fails ---------------------------------------------------------

LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""
# The bridge's writer waits up to SQLite's busy timeout (5 s) for the lock, then fails
# every write of that group; the next group waits again. Held past two timeouts, the
# second group - every answer that came back meanwhile - fails for certain.
HOLD_S = 10.5


@contextlib.asynccontextmanager
async def sqlite_locked(db: Path, seconds: float) -> AsyncIterator[None]:
    """Another process holds the file's write lock from entry for `seconds`; the exit
    waits until it let go."""
    with subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert await asyncio.to_thread(proc.stdout.readline) == "locked\n"
        yield
        assert await asyncio.to_thread(proc.wait, seconds + 10) == 0


REFUSE_DELIVERED = """
CREATE FUNCTION refuse_delivered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'injected by the test: no settle now'; END $$;
CREATE TRIGGER refuse_delivered BEFORE UPDATE OF state ON transitions
FOR EACH ROW WHEN (NEW.state = 'delivered') EXECUTE FUNCTION refuse_delivered();
"""


@contextlib.asynccontextmanager
async def postgres_refusing_settles(storage: str, seconds: float) -> AsyncIterator[None]:
    """For `seconds` from entry, PostgreSQL raises an error at every attempt to mark a
    transition delivered (a trigger in the test's own schema): a real statement error on
    the settle, while the lease, claims and ingest go on. The exit waits until it ends."""
    import asyncpg

    dsn, _, schema = storage.partition("?schema=")
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        await conn.execute(REFUSE_DELIVERED)
        yield
        await asyncio.sleep(seconds)  # the fault itself
        await conn.execute("DROP TRIGGER refuse_delivered ON transitions")
    finally:
        await conn.close()


async def test_answers_that_cannot_be_recorded_for_seconds_are_recorded_later_and_nothing_sticks(
    storage: str, fleet: Fleet
) -> None:
    sandbox = fleet.sandbox(latency=0.5)  # so that PATCHes are in flight when writes fail
    (replica,) = fleet.replicas(1, storage, sandbox.url, ttl=TTL, rate=RATE, max_in_flight=4)
    await start_all([replica])
    leads = range(1, 13)
    stream = Stream([replica], STRIPE_SECRET, per_second=40)
    posting = asyncio.create_task(stream.post_all(lead_events(leads)))
    await until(lambda: len(sandbox.arrivals()) >= 2, 20, "PATCHes in flight")
    if storage.startswith("sqlite"):
        fault = sqlite_locked(Path(storage.removeprefix("sqlite:///")), HOLD_S)
    else:
        fault = postgres_refusing_settles(storage, 2.0)
    async with fault:
        pass
    await posting
    await settled(sandbox, leads, timeout=30)
    await accounted(storage, stream.answered, leads)
    assert replica.lines("delivery.settle_failed"), "no settle failed: the fault missed"
    assert replica.lines("delivery.settle_recovered")


async def test_an_auth_probe_whose_answer_cannot_be_recorded_still_ends_the_pause(
    tmp_path: Path, rlb_env: dict[str, str]
) -> None:
    """In process (so that the probe's arrival is seen at once), on a real SQLite file
    that another process locks while the probe is in flight."""
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    await fake.start()
    config = bridge_config(port=0, db=tmp_path / "x.db", voxys_url=fake.base_url, rate=RATE)
    config["voxys"]["retry"]["auth_probe"] = {"initial": "200ms", "max": "400ms"}
    bundle = load_bundle(write_yaml(tmp_path / "bridge.yaml", config))
    db = tmp_path / "auth.db"
    store = SqliteStore(db)
    await store.open()
    client = VoxysClient(bundle.config.voxys)
    await client.start()
    runtime = Runtime(bundle=bundle, store=store)
    deliverer = Deliverer(runtime, client, await take_free(SqliteLease(store)))
    pauses = deliverer.pauses
    task = asyncio.create_task(deliverer.run())
    try:
        fake.revoke(VOXYS_TOKEN)
        await store.ingest([queued(lead) for lead in range(1, 6)], time.time())
        deliverer.wake()
        await until(lambda: bool(pauses.paused), 10, "the token paused")
        fake.latency = 1.0  # the probe stays in flight while the lock is taken
        fake.restore(VOXYS_TOKEN)
        await until(lambda: any(c.token_valid for c in fake.calls), 10, "the probe sent")
        probe = next(c for c in fake.calls if c.token_valid)
        with capture_logs() as logs:
            async with sqlite_locked(db, HOLD_S):
                assert probe.status is None  # its 200 comes back while nothing can be written
        assert any(e["event"] == "delivery.settle_failed" for e in logs), logs

        async def all_delivered() -> bool:
            stats = await store.stats(time.time())
            return stats.transitions["delivered"] == 5

        await until(all_delivered, 20, "every transition delivered once the pause ended")
        assert not pauses.paused
        assert {c.lead_id for c in fake.calls if c.status == 200} == set(range(1, 6))
    finally:
        await deliverer.stop(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await client.close()
        await store.close()
        await fake.stop()


def queued(lead: int) -> tuple[Event, Evaluation]:
    now = time.time()
    event = Event(
        source="stripe", event_id=f"evt_auth_{lead}", occurred_at=now, received_at=now, payload={}
    )
    transition = Transition(rule="r", account_id=7, lead_id=lead, status=LeadStatus.WON)
    return event, Evaluation(Outcome.MATCHED, (transition,), matched_rules=("r",))


# --- 4. two replays at once ---------------------------------------------------------------

STATUSES = ("open", "won", "lost", "snoozed")
UNMAPPABLE = {**STATUS_RULE, "lead_id": "{{ event.data.object.metadata.lead }}"}  # no such key


async def replay(replica: Replica) -> dict[str, Any]:
    body = {"outcome": "unmapped", "since": "2000-01-01T00:00:00Z"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{replica.url}/admin/events/replay",
            json=body,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        answer: dict[str, Any] = await resp.json()
        return answer


async def test_two_replays_of_the_same_events_at_once_queue_and_send_each_transition_once(
    storage: str, fleet: Fleet
) -> None:
    sandbox = fleet.sandbox()
    replicas = fleet.replicas(
        2,
        storage,
        sandbox.url,
        ttl=TTL,
        rate=1000,
        max_in_flight=8,
        coalesce=False,
        rules=[UNMAPPABLE],
    )
    await start_all(replicas)
    base = int(time.time()) - 3600
    events = [
        status_event(lead, STATUSES[n % 4], base + n, prefix=f"evt_{n}")
        for lead in range(1, 31)
        for n in range(10)
    ]
    stream = Stream(replicas, STRIPE_SECRET, per_second=500)
    await stream.post_all(events)
    assert not sandbox.arrivals()  # nothing could be mapped
    # The rule is fixed: hot reload, then an operator (or two) replays.
    for replica in replicas:
        config = copy.deepcopy(replica.config)
        config["rules"] = [STATUS_RULE]
        replica.write_config(config)
    for replica in replicas:
        await until(lambda r=replica: r.lines("config.reloaded"), 15, f"{replica.name} reloaded")
    answers = await asyncio.gather(replay(replicas[0]), replay(replicas[1]))
    # Between them they queued each transition once, although both chose all 300 events
    # (they raced).
    assert sum(a["transitions"] for a in answers) == 300, answers
    assert [a["events"] for a in answers] == [300, 300], answers

    # Each transition once: delivered, or stale when the other replay had already queued
    # (and delivery sent) a newer one of its lead; never 600 PATCHes.
    states = await until_settled(storage, 300)
    arrivals = sandbox.arrivals()
    assert len(arrivals) == states["delivered"] == 300 - states["stale"], states
    per_lead = Counter(a.lead for a in arrivals)
    assert max(per_lead.values()) <= 10, per_lead
    final = {a.lead: a.status for a in arrivals}
    assert final == {lead: STATUSES[9 % 4] for lead in range(1, 31)}


async def until_settled(url: str, count: int, timeout: float = 30) -> dict[str, int]:
    """Wait until the store's `count` transitions (and no more) are delivered or stale."""
    store = open_store(url)
    await store.open()
    try:
        deadline = time.monotonic() + timeout
        while True:
            stats = (await store.stats(time.time())).transitions
            assert sum(stats.values()) == count, stats
            if stats["delivered"] + stats["stale"] == count:
                return stats
            assert time.monotonic() < deadline, stats
            await asyncio.sleep(0.1)
    finally:
        await store.close()


# --- 8. two spellings of one store ----------------------------------------------------------


async def one_lease(fleet: Fleet, urls: list[str], store: str) -> None:
    """Two replicas on `urls` (one store): exactly one delivers, never over the rate."""
    sandbox = fleet.sandbox(latency=0.05)
    replicas = fleet.replicas(2, urls, sandbox.url, ttl=TTL, rate=RATE, max_in_flight=4)
    await start_all(replicas)
    await leader(replicas)
    leads = range(1, 21)
    stream = Stream(replicas, STRIPE_SECRET, per_second=80)
    await stream.post_all(lead_events(leads))
    seen = await settled(sandbox, leads, timeout=30)
    flags = [await r.leads() for r in replicas]
    assert sorted(flags) == [False, True], flags  # exactly one bridge_delivery_leader 1.0
    assert seen.max_in_window <= RATE, seen
    assert seen.duplicates == 0, seen
    await accounted(store, stream.answered, leads)


async def test_a_symlinked_sqlite_file_and_its_real_path_are_one_lease(
    tmp_path: Path, fleet: Fleet
) -> None:
    real = tmp_path / "data" / "bridge.db"
    real.parent.mkdir()
    alias = tmp_path / "alias.db"
    alias.symlink_to(real)
    await one_lease(fleet, [f"sqlite:///{real}", f"sqlite:///{alias}"], f"sqlite:///{real}")


@pytest.mark.postgres
@needs_postgres
async def test_public_spelled_out_and_no_schema_at_all_are_one_lease(
    throwaway_database: str, fleet: Fleet
) -> None:
    assert PG_DSN is not None
    url = database_url(PG_DSN, throwaway_database)
    await one_lease(fleet, [f"{url}?schema=public", url], url)
