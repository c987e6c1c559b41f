"""Fault matrix: the real worker and client against a fake Voxys that misbehaves.

Each fault ends with every transition delivered, or dead-lettered with a reason; the
fake never sees more than the configured rate in any window; and the number of
requests stays within what the backoff allows (no busy loop). Time is the real clock:
these are the worker's real timers with backoffs of 50-200 ms.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bridge.bundle import load_bundle
from bridge.delivery import Deliverer
from bridge.fakevoxys import Answer, FakeVoxys
from bridge.lease import take_free
from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition
from bridge.pacing import PACE_MARGIN
from bridge.pauses import AuthPauses
from bridge.runtime import Runtime
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite.lease import SqliteLease
from bridge.voxys import VoxysClient
from tests.reliability.conftest import VOXYS_TOKEN, bridge_config, write_yaml

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(60)]

RATE = 20  # requests per second the bridge is configured to send at most
RATE_WINDOW_S = 1.0  # ... per this window (voxys.rate_limit.per_seconds)
LEADS = 12
MAX_ATTEMPTS = 40
INITIAL_BACKOFF_S = 0.05
PROBE_S = 0.2  # first auth probe after a 401 (30 s in production)


@dataclass
class Rig:
    fake: FakeVoxys
    store: SqliteStore
    deliverer: Deliverer
    db: Path
    task: asyncio.Task[None] | None = None

    async def queue(self, leads: range, age: float = 0.0) -> None:
        """Queue one transition per lead, received `age` seconds ago."""
        now = time.time() - age
        items = []
        for lead in leads:
            event = Event(
                source="stripe",
                event_id=f"evt_fault_{lead}",
                occurred_at=now,
                received_at=now,
                payload={},
            )
            evaluation = Evaluation(
                outcome=Outcome.MATCHED,
                transitions=(
                    Transition(rule="r", account_id=7, lead_id=lead, status=LeadStatus.WON),
                ),
                matched_rules=("r",),
            )
            items.append((event, evaluation))
        await self.store.ingest(items, now)
        self.deliverer.wake()

    def start(self) -> None:
        self.task = asyncio.create_task(self.deliverer.run())

    def rows(self) -> list[tuple[Any, ...]]:
        conn = sqlite3.connect(self.db)
        try:
            return conn.execute(
                "SELECT lead_id, state, attempts, reason FROM transitions ORDER BY lead_id"
            ).fetchall()
        finally:
            conn.close()

    async def settled(self, count: int, timeout: float = 20.0) -> list[tuple[Any, ...]]:
        """Wait until `count` transitions are delivered or dead; their rows."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.rows()
            if sum(r[1] in ("delivered", "dead") for r in rows) >= count:
                return rows
            await asyncio.sleep(0.02)
        raise AssertionError(f"not settled within {timeout} s: {self.rows()}")

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, "condition not met in time"
            await asyncio.sleep(0.01)

    def within_rate(self) -> None:
        assert self.fake.max_in_window(1.0) <= RATE


Make = Callable[..., Any]


@pytest.fixture
async def rig(tmp_path: Path, rlb_env: dict[str, str]) -> AsyncIterator[Make]:
    made: list[tuple[Rig, VoxysClient]] = []

    async def make(**options: Any) -> Rig:
        fake = FakeVoxys(tokens=VOXYS_TOKEN)
        await fake.start()
        settings: dict[str, Any] = {"rate": RATE, "max_attempts": MAX_ATTEMPTS, **options}
        config = bridge_config(port=0, db=tmp_path / "x.db", voxys_url=fake.base_url, **settings)
        bundle = load_bundle(write_yaml(tmp_path / f"bridge{len(made)}.yaml", config))
        db = tmp_path / f"faults{len(made)}.db"
        store = SqliteStore(db)
        await store.open()
        term = await take_free(SqliteLease(store))
        client = VoxysClient(bundle.config.voxys)
        await client.start()
        pauses = AuthPauses(probe_initial=PROBE_S, probe_max=2 * PROBE_S)
        deliverer = Deliverer(Runtime(bundle=bundle, store=store), client, term, pauses=pauses)
        r = Rig(fake, store, deliverer, db)
        made.append((r, client))
        return r

    yield make
    for r, client in made:
        await r.deliverer.stop(1.0)
        if r.task is not None:
            r.task.cancel()
            await asyncio.gather(r.task, return_exceptions=True)
        await client.close()
        await r.store.close()
        await r.fake.stop()


def delivered_once_each(rig: Rig, rows: list[tuple[Any, ...]]) -> None:
    assert [r[1] for r in rows] == ["delivered"] * LEADS
    ok = sorted(c.lead_id for c in rig.fake.calls if c.status == 200 and not c.dropped)
    assert ok == list(range(1, LEADS + 1))


async def test_an_outage_longer_than_several_backoffs_ends_delivered_without_a_busy_loop(
    rig: Make,
) -> None:
    r: Rig = await rig()
    port = int(r.fake.base_url.rsplit(":", 1)[1])
    await r.fake.stop()  # connection refused from now on
    outage_s = 1.0  # 5 times backoff.max, 20 times backoff.initial
    await r.queue(range(1, LEADS + 1))
    r.start()
    started = time.monotonic()
    # A new deliverer sends nothing in its first rate-limit window (Pacer.quiet_window);
    # the outage is measured from the end of it.
    quiet_s = RATE_WINDOW_S * PACE_MARGIN
    await asyncio.sleep(quiet_s + outage_s)  # the outage itself: the fault lasts this long
    attempts_during = sum(row[2] for row in r.rows())
    await r.fake.start(port=port)
    rows = await r.settled(LEADS)
    recovered_s = time.monotonic() - started - quiet_s - outage_s

    delivered_once_each(r, rows)
    # Each lead is tried at most once per backoff.initial while Voxys is away.
    assert LEADS <= attempts_during <= LEADS * (outage_s / INITIAL_BACKOFF_S + 1)
    assert all(row[2] >= 2 for row in rows)  # it really did retry through the outage
    assert recovered_s < 1.0  # back within about one backoff.max of Voxys returning
    r.within_rate()


def sent_during_retry_after(fake: FakeVoxys, wait_s: float) -> list[float]:
    """Arrival offsets of requests sent while a Retry-After was running.

    Requests arriving within 20 ms of the 429 were already on the wire when it came.
    """
    throttled = [c.at for c in fake.calls if c.status == 429]
    return [
        round(c.at - t, 3)
        for t in throttled
        for c in fake.calls
        if t + 0.02 <= c.at < t + wait_s - 0.01
    ]


async def test_a_429_storm_with_retry_after_is_retried_without_using_attempts(rig: Make) -> None:
    r: Rig = await rig()
    r.fake.script(*[Answer(429, headers={"Retry-After": "1"}, body="slow down")] * 3)
    await r.queue(range(1, LEADS + 1))
    started = time.monotonic()
    r.start()
    rows = await r.settled(LEADS)

    delivered_once_each(r, rows)
    assert all(row[2] == 1 for row in rows)  # a 429 does not use up an attempt
    assert len(r.fake.calls) == LEADS + 3  # each throttled request is sent once more
    assert time.monotonic() - started >= 1.0
    r.within_rate()


async def test_nothing_is_sent_while_a_retry_after_runs(rig: Make) -> None:
    r: Rig = await rig()
    r.fake.script(*[Answer(429, headers={"Retry-After": "1"}, body="slow down")] * 3)
    await r.queue(range(1, LEADS + 1))
    r.start()
    await r.settled(LEADS)

    assert sent_during_retry_after(r.fake, 1.0) == []


async def test_a_429_for_a_transition_too_old_to_retry_still_holds_every_request(
    rig: Make,
) -> None:
    # Given a transition past retry.max_age (1 day) that Voxys answers 429, Retry-After 1 s ...
    r: Rig = await rig()
    r.fake.script(Answer(429, headers={"Retry-After": "1"}, body="slow down"))
    await r.queue(range(1, 2), age=2 * 86400)
    r.start()
    await r.until(lambda: bool(r.fake.calls))
    # ... when more work arrives right after that answer,
    await r.queue(range(2, LEADS + 1))
    rows = await r.settled(LEADS)

    # then the old one is dead-lettered, yet nothing is sent until the Retry-After is over.
    assert [(row[0], row[1]) for row in rows if row[1] == "dead"] == [(1, "dead")]
    assert sent_during_retry_after(r.fake, 1.0) == []


async def test_a_stricter_rate_limit_at_voxys_is_met_by_slowing_down(rig: Make) -> None:
    r: Rig = await rig()
    r.fake.fail_rate_limit = (5, 1.0)  # Voxys counts stricter than configured: 5/s
    await r.queue(range(1, LEADS + 1))
    r.start()
    rows = await r.settled(LEADS, timeout=30)

    delivered_once_each(r, rows)
    throttled = sum(c.status == 429 for c in r.fake.calls)
    # Every 429 halves the pace and carries Retry-After: the storm dies out instead of
    # feeding itself. Bound: one claim of max_in_flight (8), twice.
    assert throttled <= 2 * 8
    r.within_rate()


async def test_scripted_429s_without_retry_after_halve_the_pace(rig: Make) -> None:
    r: Rig = await rig()
    r.fake.script(*[Answer(429, body="Too Many Requests")] * 3)
    await r.queue(range(1, LEADS + 1))
    r.start()
    rows = await r.settled(LEADS, timeout=30)

    delivered_once_each(r, rows)
    assert len(r.fake.calls) == LEADS + 3
    assert r.deliverer.client.pacer.fraction < 1.0  # the pace was halved, not kept
    r.within_rate()


async def test_answers_slower_than_the_timeout_are_retried_until_voxys_is_fast_again(
    rig: Make,
) -> None:
    r: Rig = await rig(timeout="150ms")
    r.fake.latency = 0.4
    await r.queue(range(1, LEADS + 1))
    r.start()
    await r.until(lambda: len(r.fake.calls) >= 2 * LEADS)
    r.fake.latency = 0.0
    rows = await r.settled(LEADS)

    assert [row[1] for row in rows] == ["delivered"] * LEADS
    assert all(row[2] >= 2 for row in rows)  # each timed out at least once
    # Each attempt waits for the timeout and then at least backoff.initial.
    assert max(row[2] for row in rows) <= 2 + (len(r.fake.calls) // LEADS)
    r.within_rate()


async def test_connections_reset_mid_response_are_retried_and_delivered(rig: Make) -> None:
    r: Rig = await rig()
    r.fake.script(
        *[Answer.reset()] * 3,
        *[Answer.reset(partial=True)] * 3,
        *[Answer.reset(apply=True)] * 3,
    )
    await r.queue(range(1, LEADS + 1))
    r.start()
    rows = await r.settled(LEADS)

    assert [row[1] for row in rows] == ["delivered"] * LEADS
    assert len(r.fake.calls) == LEADS + 9  # one retry per reset, no more
    assert sum(c.dropped for c in r.fake.calls) == 9
    r.within_rate()


async def test_a_500_burst_ends_delivered_or_dead_lettered_with_the_reason(rig: Make) -> None:
    r: Rig = await rig(max_attempts=3)
    r.fake.script(*[Answer(500, body={"error": "boom"})] * 30)
    await r.queue(range(1, LEADS + 1))
    r.start()
    rows = await r.settled(LEADS)

    dead = [row for row in rows if row[1] == "dead"]
    delivered = [row for row in rows if row[1] == "delivered"]
    assert len(dead) + len(delivered) == LEADS
    assert dead, "30 errors over 12 leads with 3 attempts each must dead-letter some"
    for row in dead:
        assert row[2] == 3
        assert row[3] == "gave up after 3 attempts: HTTP 500: boom"
    assert len(r.fake.calls) == 30 + len(delivered)  # never more than max_attempts each
    r.within_rate()


async def test_a_revoked_token_pauses_delivery_and_resumes_when_restored(rig: Make) -> None:
    r: Rig = await rig()
    r.fake.revoke(VOXYS_TOKEN)
    await r.queue(range(1, LEADS + 1))
    r.start()
    paused_s = 1.5
    await asyncio.sleep(paused_s)  # the token stays revoked this long
    refused = len(r.fake.calls)
    r.fake.restore(VOXYS_TOKEN)
    rows = await r.settled(LEADS)

    delivered_once_each(r, rows)
    assert all(row[2] == 1 for row in rows)  # a 401 uses up no attempt and dead-letters nothing
    # The first batch in flight, then one probe per PROBE_S at most.
    assert refused <= 8 + paused_s / PROBE_S + 1
    assert refused >= 2  # it did probe again while paused
    r.within_rate()
