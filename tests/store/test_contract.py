"""The Store protocol (bridge/store/base.py) as a specification, run against every backend.

Times are passed in: T0 is "now" unless a test says otherwise; nothing sleeps.
"""

from __future__ import annotations

import asyncio

import pytest

from bridge.errors import LeaseLost, StorageError
from bridge.models import Evaluation, LeadStatus, Outcome, Transition
from bridge.store.base import Store, TransitionState

from .conftest import EPOCH, HOLDER, T0, Backend, Events

ALL_STATES = {str(s) for s in TransitionState}
ALL_OUTCOMES = {str(o) for o in Outcome}


async def claim_one(store: Store, now: float = T0, *, coalesce: bool = False) -> int:
    """Claim exactly one transition and return its id."""
    claim = await store.claim_due(now, 10, coalesce=coalesce, epoch=EPOCH)
    assert len(claim.claimed) == 1, claim
    return claim.claimed[0].id


async def states(store: Store, lead_id: int = 1, account_id: int = 7) -> dict[int, str]:
    return {e.id: str(e.state) for e in await store.ledger(account_id, lead_id)}


# --- ingest -----------------------------------------------------------------------------


async def test_ingest_stores_events_and_queues_their_transitions(
    store: Store, events: Events
) -> None:
    result = await store.ingest([events.matched(lead_id=1), events.matched(lead_id=2)], T0)

    assert (result.stored, result.duplicates, result.transitions) == (2, 0, 2)
    [entry] = await store.ledger(7, 1)
    assert entry.state == TransitionState.PENDING
    assert entry.next_attempt_at == T0
    assert entry.created_at == T0


async def test_an_event_with_several_transitions_queues_each_of_them(
    store: Store, events: Events
) -> None:
    event = events.event()
    transitions = (
        Transition("a", 7, 1, LeadStatus.WON),
        Transition("b", 7, 2, LeadStatus.LOST, "lost it"),
    )
    evaluation = Evaluation(Outcome.MATCHED, transitions, (), ("a", "b"))

    result = await store.ingest([(event, evaluation)], T0)

    assert result.transitions == 2
    [won] = await store.ledger(7, 1)
    [lost] = await store.ledger(7, 2)
    assert (won.rule, won.status) == ("a", LeadStatus.WON)
    assert (lost.rule, lost.status, lost.notes) == ("b", LeadStatus.LOST, "lost it")


async def test_ingest_of_nothing_stores_nothing(store: Store) -> None:
    result = await store.ingest([], T0)

    assert (result.stored, result.duplicates, result.transitions) == (0, 0, 0)


async def test_a_redelivered_event_is_counted_as_duplicate_and_not_queued_again(
    store: Store, events: Events
) -> None:
    first = events.matched(event_id="evt_same")
    await store.ingest([first], T0)

    again = await store.ingest([events.matched(event_id="evt_same")], T0 + 1)

    assert (again.stored, again.duplicates, again.transitions) == (0, 1, 0)
    assert len(await store.ledger(7, 1)) == 1
    assert (await store.stats(T0 + 1)).events["matched"] == 1


async def test_the_same_event_id_from_another_source_is_not_a_duplicate(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(source="stripe", event_id="evt_1")], T0)

    result = await store.ingest([events.matched(source="hubspot", event_id="evt_1")], T0)

    assert (result.stored, result.duplicates) == (1, 0)


async def test_a_duplicate_within_one_batch_is_stored_once(store: Store, events: Events) -> None:
    batch = [events.matched(event_id="evt_twice"), events.matched(event_id="evt_twice")]

    result = await store.ingest(batch, T0)

    assert (result.stored, result.duplicates, result.transitions) == (1, 1, 1)
    assert len(await store.ledger(7, 1)) == 1


async def test_concurrent_ingests_of_one_event_store_it_once(store: Store, events: Events) -> None:
    calls = [store.ingest([events.matched(event_id="evt_race")], T0) for _ in range(20)]

    results = await asyncio.gather(*calls)

    assert sum(r.stored for r in results) == 1
    assert sum(r.duplicates for r in results) == 19
    assert sum(r.transitions for r in results) == 1
    assert len(await store.ledger(7, 1)) == 1


async def test_concurrent_ingests_of_different_events_all_commit(
    store: Store, events: Events
) -> None:
    calls = [store.ingest([events.matched(lead_id=n)], T0) for n in range(50)]

    results = await asyncio.gather(*calls)

    assert [r.stored for r in results] == [1] * 50
    stats = await store.stats(T0)
    assert stats.transitions["pending"] == 50
    assert stats.events["matched"] == 50


async def test_ignored_and_unmapped_events_are_stored_with_their_outcome_and_queue_nothing(
    store: Store, events: Events
) -> None:
    result = await store.ingest([events.ignored(), events.unmapped(reason="no lead id")], T0)

    assert (result.stored, result.transitions) == (2, 0)
    ignored = await store.events_for_replay(outcome=Outcome.IGNORED)
    unmapped = await store.events_for_replay(outcome=Outcome.UNMAPPED)
    assert [e.outcome for e in ignored] == [Outcome.IGNORED]
    assert [(e.outcome, e.rule, e.reason) for e in unmapped] == [
        (Outcome.UNMAPPED, "paid", "no lead id")
    ]
    assert (await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)).claimed == []


async def test_a_stored_event_keeps_its_payload_headers_and_times(
    store: Store, events: Events
) -> None:
    payload = {"type": "checkout.session.completed", "amount": 4200, "nested": [1, "ü", None]}
    event = events.event(
        occurred_at=T0 - 60, received_at=T0, payload=payload, headers={"x-request-id": "r1"}
    )
    evaluation = Evaluation(
        Outcome.MATCHED, (Transition("paid", 7, 1, LeadStatus.WON),), (), ("paid",)
    )
    await store.ingest([(event, evaluation)], T0)

    [stored] = await store.events_for_replay(outcome=Outcome.MATCHED)

    assert stored.event == event
    assert (stored.outcome, stored.rule, stored.reason) == (Outcome.MATCHED, "paid", None)


async def test_a_payload_with_what_fast_json_refuses_is_stored_exactly(
    store: Store, events: Events
) -> None:
    # A lone surrogate (a valid JSON escape, not UTF-8), NUL, an integer beyond 64 bits.
    payload = {"odd": "a\ud800b", "nul": "x\x00y", "big": 2**70, "neg": -(2**65), "f": 0.1}
    event = events.event(payload=payload, headers={"x-odd": "\udfff"})
    await store.ingest([(event, Evaluation(Outcome.IGNORED))], T0)

    [stored] = await store.events_for_replay(outcome=Outcome.IGNORED)

    assert stored.event == event


# --- claim_due ----------------------------------------------------------------------------


async def test_a_new_transition_is_due_at_once_and_claimed_in_flight(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(notes="paid 42", occurred_at=T0 - 5)], T0)

    claim = await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)

    [queued] = claim.claimed
    assert (queued.source, queued.rule, queued.account_id, queued.lead_id) == (
        "stripe",
        "paid",
        7,
        1,
    )
    assert (queued.status, queued.notes, queued.occurred_at) == (LeadStatus.WON, "paid 42", T0 - 5)
    assert (queued.created_at, queued.attempts, queued.not_found_attempts) == (T0, 0, 0)
    assert await states(store) == {queued.id: "in_flight"}
    assert claim.next_due_at is None


async def test_a_transition_is_not_claimed_before_it_is_due(store: Store, events: Events) -> None:
    await store.ingest([events.matched()], T0)
    tid = await claim_one(store)
    await store.schedule_retry(tid, T0, T0 + 30, counts=True, epoch=EPOCH)

    early = await store.claim_due(T0 + 29.9, 10, coalesce=False, epoch=EPOCH)

    assert early.claimed == []
    assert early.next_due_at == T0 + 30
    assert await claim_one(store, T0 + 30) == tid


async def test_next_due_at_is_the_earliest_future_attempt_of_anything_pending(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(lead_id=1), events.matched(lead_id=2)], T0)
    claim = await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)
    first, second = (q.id for q in claim.claimed)
    await store.schedule_retry(first, T0, T0 + 50, counts=True, epoch=EPOCH)
    await store.schedule_retry(second, T0, T0 + 20, counts=True, epoch=EPOCH)

    claim = await store.claim_due(T0 + 1, 10, coalesce=False, epoch=EPOCH)

    assert claim.claimed == []
    assert claim.next_due_at == T0 + 20


async def test_claim_due_claims_at_most_limit(store: Store, events: Events) -> None:
    await store.ingest([events.matched(lead_id=n) for n in range(5)], T0)

    first = await store.claim_due(T0, 3, coalesce=False, epoch=EPOCH)
    rest = await store.claim_due(T0, 3, coalesce=False, epoch=EPOCH)

    assert len(first.claimed) == 3
    assert len(rest.claimed) == 2
    assert {q.lead_id for q in first.claimed + rest.claimed} == set(range(5))


async def test_claim_due_claims_one_transition_per_lead(store: Store, events: Events) -> None:
    await store.ingest([events.matched(occurred_at=T0 + n) for n in range(3)], T0)

    claim = await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)

    assert len(claim.claimed) == 1


async def test_concurrent_claims_never_hand_out_a_transition_or_a_lead_twice(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(lead_id=n % 20) for n in range(40)], T0)

    claims = await asyncio.gather(
        *(store.claim_due(T0, 3, coalesce=False, epoch=EPOCH) for _ in range(10))
    )

    claimed = [q for claim in claims for q in claim.claimed]
    assert len(claimed) == 20
    assert len({q.id for q in claimed}) == 20
    assert len({q.lead_id for q in claimed}) == 20


async def test_the_same_lead_id_in_another_account_is_another_lead(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(account_id=7), events.matched(account_id=8)], T0)

    claim = await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)

    assert sorted(q.account_id for q in claim.claimed) == [7, 8]


async def test_a_lead_with_a_transition_in_flight_is_skipped(store: Store, events: Events) -> None:
    await store.ingest([events.matched(occurred_at=T0)], T0)
    await claim_one(store)
    await store.ingest([events.matched(occurred_at=T0 + 1)], T0 + 1)

    for coalesce in (False, True):
        claim = await store.claim_due(T0 + 2, 10, coalesce=coalesce, epoch=EPOCH)
        assert (claim.claimed, claim.superseded, claim.stale) == ([], [], [])


async def test_without_coalescing_a_lead_sends_in_order_of_occurred_at_then_id(
    store: Store, events: Events
) -> None:
    # Received out of order: the later event arrives first; two share an occurred_at.
    late = events.matched(occurred_at=T0 + 300)
    early_a = events.matched(occurred_at=T0 + 100)
    early_b = events.matched(occurred_at=T0 + 100)
    await store.ingest([late], T0)
    await store.ingest([early_a], T0)
    await store.ingest([early_b], T0)
    by_event = {e.event_id: e.id for e in await store.ledger(7, 1)}

    sent = []
    for step in range(3):
        claim = await store.claim_due(T0 + step, 10, coalesce=False, epoch=EPOCH)
        assert claim.superseded == []
        assert claim.stale == []
        [queued] = claim.claimed
        sent.append(queued.event_id)
        await store.mark_delivered(queued.id, T0 + step, 200, epoch=EPOCH)

    assert sent == [early_a[0].event_id, early_b[0].event_id, late[0].event_id]
    assert set((await states(store)).values()) == {"delivered"}
    assert by_event[early_a[0].event_id] < by_event[early_b[0].event_id]


async def test_without_coalescing_a_lead_waits_for_its_first_transition(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(occurred_at=T0)], T0)
    head = await claim_one(store)
    await store.schedule_retry(head, T0, T0 + 60, counts=True, epoch=EPOCH)
    await store.ingest([events.matched(occurred_at=T0 + 1)], T0 + 1)

    claim = await store.claim_due(T0 + 2, 10, coalesce=False, epoch=EPOCH)

    assert claim.claimed == []
    assert claim.next_due_at == T0 + 60


async def test_coalescing_supersedes_older_pending_and_claims_the_newest(
    store: Store, events: Events
) -> None:
    batch = [events.matched(occurred_at=T0 + n, status=s) for n, s in enumerate(LeadStatus)]
    await store.ingest(batch, T0)

    claim = await store.claim_due(T0, 10, coalesce=True, epoch=EPOCH)

    [newest] = claim.claimed
    assert newest.event_id == batch[-1][0].event_id
    assert newest.status == LeadStatus.SNOOZED
    assert sorted(q.event_id for q in claim.superseded) == sorted(e.event_id for e, _ in batch[:-1])
    assert sorted((await states(store)).values()) == ["in_flight"] + ["superseded"] * 3


async def test_coalescing_waits_until_the_newest_is_due(store: Store, events: Events) -> None:
    await store.ingest([events.matched(occurred_at=T0 + 1)], T0)
    newest = await claim_one(store, coalesce=True)
    await store.schedule_retry(newest, T0, T0 + 60, counts=True, epoch=EPOCH)
    await store.ingest([events.matched(occurred_at=T0)], T0)  # older, due now

    early = await store.claim_due(T0 + 1, 10, coalesce=True, epoch=EPOCH)
    due = await store.claim_due(T0 + 60, 10, coalesce=True, epoch=EPOCH)

    assert (early.claimed, early.superseded) == ([], [])
    assert [q.id for q in due.claimed] == [newest]
    assert len(due.superseded) == 1


async def test_a_transition_older_than_the_last_delivered_is_settled_stale(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(occurred_at=T0 + 200)], T0)
    await store.mark_delivered(await claim_one(store), T0, 200, epoch=EPOCH)
    await store.ingest([events.matched(occurred_at=T0 + 100)], T0 + 1)

    claim = await store.claim_due(T0 + 1, 10, coalesce=False, epoch=EPOCH)

    assert claim.claimed == []
    [stale] = claim.stale
    assert stale.occurred_at == T0 + 100
    assert (await states(store))[stale.id] == "stale"


async def test_after_a_stale_head_the_next_transition_is_considered(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(occurred_at=T0 + 200)], T0)
    await store.mark_delivered(await claim_one(store), T0, 200, epoch=EPOCH)
    await store.ingest(
        [events.matched(occurred_at=T0 + 100), events.matched(occurred_at=T0 + 300)], T0 + 1
    )

    claim = await store.claim_due(T0 + 1, 10, coalesce=False, epoch=EPOCH)

    assert [q.occurred_at for q in claim.stale] == [T0 + 100]
    assert [q.occurred_at for q in claim.claimed] == [T0 + 300]


async def test_a_transition_as_old_as_the_last_delivered_is_not_stale(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(occurred_at=T0 + 200)], T0)
    await store.mark_delivered(await claim_one(store), T0, 200, epoch=EPOCH)
    await store.ingest([events.matched(occurred_at=T0 + 200)], T0 + 1)

    claim = await store.claim_due(T0 + 1, 10, coalesce=False, epoch=EPOCH)

    assert claim.stale == []
    assert len(claim.claimed) == 1


async def test_with_coalescing_a_stale_newest_makes_every_pending_stale(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(occurred_at=T0 + 200)], T0)
    await store.mark_delivered(await claim_one(store), T0, 200, epoch=EPOCH)
    await store.ingest(
        [events.matched(occurred_at=T0 + 100), events.matched(occurred_at=T0 + 150)], T0 + 1
    )

    claim = await store.claim_due(T0 + 1, 10, coalesce=True, epoch=EPOCH)

    assert claim.claimed == []
    assert claim.superseded == []
    assert sorted(q.occurred_at for q in claim.stale) == [T0 + 100, T0 + 150]


# --- settling a claim ------------------------------------------------------------------------


async def test_mark_delivered_records_the_attempt_in_the_ledger(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched()], T0)
    tid = await claim_one(store)

    await store.mark_delivered(tid, T0 + 2, 204, epoch=EPOCH)

    [entry] = await store.ledger(7, 1)
    assert entry.state == TransitionState.DELIVERED
    assert (entry.attempts, entry.http_status) == (1, 204)
    assert (entry.first_attempt_at, entry.last_attempt_at) == (T0 + 2, T0 + 2)
    assert entry.next_attempt_at is None


async def test_a_retried_dead_letter_older_than_the_last_delivered_is_stale(
    store: Store, events: Events
) -> None:
    # T0+100 dies, T0+300 is delivered twice; T0+100 retried afterwards is never sent.
    await store.ingest([events.matched(occurred_at=T0 + 100)], T0)
    old = await claim_one(store)
    await store.mark_dead(old, T0, reason="gave up", http_status=500, epoch=EPOCH)
    await store.ingest([events.matched(occurred_at=T0 + 300)], T0 + 1)
    await store.mark_delivered(await claim_one(store, T0 + 1), T0 + 1, 200, epoch=EPOCH)
    await store.ingest([events.matched(occurred_at=T0 + 300)], T0 + 2)
    await store.mark_delivered(await claim_one(store, T0 + 2), T0 + 2, 200, epoch=EPOCH)
    assert await store.retry_dead([old], T0 + 3) == 1

    claim = await store.claim_due(T0 + 3, 10, coalesce=False, epoch=EPOCH)

    assert claim.claimed == []
    assert [q.id for q in claim.stale] == [old]


async def test_schedule_retry_counts_the_attempt_and_records_why(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched()], T0)
    tid = await claim_one(store)

    await store.schedule_retry(
        tid, T0 + 1, T0 + 10, counts=True, http_status=503, reason="busy", epoch=EPOCH
    )

    [entry] = await store.ledger(7, 1)
    assert entry.state == TransitionState.PENDING
    assert (entry.attempts, entry.http_status, entry.reason) == (1, 503, "busy")
    assert (entry.first_attempt_at, entry.last_attempt_at, entry.next_attempt_at) == (
        T0 + 1,
        T0 + 1,
        T0 + 10,
    )


async def test_a_retry_that_does_not_count_leaves_attempts_unchanged(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched()], T0)
    tid = await claim_one(store)

    await store.schedule_retry(tid, T0 + 1, T0 + 10, counts=False, http_status=429, epoch=EPOCH)

    [entry] = await store.ledger(7, 1)
    assert (entry.attempts, entry.http_status, entry.last_attempt_at) == (0, 429, T0 + 1)


async def test_attempts_and_not_found_attempts_accumulate_across_claims(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched()], T0)
    tid = await claim_one(store)
    await store.schedule_retry(
        tid, T0 + 1, T0 + 2, counts=True, not_found=True, http_status=404, epoch=EPOCH
    )
    await claim_one(store, T0 + 2)
    await store.schedule_retry(tid, T0 + 3, T0 + 4, counts=True, http_status=500, epoch=EPOCH)

    [queued] = (await store.claim_due(T0 + 4, 10, coalesce=False, epoch=EPOCH)).claimed

    assert (queued.attempts, queued.not_found_attempts) == (2, 1)
    [entry] = await store.ledger(7, 1)
    assert (entry.first_attempt_at, entry.last_attempt_at) == (T0 + 1, T0 + 3)


async def test_release_puts_back_without_recording_an_attempt(store: Store, events: Events) -> None:
    await store.ingest([events.matched()], T0)
    tid = await claim_one(store)

    await store.release(tid, T0 + 5, epoch=EPOCH)

    [entry] = await store.ledger(7, 1)
    assert entry.state == TransitionState.PENDING
    assert (entry.attempts, entry.first_attempt_at, entry.last_attempt_at) == (0, None, None)
    assert entry.next_attempt_at == T0 + 5
    assert (await store.claim_due(T0 + 4, 10, coalesce=False, epoch=EPOCH)).claimed == []
    [again] = (await store.claim_due(T0 + 5, 10, coalesce=False, epoch=EPOCH)).claimed
    assert (again.id, again.attempts) == (tid, 0)


async def test_mark_dead_moves_a_transition_to_the_dead_letters(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched()], T0)
    tid = await claim_one(store)

    await store.mark_dead(tid, T0 + 1, reason="lead not found", http_status=404, epoch=EPOCH)

    [dead] = await store.dead_letters()
    assert (dead.id, dead.state, dead.reason, dead.http_status) == (
        tid,
        TransitionState.DEAD,
        "lead not found",
        404,
    )
    assert dead.attempts == 1
    assert (await store.claim_due(T0 + 100, 10, coalesce=False, epoch=EPOCH)).claimed == []


async def test_a_dead_transition_does_not_block_its_lead(store: Store, events: Events) -> None:
    await store.ingest([events.matched(occurred_at=T0)], T0)
    await store.ingest([events.matched(occurred_at=T0 + 1)], T0)
    await store.mark_dead(await claim_one(store), T0, reason="bad", http_status=422, epoch=EPOCH)

    claim = await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)

    assert [q.occurred_at for q in claim.claimed] == [T0 + 1]


async def test_dead_letters_are_newest_first_and_limited(store: Store, events: Events) -> None:
    await store.ingest([events.matched(lead_id=n) for n in range(3)], T0)
    claimed = [q.id for q in (await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)).claimed]
    # Killed in the reverse order of their ids: the last one dies first.
    for n, tid in enumerate(claimed):
        await store.mark_dead(tid, T0 + 10 - n, reason=f"r{n}", http_status=None, epoch=EPOCH)

    dead = await store.dead_letters()
    two = await store.dead_letters(limit=2)

    assert [d.id for d in dead] == claimed
    assert [d.id for d in two] == claimed[:2]
    assert [d.reason for d in dead] == ["r0", "r1", "r2"]
    assert dead[0].http_status is None


async def test_a_settle_from_an_earlier_lease_term_is_refused_and_changes_nothing(
    store: Store, backend: Backend, events: Events
) -> None:
    await store.ingest([events.matched()], T0)
    tid = await claim_one(store)
    new_epoch = await backend.take_over()
    assert await store.recover_claims(epoch=new_epoch) == 1

    for settle in (
        store.mark_delivered(tid, T0 + 1, 200, epoch=EPOCH),
        store.mark_dead(tid, T0 + 1, reason="late", http_status=500, epoch=EPOCH),
        store.schedule_retry(tid, T0 + 1, T0 + 2, counts=True, epoch=EPOCH),
        store.release(tid, T0 + 2, epoch=EPOCH),
    ):
        with pytest.raises(LeaseLost):
            await settle

    [entry] = await store.ledger(7, 1)
    assert (entry.state, entry.attempts) == (TransitionState.PENDING, 0)


async def test_a_settle_of_a_claim_the_new_holder_claimed_again_is_refused(
    store: Store, backend: Backend, events: Events
) -> None:
    await store.ingest([events.matched()], T0)
    old = await claim_one(store)
    new_epoch = await backend.take_over()
    await store.recover_claims(epoch=new_epoch)
    claim = await store.claim_due(T0, 10, coalesce=False, epoch=new_epoch)
    assert [q.id for q in claim.claimed] == [old]

    with pytest.raises(LeaseLost):
        await store.mark_delivered(old, T0 + 1, 200, epoch=EPOCH)
    await store.mark_delivered(old, T0 + 1, 200, epoch=new_epoch)

    [entry] = await store.ledger(7, 1)
    assert (entry.state, entry.attempts) == (TransitionState.DELIVERED, 1)


async def test_claims_and_recoveries_from_an_earlier_term_are_refused(
    store: Store, backend: Backend, events: Events
) -> None:
    await store.ingest([events.matched()], T0)
    await backend.take_over()

    with pytest.raises(LeaseLost):
        await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)
    with pytest.raises(LeaseLost):
        await store.recover_claims(epoch=EPOCH)
    [entry] = await store.ledger(7, 1)
    assert entry.state is TransitionState.PENDING


async def test_nothing_is_claimed_once_the_lease_was_released(
    store: Store, backend: Backend, events: Events
) -> None:
    await store.ingest([events.matched()], T0)
    await backend.lease().release(HOLDER, EPOCH)

    with pytest.raises(LeaseLost):
        await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)


# --- dead letters retried ---------------------------------------------------------------------


async def _three_dead(store: Store, events: Events) -> list[int]:
    await store.ingest([events.matched(lead_id=n) for n in range(3)], T0)
    ids = [q.id for q in (await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)).claimed]
    for tid in ids:
        await store.schedule_retry(
            tid, T0, T0, counts=True, not_found=True, http_status=404, epoch=EPOCH
        )
        await claim_one_of(store, tid)
        await store.mark_dead(tid, T0 + 1, reason="server error", http_status=500, epoch=EPOCH)
    return ids


async def claim_one_of(store: Store, tid: int) -> None:
    claim = await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)
    assert tid in [q.id for q in claim.claimed]


async def test_retry_dead_without_ids_requeues_every_dead_with_fresh_attempts(
    store: Store, events: Events
) -> None:
    ids = await _three_dead(store, events)

    assert await store.retry_dead(None, T0 + 10) == 3

    assert await store.dead_letters() == []
    claim = await store.claim_due(T0 + 10, 10, coalesce=False, epoch=EPOCH)
    assert sorted(q.id for q in claim.claimed) == sorted(ids)
    assert {(q.attempts, q.not_found_attempts) for q in claim.claimed} == {(0, 0)}


async def test_retry_dead_with_ids_requeues_only_those(store: Store, events: Events) -> None:
    ids = await _three_dead(store, events)

    assert await store.retry_dead([ids[1], 999_999], T0 + 10) == 1

    assert sorted(d.id for d in await store.dead_letters()) == sorted([ids[0], ids[2]])
    [entry] = await store.ledger(7, 1)
    assert (entry.state, entry.attempts, entry.next_attempt_at) == (
        TransitionState.PENDING,
        0,
        T0 + 10,
    )
    assert [
        q.id for q in (await store.claim_due(T0 + 10, 10, coalesce=False, epoch=EPOCH)).claimed
    ] == [ids[1]]


async def test_retry_dead_leaves_transitions_that_are_not_dead_alone(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched()], T0)
    tid = await claim_one(store)
    await store.mark_delivered(tid, T0, 200, epoch=EPOCH)

    assert await store.retry_dead([tid], T0 + 1) == 0
    assert await store.retry_dead(None, T0 + 1) == 0
    assert (await states(store))[tid] == "delivered"


# --- recovery and durability ------------------------------------------------------------------


async def test_recover_claims_puts_claims_of_a_dead_worker_back_to_pending(
    backend: Backend, events: Events
) -> None:
    first = await backend.open()
    assert (await backend.lease().acquire(HOLDER, 3600)).epoch == EPOCH
    await first.ingest([events.matched(lead_id=1), events.matched(lead_id=2)], T0)
    await first.ingest([events.matched(lead_id=3)], T0)
    claimed = await first.claim_due(T0, 2, coalesce=False, epoch=EPOCH)
    await first.close()  # the worker "crashed": its claims were never settled

    second = await backend.open()
    epoch = await backend.take_over()
    stuck = await second.claim_due(T0, 10, coalesce=False, epoch=epoch)
    assert [q.lead_id for q in stuck.claimed] == [3]  # leads 1 and 2 still look in flight
    await second.release(stuck.claimed[0].id, T0 + 60, epoch=epoch)

    recovered = await second.recover_claims(epoch=epoch)

    assert recovered == 2
    again = await second.claim_due(T0, 10, coalesce=False, epoch=epoch)
    assert sorted(q.id for q in again.claimed) == sorted(q.id for q in claimed.claimed)
    assert {q.attempts for q in again.claimed} == {0}
    assert await second.recover_claims(epoch=epoch) == 0  # this term's claims are live


async def test_ingested_events_survive_close_and_reopen(backend: Backend, events: Events) -> None:
    first = await backend.open()
    await first.ingest([events.matched(), events.ignored()], T0)
    await first.close()

    second = await backend.open()
    epoch = await backend.take_over()

    stats = await second.stats(T0)
    assert stats.events["matched"] == 1
    assert stats.events["ignored"] == 1
    assert len((await second.claim_due(T0, 10, coalesce=False, epoch=epoch)).claimed) == 1


async def test_a_read_only_store_reads_but_refuses_writes(backend: Backend, events: Events) -> None:
    writer = await backend.open()
    await writer.ingest([events.matched()], T0)

    reader = await backend.open(read_only=True)

    assert len(await reader.ledger(7, 1)) == 1
    assert (await reader.stats(T0)).events["matched"] == 1
    with pytest.raises(StorageError):
        await reader.ingest([events.matched()], T0)
    with pytest.raises(StorageError):
        await reader.ping()
    assert (await writer.stats(T0)).events["matched"] == 1


async def test_ping_succeeds_on_an_open_store(store: Store) -> None:
    await store.ping()


async def test_a_closed_store_refuses_ping_and_ingest(backend: Backend, events: Events) -> None:
    store = await backend.open()
    await store.close()

    with pytest.raises(StorageError):
        await store.ping()
    with pytest.raises(StorageError):
        await store.ingest([events.matched()], T0)


# --- operating ------------------------------------------------------------------------------


async def test_ledger_lists_every_transition_of_one_lead_newest_first(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(occurred_at=T0 + 10, notes="second")], T0)
    await store.ingest([events.matched(occurred_at=T0, notes="first")], T0 + 1)
    await store.ingest([events.matched(lead_id=2)], T0)

    ledger = await store.ledger(7, 1)

    assert [e.notes for e in ledger] == ["second", "first"]
    assert {(e.account_id, e.lead_id) for e in ledger} == {(7, 1)}
    assert ledger[1].created_at == T0 + 1
    as_json = ledger[0].as_json()
    [newest] = await store.list_events(limit=1)
    assert ledger[0].event_pk == newest.pk  # the event of each transition, by its id
    assert as_json["state"] == "pending"
    assert as_json["status"] == "won"
    assert await store.ledger(7, 3) == []


async def test_events_for_replay_by_primary_key(store: Store, events: Events) -> None:
    await store.ingest([events.ignored(), events.ignored(), events.ignored()], T0)
    every = await store.events_for_replay(outcome=Outcome.IGNORED)

    chosen = await store.events_for_replay(ids=[every[0].pk, every[2].pk, 10_000_000])

    assert [e.pk for e in chosen] == [every[0].pk, every[2].pk]


async def test_events_for_replay_by_outcome_and_since(store: Store, events: Events) -> None:
    await store.ingest(
        [
            events.ignored(received_at=T0 - 100),
            events.ignored(received_at=T0),
            events.ignored(received_at=T0 + 5),
            events.matched(received_at=T0 + 5),
        ],
        T0 + 5,
    )

    chosen = await store.events_for_replay(outcome=Outcome.IGNORED, since=T0)
    limited = await store.events_for_replay(outcome=Outcome.IGNORED, limit=1)

    assert [e.event.received_at for e in chosen] == [T0, T0 + 5]
    assert {e.outcome for e in chosen} == {Outcome.IGNORED}
    assert len(limited) == 1


async def test_list_events_is_newest_first_with_outcome_rule_and_reason(
    store: Store, events: Events
) -> None:
    unmapped = events.unmapped(reason="lead_id is not an integer")
    await store.ingest([events.ignored(received_at=T0 - 10)], T0 - 10)
    await store.ingest([events.matched(received_at=T0)], T0)
    await store.ingest([unmapped], T0 + 10)

    listed = await store.list_events()

    assert [(e.outcome, e.rule, e.reason) for e in listed] == [
        (Outcome.UNMAPPED, "paid", "lead_id is not an integer"),
        (Outcome.MATCHED, "paid", None),
        (Outcome.IGNORED, None, None),
    ]
    assert listed[0].event.event_id == unmapped[0].event_id
    assert [e.pk for e in listed] == sorted((e.pk for e in listed), reverse=True)
    # the ids it shows are the ones replay takes
    [again] = await store.events_for_replay(ids=[listed[0].pk])
    assert again.event.event_id == unmapped[0].event_id


async def test_list_events_filters_by_outcome_source_and_since_and_stops_at_the_limit(
    store: Store, events: Events
) -> None:
    await store.ingest(
        [
            events.ignored(received_at=T0 - 100),
            events.ignored(received_at=T0),
            events.matched(received_at=T0 + 5, source="hubspot"),
            events.matched(received_at=T0 + 6),
        ],
        T0 + 6,
    )

    ignored = await store.list_events(outcome=Outcome.IGNORED)
    recent = await store.list_events(since=T0)
    hubspot = await store.list_events(source="hubspot")
    both = await store.list_events(outcome=Outcome.MATCHED, source="stripe", since=T0)
    limited = await store.list_events(limit=2)

    assert [e.event.received_at for e in ignored] == [T0, T0 - 100]
    assert [e.event.received_at for e in recent] == [T0 + 6, T0 + 5, T0]
    assert [(e.event.source, e.outcome) for e in hubspot] == [("hubspot", Outcome.MATCHED)]
    assert [e.event.received_at for e in both] == [T0 + 6]
    assert [e.event.received_at for e in limited] == [T0 + 6, T0 + 5]
    assert await store.list_events(source="nobody") == []


async def test_apply_replay_stores_the_new_outcome_and_queues_new_transitions(
    store: Store, events: Events
) -> None:
    event, _ = events.matched(occurred_at=T0 - 30)
    await store.ingest([(event, Evaluation(Outcome.IGNORED))], T0)
    [stored] = await store.events_for_replay(outcome=Outcome.IGNORED)
    verdict = Evaluation(
        Outcome.MATCHED,
        (
            Transition("new-rule", 7, 1, LeadStatus.LOST),
            Transition("other-rule", 7, 2, LeadStatus.LOST),
        ),
        (),
        ("new-rule", "other-rule"),
    )

    queued = (await store.apply_replay(stored.pk, verdict, T0 + 100)).transitions

    assert queued == 2
    [replayed] = await store.events_for_replay(ids=[stored.pk])
    assert (replayed.outcome, replayed.rule) == (Outcome.MATCHED, "new-rule")
    assert await store.events_for_replay(outcome=Outcome.IGNORED) == []
    claim = await store.claim_due(T0 + 100, 10, coalesce=False, epoch=EPOCH)
    assert {(q.lead_id, q.rule, q.occurred_at, q.created_at) for q in claim.claimed} == {
        (1, "new-rule", T0 - 30, T0 + 100),
        (2, "other-rule", T0 - 30, T0 + 100),
    }


async def test_apply_replay_of_an_unknown_event_queues_nothing(store: Store) -> None:
    verdict = Evaluation(Outcome.MATCHED, (Transition("r", 7, 1, LeadStatus.WON),), (), ("r",))

    assert (await store.apply_replay(10_000_000, verdict, T0)).transitions == 0
    assert await store.ledger(7, 1) == []


async def test_stats_of_an_empty_store_lists_every_state_and_outcome_as_zero(
    store: Store,
) -> None:
    stats = await store.stats(T0)

    assert stats.transitions == dict.fromkeys(ALL_STATES, 0)
    assert stats.events == dict.fromkeys(ALL_OUTCOMES, 0)
    assert (stats.retrying, stats.oldest_pending_age_s) == (0, None)


async def test_stats_counts_states_outcomes_retrying_and_oldest_pending_age(
    store: Store, events: Events
) -> None:
    await store.ingest([events.ignored(), events.unmapped()], T0 - 100)
    await store.ingest([events.matched(lead_id=n) for n in range(1, 5)], T0 - 60)
    one, two, three, _four = (
        q.id for q in (await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)).claimed
    )
    await store.mark_delivered(one, T0, 200, epoch=EPOCH)
    await store.mark_dead(two, T0, reason="x", http_status=400, epoch=EPOCH)
    await store.schedule_retry(three, T0, T0 + 10, counts=True, http_status=500, epoch=EPOCH)
    # four stays in flight
    await store.ingest([events.matched(lead_id=9)], T0 - 10)  # pending, never tried

    stats = await store.stats(T0)

    assert stats.transitions == {
        **dict.fromkeys(ALL_STATES, 0),
        "delivered": 1,
        "dead": 1,
        "pending": 2,
        "in_flight": 1,
    }
    assert stats.events == {"matched": 5, "ignored": 1, "unmapped": 1}
    assert stats.retrying == 1
    assert stats.oldest_pending_age_s == 60.0


async def test_stats_counts_superseded_and_stale(store: Store, events: Events) -> None:
    await store.ingest([events.matched(occurred_at=T0 + 200)], T0)
    await store.mark_delivered(await claim_one(store), T0, 200, epoch=EPOCH)
    await store.ingest([events.matched(occurred_at=T0 + 100)], T0)
    await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)  # stale
    await store.ingest([events.matched(occurred_at=T0 + 300 + n) for n in range(2)], T0)
    await store.claim_due(T0, 10, coalesce=True, epoch=EPOCH)  # one superseded, one in flight

    stats = await store.stats(T0)

    assert (stats.transitions["stale"], stats.transitions["superseded"]) == (1, 1)
    assert (stats.transitions["delivered"], stats.transitions["in_flight"]) == (1, 1)


async def test_purge_deletes_old_settled_events_and_keeps_the_rest(
    store: Store, events: Events
) -> None:
    old = T0 - 1000
    await store.ingest([events.ignored(received_at=old)], old)  # settled: no transitions
    await store.ingest([events.ignored(received_at=T0)], T0)  # too recent
    await store.ingest([events.matched(lead_id=n, received_at=old) for n in range(1, 5)], old)
    delivered, dead, in_flight, pending = (
        q.id for q in (await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)).claimed
    )
    await store.mark_delivered(delivered, T0, 200, epoch=EPOCH)
    await store.mark_dead(dead, T0, reason="x", http_status=400, epoch=EPOCH)
    await store.release(pending, T0 + 60, epoch=EPOCH)

    purged = await store.purge(T0 - 1)

    assert purged == 2  # the old ignored event and the delivered one
    kept = {e.event.event_id for e in await store.events_for_replay(since=old)}
    assert len(kept) == 4
    assert await store.ledger(7, 1) == []
    assert len(await store.dead_letters()) == 1
    assert [e.id for e in await store.ledger(7, 3)] == [in_flight]
    assert [e.id for e in await store.ledger(7, 4)] == [pending]
    stats = await store.stats(T0)
    assert stats.events["ignored"] == 1
    assert stats.events["matched"] == 3
    assert await store.purge(T0 - 1) == 0


async def test_purge_keeps_an_event_while_any_of_its_transitions_is_unsettled(
    store: Store, events: Events
) -> None:
    event = events.event(received_at=T0 - 1000)
    both = (Transition("r", 7, 1, LeadStatus.WON), Transition("s", 7, 2, LeadStatus.WON))
    await store.ingest([(event, Evaluation(Outcome.MATCHED, both, (), ("r", "s")))], T0)
    first, _second = (
        q.id for q in (await store.claim_due(T0, 10, coalesce=False, epoch=EPOCH)).claimed
    )
    await store.mark_delivered(first, T0, 200, epoch=EPOCH)

    assert await store.purge(T0) == 0
    assert len(await store.ledger(7, 1)) == 1


async def test_purge_goes_through_any_number_of_events(store: Store, events: Events) -> None:
    await store.ingest([events.ignored(received_at=T0 - 10) for _ in range(2500)], T0)
    await store.ingest([events.matched(received_at=T0 - 10)], T0)

    assert await store.purge(T0) == 2500

    assert (await store.stats(T0)).events == {"ignored": 0, "unmapped": 0, "matched": 1}


# --- the delivery lease -----------------------------------------------------------------------


async def test_the_lease_is_refused_while_held_and_its_epoch_grows_at_each_acquisition(
    backend: Backend,
) -> None:
    await backend.open()
    lease = backend.lease()

    first = await lease.acquire("a", 60)
    other = await lease.acquire("b", 60)
    assert first.epoch is not None
    assert other.epoch is None
    assert other.expires_in is not None and 50 < other.expires_in <= 60

    await lease.release("a", first.epoch)
    second = await lease.acquire("b", 60)

    assert second.epoch == first.epoch + 1


async def test_only_the_current_holder_and_epoch_can_renew_or_release(backend: Backend) -> None:
    await backend.open()
    lease = backend.lease()
    grant = await lease.acquire("a", 60)
    assert grant.epoch is not None

    assert await lease.renew("a", grant.epoch, 60)
    assert not await lease.renew("b", grant.epoch, 60)
    assert not await lease.renew("a", grant.epoch - 1, 60)
    await lease.release("b", grant.epoch)  # not b's to release
    assert (await lease.acquire("b", 60)).epoch is None


async def test_an_expired_lease_can_be_taken_and_then_its_old_holder_cannot_renew(
    backend: Backend,
) -> None:
    await backend.open()
    lease = backend.lease()
    old = await lease.acquire("a", 0.05)  # expires by the database's clock in 50 ms
    assert old.epoch is not None

    taken = await lease.acquire("b", 60)
    for _ in range(200):  # until the database's clock passes the expiry; bounded
        if taken.epoch is not None:
            break
        await asyncio.sleep(0.01)
        taken = await lease.acquire("b", 60)

    assert taken.epoch == old.epoch + 1
    assert not await lease.renew("a", old.epoch, 60)


async def test_an_expired_lease_nobody_took_can_still_be_renewed_by_its_holder(
    backend: Backend,
) -> None:
    await backend.open()
    lease = backend.lease()
    grant = await lease.acquire("a", 0)  # expired from the next statement on
    assert grant.epoch is not None

    assert await lease.renew("a", grant.epoch, 60)
    assert (await lease.acquire("b", 60)).epoch is None


# --- replay is idempotent in the store ---------------------------------------------------------


async def test_replaying_an_event_that_is_already_matched_queues_nothing(
    store: Store, events: Events
) -> None:
    event, _ = events.matched()
    await store.ingest([(event, Evaluation(Outcome.UNMAPPED))], T0)
    [stored] = await store.events_for_replay(outcome=Outcome.UNMAPPED)
    verdict = Evaluation(Outcome.MATCHED, (Transition("r", 7, 1, LeadStatus.WON),), (), ("r",))

    first = (await store.apply_replay(stored.pk, verdict, T0)).transitions
    second = (await store.apply_replay(stored.pk, verdict, T0)).transitions

    assert (first, second) == (1, 0)
    assert len(await store.ledger(7, 1)) == 1


async def test_two_stores_replaying_the_same_events_at_once_queue_each_transition_once(
    backend: Backend, events: Events
) -> None:
    stores = [await backend.open(), await backend.open()]
    await stores[0].ingest([(events.event(), Evaluation(Outcome.UNMAPPED)) for _ in range(50)], T0)
    chosen = await stores[0].events_for_replay(outcome=Outcome.UNMAPPED)

    async def replay(store: Store) -> int:
        queued = 0
        for stored in chosen:
            lead = stored.pk
            verdict = Evaluation(
                Outcome.MATCHED, (Transition("r", 7, lead, LeadStatus.WON),), (), ("r",)
            )
            queued += (await store.apply_replay(stored.pk, verdict, T0)).transitions
        return queued

    totals = await asyncio.gather(replay(stores[0]), replay(stores[1]))

    assert sum(totals) == 50
    assert (await stores[0].stats(T0)).transitions["pending"] == 50
