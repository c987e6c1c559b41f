"""The fenced delivery lease changing hands, tried the Jepsen way on real processes.

Bridge replicas (`voxys-bridge serve`) share one store, real SQLite files or real
PostgreSQL; Voxys is `voxys-bridge sandbox --json` in a process of its own, which logs
the time every request arrived. A stream of signed webhooks gives each lead an older
`won` and a newer `lost`; mid-stream the deliverer is killed, frozen, cut off from the
database or the database goes away. Checked from outside afterwards: Voxys never saw
more than the rate limit in any window, every lead ends in its newest state, at most
`max_in_flight` PATCHes were repeated, and every event answered 2xx is settled.

Timing: a short lease (`storage.lease_ttl: 2s`: renewed every 0.67 s, the holder stops
0.5 s before it can expire) keeps every handover to a few seconds.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from bridge.store.sqlite.wakeup import socket_path
from tests.conftest import PG_DSN, needs_postgres
from tests.reliability.conftest import STRIPE_SECRET
from tests.reliability.dbfaults import backends, proxied, terminate
from tests.reliability.fleet import Fleet, Replica, leader, start_all, until
from tests.reliability.promises import Verdict, accounted, settled
from tests.reliability.traffic import Stream, lead_events, time_to_voxys

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(120)]

TTL = 2.0  # storage.lease_ttl
RATE = 20  # voxys.rate_limit: requests per second
MAX_IN_FLIGHT = 4
LATENCY = 0.1  # each Voxys answer takes this long: requests are in flight when we strike
POST_RATE = 30.0  # webhooks per second from the senders
LEADS = range(1, 31)
OUTAGE_S = 10.0
POSTGRES_PORT = urlsplit(PG_DSN).port or 5432 if PG_DSN else 5432

Fault = Callable[[Fleet, Stream, Replica, list[Replica]], Awaitable[None]]


async def fault_mid_stream(
    fleet: Fleet,
    storage: str,
    replicas: int,
    fault: Fault,
    *,
    urls: list[str] | None = None,
    leads: range = LEADS,
    bulk: dict[str, Any] | None = None,
) -> tuple[Verdict, Stream]:
    """Start the fleet, stream events, strike once deliveries are flowing, then wait for
    every lead to reach its newest state and check the promises.

    `urls`: each replica's own storage URL (through a proxy, say) to the store at `storage`.
    `bulk`: voxys.bulk; then at most `max_in_flight` batches are repeated.
    """
    sandbox = fleet.sandbox(latency=LATENCY)
    fleet_ = fleet.replicas(
        replicas,
        urls or storage,
        sandbox.url,
        ttl=TTL,
        rate=RATE,
        max_in_flight=MAX_IN_FLIGHT,
        bulk=bulk,
    )
    # One after the other, as replicas of a deployment start: the first delivers, and
    # the standbys' timers are out of phase with its own.
    await start_all(fleet_[:1])
    holder = await leader(fleet_[:1])
    await start_all(fleet_[1:])
    stream = Stream(fleet_, STRIPE_SECRET, per_second=POST_RATE)
    posting = asyncio.create_task(stream.post_all(lead_events(leads)))
    try:
        await until(lambda: len(sandbox.arrivals()) >= 10, 20, "deliveries flowing")
        await fault(fleet, stream, holder, fleet_)
        await posting
    finally:
        posting.cancel()
    seen = await settled(sandbox, leads, timeout=45)
    assert seen.max_in_window <= RATE, seen
    repeatable = MAX_IN_FLIGHT * (bulk["max_batch"] if bulk else 1)  # requests in flight
    assert seen.duplicates <= repeatable, seen
    await accounted(storage, stream.answered, leads)
    assert len(stream.answered) == 2 * len(leads)
    return seen, stream


# --- the faults ---------------------------------------------------------------------------


async def sigkill(fleet: Fleet, stream: Stream, holder: Replica, replicas: list[Replica]) -> None:
    stream.down.add(holder.name)
    holder.kill()
    await leader(r for r in replicas if r is not holder)


async def test_a_sigkilled_deliverer_is_replaced_without_two_senders(
    storage: str, fleet: Fleet
) -> None:
    await fault_mid_stream(fleet, storage, 2 if storage.startswith("sqlite") else 3, sigkill)


async def lease_row_locked(storage: str) -> bool:
    """True when some transaction holds the lease row locked (a claim or settle under way)."""
    import asyncpg

    dsn, _, schema = storage.partition("?schema=")
    conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
    try:
        async with conn.transaction():
            await conn.execute("SELECT 1 FROM lease WHERE name = 'delivery' FOR UPDATE NOWAIT")
        return False
    except asyncpg.LockNotAvailableError:
        return True
    finally:
        await conn.close()


def sqlite_write_locked(storage: str) -> bool:
    """True when some process holds the SQLite file's write lock."""
    conn = sqlite3.connect(storage.removeprefix("sqlite:///"), timeout=0, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        conn.close()


async def freeze(holder: Replica, when: Callable[[], Awaitable[bool]], tries: int = 2000) -> None:
    """SIGSTOP `holder` at a moment `when()` says yes to (SIGCONT and try again otherwise)."""
    for _ in range(tries):
        holder.signal(signal.SIGSTOP)
        if await when():
            return
        holder.signal(signal.SIGCONT)
        await asyncio.sleep(0.003)
    raise AssertionError(f"never caught the moment in {tries} tries")


def sigstop(storage: str, *, inside_transaction: bool) -> Fault:
    """Freeze the deliverer until a standby has taken over and delivered, then resume it."""

    async def when() -> bool:
        if storage.startswith("sqlite"):
            # A frozen holder of SQLite's one write lock stops every writer, ingest too:
            # nobody can take over until it runs again. Freeze it between transactions.
            return not sqlite_write_locked(storage)
        return await lease_row_locked(storage) == inside_transaction

    async def fault(fleet: Fleet, stream: Stream, holder: Replica, replicas: list[Replica]) -> None:
        stream.down.add(holder.name)
        sandbox = fleet.sandboxes[0]
        await freeze(holder, when)
        frozen_at = time.monotonic()
        new = await leader([r for r in replicas if r is not holder], timeout=4 * TTL + 5)
        took_over = time.monotonic() - frozen_at
        await until(
            lambda: sum(a.at > frozen_at + took_over for a in sandbox.arrivals()) >= 5,
            10,
            f"{new.name} delivering",
        )
        holder.signal(signal.SIGCONT)
        stream.down.discard(holder.name)

        async def standing_by() -> bool:
            return await holder.leads() is False

        await until(standing_by, 10, "the thawed holder stands by")

    return fault


async def test_a_frozen_deliverer_is_replaced_and_stays_quiet_when_it_thaws(
    storage: str, fleet: Fleet
) -> None:
    await fault_mid_stream(fleet, storage, 2, sigstop(storage, inside_transaction=False))
    # ... and leaves its successor's wake-up channel alone: an event it receives now wakes
    # the successor at once (without the channel, only the successor's own renewals,
    # every ttl/3, would wake it).
    thawed, successor = fleet.started
    assert await successor.leads()
    if storage.startswith("sqlite"):
        wake = socket_path(Path(storage.removeprefix("sqlite:///")))
        assert wake.is_socket(), f"the successor's {wake.name} was removed"
    sandbox = fleet.sandboxes[0]
    waits = [await time_to_voxys(sandbox, thawed, lead, STRIPE_SECRET) for lead in (91, 92, 93)]
    assert max(waits) < TTL / 3, waits


@needs_postgres
@pytest.mark.postgres
async def test_a_deliverer_frozen_inside_a_transaction_is_replaced_within_a_few_ttls(
    pg_schema: str, fleet: Fleet
) -> None:
    storage = f"{PG_DSN}?schema={pg_schema}"
    await fault_mid_stream(fleet, storage, 2, sigstop(storage, inside_transaction=True))


# --- PostgreSQL connections ---------------------------------------------------------------


def drop_lease_connection(times: int) -> Fault:
    """pg_terminate_backend of the deliverer's lease connection, `times` times in a row
    (the deliverer of the moment each time: the fence keeps it the same one)."""

    async def fault(fleet: Fleet, stream: Stream, holder: Replica, replicas: list[Replica]) -> None:
        assert PG_DSN is not None
        pids: list[int] = []

        async def found() -> bool:
            current = await leader(replicas)
            pids[:] = await backends(PG_DSN, current.pid, "voxys-bridge-lease")
            return len(pids) == 1

        for _ in range(times):
            await until(found, 10, "the deliverer's lease connection")
            assert await terminate(PG_DSN, pids) == 1
            await asyncio.sleep(TTL / 3)  # about one renewal between two cuts

    return fault


@needs_postgres
@pytest.mark.postgres
async def test_killing_the_deliverers_lease_connection_never_makes_two_senders(
    pg_schema: str, fleet: Fleet
) -> None:
    storage = f"{PG_DSN}?schema={pg_schema}"
    # Six seconds of webhooks: the old lease's checks came every 5 s, so the old design
    # let two processes send for seconds after such a cut.
    await fault_mid_stream(fleet, storage, 2, drop_lease_connection(times=3), leads=range(1, 91))


async def outage(fleet: Fleet, stream: Stream, holder: Replica, replicas: list[Replica]) -> None:
    """Every connection to PostgreSQL closed and new ones refused for 10 s."""
    (proxy,) = fleet.proxies
    proxy.cut()
    await asyncio.sleep(OUTAGE_S)  # the outage itself
    proxy.restore()


@needs_postgres
@pytest.mark.postgres
async def test_a_ten_second_database_outage_ends_with_one_sender_and_nothing_lost(
    pg_schema: str, fleet: Fleet
) -> None:
    assert PG_DSN is not None
    proxy = fleet.proxy(POSTGRES_PORT)
    url = f"{proxied(PG_DSN, proxy.port)}?schema={pg_schema}"
    await fault_mid_stream(fleet, f"{PG_DSN}?schema={pg_schema}", 2, outage, urls=[url, url])


async def partition(fleet: Fleet, stream: Stream, holder: Replica, replicas: list[Replica]) -> None:
    """The deliverer alone loses PostgreSQL (Voxys it still reaches) until a standby delivers."""
    proxy = fleet.proxies[fleet.started.index(holder)]
    proxy.cut()
    cut_at = time.monotonic()
    await leader([r for r in replicas if r is not holder], timeout=3 * TTL + 5)
    sandbox = fleet.sandboxes[0]
    await until(
        lambda: sum(a.at > cut_at + TTL for a in sandbox.arrivals()) >= 5, 15, "the new holder"
    )
    proxy.restore()


@needs_postgres
@pytest.mark.postgres
async def test_a_deliverer_cut_off_from_the_database_stops_before_its_successor_starts(
    pg_schema: str, fleet: Fleet
) -> None:
    assert PG_DSN is not None
    urls = [
        f"{proxied(PG_DSN, fleet.proxy(POSTGRES_PORT).port)}?schema={pg_schema}" for _ in range(2)
    ]
    await fault_mid_stream(fleet, f"{PG_DSN}?schema={pg_schema}", 2, partition, urls=urls)
