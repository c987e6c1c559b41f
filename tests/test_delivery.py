"""The delivery worker against a fake Voxys server: claims, sends, retries, pauses, fences.

What each answer leads to is tests/test_retry.py; the pace, tests/test_pacing.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog

from bridge.bundle import load_bundle
from bridge.delivery import Deliverer
from bridge.fakevoxys import Answer, FakeVoxys
from bridge.lease import Term, Timing, take_free
from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition
from bridge.pauses import AuthPauses
from bridge.runtime import Runtime
from bridge.store.base import Backend
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite.lease import SqliteLease
from bridge.store.sqlite.wakeup import Private
from bridge.voxys import VoxysClient
from tests.conftest import VOXYS_TOKEN, WriteConfig

NOW = 1_700_000_000.0


# --- the worker against a fake Voxys server ---------------------------------------------


class Harness:
    """A real store, the worker and a fake Voxys on loopback; events go straight to the store."""

    def __init__(self, runtime: Runtime, fake: FakeVoxys, deliverer: Deliverer) -> None:
        self.runtime = runtime
        self.fake = fake
        self.deliverer = deliverer
        self.task: asyncio.Task[None] | None = None
        self.clock = NOW
        self.seq = 0

    async def queue(
        self, lead_id: int, status: LeadStatus, *, occurred_at: float | None = None
    ) -> None:
        self.seq += 1
        event = Event(
            source="stripe",
            event_id=f"evt_{self.seq}",
            occurred_at=occurred_at if occurred_at is not None else self.clock + self.seq,
            received_at=self.clock,
            payload={},
        )
        evaluation = Evaluation(
            outcome=Outcome.MATCHED,
            transitions=(Transition(rule="r", account_id=7, lead_id=lead_id, status=status),),
            matched_rules=("r",),
        )
        await self.runtime.store.ingest([(event, evaluation)], self.clock)
        self.deliverer.stored(1)  # what ingest does (through Runtime.new_work)

    def start(self) -> None:
        self.task = asyncio.create_task(self.deliverer.run())

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        async def poll() -> None:
            while not condition():
                await asyncio.sleep(0.005)

        await asyncio.wait_for(poll(), timeout)

    async def states(self) -> dict[str, int]:
        stats = await self.runtime.store.stats(self.clock)
        return {k: v for k, v in stats.transitions.items() if v}

    async def until_states(self, expected: dict[str, int], timeout: float = 10.0) -> None:
        async def poll() -> None:
            while await self.states() != expected:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(poll(), timeout)

    async def idle(self) -> None:
        """Wait until no request is in flight."""
        await self.until(lambda: not self.deliverer.in_flight)


Factory = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def harness(write_config: WriteConfig, tmp_path: Path) -> AsyncIterator[Factory]:
    made: list[tuple[Harness, VoxysClient]] = []

    async def make(
        *,
        rate: bool = False,
        seed_leads: Any = None,
        term_clock: Callable[[], float] | None = None,
        busy_timeout: float = 5.0,
        **auth: float,
    ) -> Harness:
        fake = FakeVoxys(tokens=VOXYS_TOKEN, seed_leads=seed_leads)
        url = await fake.start()
        bundle = load_bundle(write_config(voxys_url=url))
        store = SqliteStore(tmp_path / f"d{len(made)}.db", busy_timeout=busy_timeout)
        backend = Backend(store, SqliteLease(store), Private())
        await backend.store.open()
        term = await take_free(backend.lease)
        if term_clock is not None:  # the term's validity on the test's own clock
            term = Term.granted(term.holder, term.epoch, Timing(60), term_clock(), term_clock)
        h: Harness
        runtime = Runtime(bundle=bundle, store=backend.store, clock=lambda: h.clock)
        client = VoxysClient(bundle.config.voxys, rate_limited=rate)
        await client.start()
        deliverer = Deliverer(
            runtime, client, term, clock=lambda: h.clock, pauses=AuthPauses(**auth)
        )
        h = Harness(runtime, fake, deliverer)
        made.append((h, client))
        return h

    yield make
    for h, client in made:
        await h.deliverer.stop(1.0)
        if h.task:
            h.task.cancel()
            await asyncio.gather(h.task, return_exceptions=True)
        await client.close()
        await h.runtime.store.close()
        await h.fake.stop()


async def test_a_queued_transition_is_patched_with_token_status_and_path(
    harness: Factory,
) -> None:
    h = await harness()
    await h.queue(42, LeadStatus.WON)
    h.start()
    await h.until(lambda: len(h.fake.calls) == 1)
    call = h.fake.calls[0]
    assert (call.method, call.path, call.token_valid) == (
        "PATCH",
        "/api/v1/accounts/7/leads/42/status",
        True,
    )
    assert call.body == {"status": "won"}
    await h.until_states({"delivered": 1})
    assert h.fake.leads[(7, 42)]["status"] == "won"


async def test_new_work_is_sent_at_once_without_polling(harness: Factory) -> None:
    h = await harness()
    h.start()
    await h.until(lambda: h.deliverer.idle_count == 1)  # the worker found nothing and waits
    await h.queue(1, LeadStatus.LOST)
    # IDLE_POLL_S is 30 s: only the wake-up can make this arrive within the timeout.
    await h.until(lambda: len(h.fake.calls) == 1, timeout=2.0)


async def test_several_pending_for_one_lead_send_only_the_newest(harness: Factory) -> None:
    h = await harness()
    await h.queue(42, LeadStatus.OPEN)
    await h.queue(42, LeadStatus.SNOOZED)
    await h.queue(42, LeadStatus.WON)
    h.start()
    await h.until(lambda: len(h.fake.calls) == 1)
    await h.until(lambda: h.fake.leads.get((7, 42), {}).get("status") == "won")
    assert [c.body for c in h.fake.calls] == [{"status": "won"}]
    await h.until_states({"delivered": 1, "superseded": 2})


async def test_an_event_older_than_the_last_delivered_one_is_skipped_as_stale(
    harness: Factory,
) -> None:
    h = await harness()
    await h.queue(42, LeadStatus.WON, occurred_at=NOW + 100)
    h.start()
    await h.until(lambda: len(h.fake.calls) == 1)
    await h.idle()
    await h.queue(42, LeadStatus.OPEN, occurred_at=NOW + 50)  # arrived late, happened earlier
    await h.until_states({"delivered": 1, "stale": 1})
    assert len(h.fake.calls) == 1


async def test_a_server_error_is_retried_then_delivered(harness: Factory) -> None:
    h = await harness()
    h.fake.script(Answer(status=500), Answer.reset())
    await h.queue(42, LeadStatus.WON)
    h.start()
    await h.until(lambda: len(h.fake.calls) == 1)
    await h.idle()
    [entry] = await h.runtime.store.ledger(7, 42)
    assert (entry.state, entry.attempts, entry.http_status) == ("pending", 1, 500)
    h.clock = entry.next_attempt_at or 0.0  # move the injected clock to the retry time
    h.deliverer.wake()
    await h.until(lambda: len(h.fake.calls) == 2)  # the reset
    await h.idle()
    [entry] = await h.runtime.store.ledger(7, 42)
    h.clock = entry.next_attempt_at or 0.0
    h.deliverer.wake()
    await h.until(lambda: len(h.fake.calls) == 3)
    await h.until(lambda: h.fake.leads.get((7, 42), {}).get("status") == "won")


async def test_an_unknown_lead_dead_letters_after_the_not_found_attempts(
    harness: Factory,
) -> None:
    h = await harness(seed_leads=[(7, 1)])
    await h.queue(42, LeadStatus.WON)
    h.start()
    for n in (1, 2, 3):
        await h.until(lambda n=n: len(h.fake.calls) == n)
        await h.idle()
        [entry] = await h.runtime.store.ledger(7, 42)
        if entry.next_attempt_at:
            h.clock = entry.next_attempt_at
            h.deliverer.wake()
    [dead] = await h.runtime.store.dead_letters()
    assert dead.http_status == 404
    assert (dead.reason or "").startswith("lead not found after 3 attempts")


async def test_a_refused_token_pauses_delivery_and_a_probe_resumes_it(harness: Factory) -> None:
    h = await harness(probe_initial=60, probe_max=300)
    h.fake.revoke(VOXYS_TOKEN)
    for lead in (1, 2, 3):
        await h.queue(lead, LeadStatus.WON)
    h.start()
    await h.until(lambda: h.deliverer.pauses.token_wide and not h.deliverer.in_flight)
    refused = len(h.fake.calls)
    assert 1 <= refused <= 3  # what was in flight when the pause began, no more
    assert (await h.states()) == {"pending": 3}  # nothing burnt, nothing dead
    h.clock += 59
    idle = h.deliverer.idle_count
    h.deliverer.wake()
    # The worker looks once more and, a second before the probe is due, waits again.
    await h.until(lambda: h.deliverer.idle_count > idle)
    assert h.deliverer.in_flight == 0
    assert len(h.fake.calls) == refused  # no probe before its time
    h.fake.restore(VOXYS_TOKEN)
    h.clock += 1
    h.deliverer.wake()
    await h.until(lambda: len(h.fake.calls) == refused + 3)
    await h.until(lambda: not h.deliverer.pauses.paused)
    await h.until_states({"delivered": 3})


async def test_a_429_with_retry_after_pauses_the_token_without_using_an_attempt(
    harness: Factory,
) -> None:
    h = await harness()
    h.fake.script(Answer(status=429, headers={"Retry-After": "120"}))
    await h.queue(42, LeadStatus.WON)
    h.start()
    await h.until(lambda: len(h.fake.calls) == 1)
    await h.idle()
    [entry] = await h.runtime.store.ledger(7, 42)
    assert (entry.state, entry.attempts, entry.next_attempt_at) == ("pending", 0, NOW + 120)


# --- the lease fence and settles that cannot be lost ----------------------------------


class TermClock:
    """The monotonic clock the lease term reads, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_request_waiting_for_the_rate_limit_is_not_sent_once_the_term_ran_out(
    harness: Factory,
) -> None:
    # Given a deliverer whose first rate window is quiet, so its first request waits.
    clock = TermClock()
    h = await harness(rate=True, term_clock=clock)
    await h.queue(42, LeadStatus.WON)
    with structlog.testing.capture_logs() as logs:
        h.start()
        await h.until_states({"in_flight": 1})
        # When the lease term runs out (renewals failing) while it waits ...
        clock.now += 60
        # ... then it is held back, not sent, and its claim goes back to the queue.
        await h.until(lambda: any(e["event"] == "transition.held" for e in logs))
        await h.until_states({"pending": 1})
    assert h.fake.calls == []

    # And once a renewal succeeds, it goes out.
    h.deliverer.term.renewed(clock.now)
    h.deliverer.wake()
    await h.until_states({"delivered": 1})
    assert [c.body for c in h.fake.calls] == [{"status": "won"}]


async def test_an_answer_the_store_cannot_record_yet_is_recorded_once_it_can(
    harness: Factory, tmp_path: Path
) -> None:
    # Given a request in flight (Voxys takes 300 ms) ...
    h = await harness(busy_timeout=0.05)
    h.fake.latency = 0.3
    await h.queue(42, LeadStatus.WON)
    h.start()
    await h.until(lambda: bool(h.fake.calls) or h.deliverer.in_flight > 0)
    # ... when another process holds the database's write lock as the answer comes back,
    db = h.runtime.store.path
    assert db is not None
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    with structlog.testing.capture_logs() as logs:
        await h.until(
            lambda: sum(e["event"] == "delivery.settle_failed" for e in logs) >= 3, timeout=10
        )
        other.execute("ROLLBACK")
        other.close()
        # then the settle is retried until it goes through: nothing stays in flight.
        await h.until_states({"delivered": 1})
        # (the line is logged once the store has answered, so it may follow the state)
        await h.until(lambda: any(e["event"] == "delivery.settle_recovered" for e in logs))
    assert len(h.fake.calls) == 1
