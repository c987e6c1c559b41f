"""The Store protocol's follow-ups (issue 18) as a specification, run against every backend.

Scheduling and cancelling happen in the transaction that stores a transition (ingest,
replay, a firing); firing is a delivery-side write fenced by the lease epoch. Times are
passed in: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from typing import Any

import pytest

from bridge.errors import LeaseLost
from bridge.models import Evaluation, Event, FollowUp, LeadStatus, Outcome, Transition
from bridge.store.base import FollowUpEntry, FollowUpState, Store, TransitionState

from .conftest import EPOCH, POSTGRES_DSN_ENV, T0, Backend, Events

DAY = 86400.0
LOST_IN_7D = FollowUp(LeadStatus.LOST, "still unpaid", T0 + 7 * DAY)


def failed(
    events: Events, *, at: float = T0, lead_id: int = 1, **kw: Any
) -> tuple[Event, Evaluation]:
    """A payment-failed event: the lead snoozes, and is lost 7 days after it unless..."""
    follow_up = FollowUp(LeadStatus.LOST, "still unpaid", at + 7 * DAY)
    return events.matched(
        lead_id=lead_id,
        status=LeadStatus.SNOOZED,
        occurred_at=at,
        rule="payment-failed",
        follow_up=follow_up,
        **kw,
    )


def paid(events: Events, *, at: float, lead_id: int = 1) -> tuple[Event, Evaluation]:
    return events.matched(lead_id=lead_id, status=LeadStatus.WON, occurred_at=at, rule="paid")


async def only(store: Store, state: FollowUpState | None = None) -> FollowUpEntry:
    [entry] = await store.followups(state=state)
    return entry


# --- scheduled with the event -----------------------------------------------------------


async def test_a_follow_up_is_scheduled_by_the_ingest_that_stores_its_transition(
    store: Store, events: Events
) -> None:
    result = await store.ingest([failed(events)], T0)

    [scheduled] = result.followups.scheduled
    assert result.followups.cancelled == ()
    assert (scheduled.rule, scheduled.account_id, scheduled.lead_id) == ("payment-failed", 7, 1)
    assert (scheduled.status, scheduled.notes, scheduled.due_at) == (
        LeadStatus.LOST,
        "still unpaid",
        T0 + 7 * DAY,
    )
    assert (scheduled.occurred_at, scheduled.created_at) == (T0, T0)
    assert await store.followups() == [scheduled]
    [main] = await store.ledger(7, 1)
    assert (main.status, main.origin, main.follow_up) == (LeadStatus.SNOOZED, "event", scheduled)


async def test_a_scheduled_follow_up_survives_close_and_reopen(
    backend: Backend, events: Events
) -> None:
    first = await backend.open()
    await first.ingest([failed(events)], T0)
    await first.close()

    again = await backend.open()

    entry = await only(again, FollowUpState.SCHEDULED)
    assert entry.due_at == T0 + 7 * DAY


async def test_an_event_redelivered_schedules_nothing_twice(store: Store, events: Events) -> None:
    await store.ingest([failed(events, event_id="evt_same")], T0)

    again = await store.ingest([failed(events, event_id="evt_same")], T0 + 1)

    assert again.followups.scheduled == ()
    assert len(await store.followups()) == 1


# --- cancelled by what is stored before it fires -------------------------------------------


async def test_a_newer_transition_for_the_lead_cancels_it_naming_the_cause(
    store: Store, events: Events
) -> None:
    await store.ingest([failed(events)], T0)

    result = await store.ingest([paid(events, at=T0 + 3 * DAY)], T0 + 3 * DAY)

    [cancelled] = result.followups.cancelled
    assert cancelled.state is FollowUpState.CANCELLED
    assert cancelled.settled_at == T0 + 3 * DAY
    assert cancelled.cause == "newer event stripe/evt_2 (rule paid)"
    assert await store.followups(state=FollowUpState.SCHEDULED) == []


async def test_an_older_event_stored_later_does_not_cancel_it(store: Store, events: Events) -> None:
    await store.ingest([failed(events, at=T0)], T0)

    result = await store.ingest([paid(events, at=T0 - 60)], T0 + DAY)

    assert result.followups.cancelled == ()
    assert (await only(store)).state is FollowUpState.SCHEDULED


async def test_a_transition_of_another_lead_cancels_nothing(store: Store, events: Events) -> None:
    await store.ingest([failed(events, lead_id=1)], T0)

    await store.ingest([paid(events, at=T0 + 60, lead_id=2)], T0 + 60)
    await store.ingest([events.matched(lead_id=1, account_id=8, occurred_at=T0 + 60)], T0 + 60)

    assert (await only(store)).state is FollowUpState.SCHEDULED


async def test_a_later_failure_replaces_the_follow_up_so_the_grace_counts_from_it(
    store: Store, events: Events
) -> None:
    await store.ingest([failed(events, at=T0)], T0)

    result = await store.ingest([failed(events, at=T0 + 3 * DAY)], T0 + 3 * DAY)

    assert [e.due_at for e in result.followups.cancelled] == [T0 + 7 * DAY]
    assert [e.due_at for e in result.followups.scheduled] == [T0 + 10 * DAY]
    scheduled = await store.followups(state=FollowUpState.SCHEDULED)
    assert [e.due_at for e in scheduled] == [T0 + 10 * DAY]


async def test_the_follow_up_of_an_event_older_than_one_stored_is_cancelled_as_scheduled(
    store: Store, events: Events
) -> None:
    # A payment-failed webhook that arrives after the invoice.paid that followed it.
    await store.ingest([paid(events, at=T0 + 60)], T0 + 60)

    result = await store.ingest([failed(events, at=T0)], T0 + 120)

    assert result.followups.scheduled == ()
    [born] = result.followups.cancelled
    assert born.cause == "a newer event was stored first: stripe/evt_1 (rule paid)"
    assert (born.state, born.settled_at) == (FollowUpState.CANCELLED, T0 + 120)


@pytest.mark.parametrize("order", ["failed first", "paid first"])
async def test_within_one_group_of_events_the_newer_one_wins_whatever_the_arrival_order(
    store: Store, events: Events, order: str
) -> None:
    batch = [failed(events, at=T0), paid(events, at=T0 + 60)]
    if order == "paid first":
        batch.reverse()

    result = await store.ingest(batch, T0 + 120)

    assert (await only(store)).state is FollowUpState.CANCELLED
    assert len(result.followups.cancelled) == 1


async def test_one_ingest_of_events_for_several_leads_cancels_only_where_it_is_newer(
    store: Store, events: Events
) -> None:
    for lead in (1, 2, 3):
        await store.ingest([failed(events, lead_id=lead, at=T0)], T0)
    batch = [
        paid(events, at=T0 + 60, lead_id=1),  # newer: cancels
        paid(events, at=T0 - 60, lead_id=2),  # older: does not
        paid(events, at=T0 + 60, lead_id=4),  # a lead without any
        failed(events, at=T0 + 120, lead_id=5),  # asks for one ...
        paid(events, at=T0 + 180, lead_id=5),  # ... that a newer event beside it cancels
    ]

    result = await store.ingest(batch, T0 + 200)

    assert sorted(e.lead_id for e in result.followups.cancelled) == [1, 5]
    assert result.followups.scheduled == ()
    waiting = await store.followups(state=FollowUpState.SCHEDULED)
    assert sorted(e.lead_id for e in waiting) == [2, 3]


async def test_concurrent_ingests_cancel_each_follow_up_they_are_newer_than(
    store: Store, events: Events
) -> None:
    # Concurrent calls share one transaction on SQLite (group commit), not on PostgreSQL.
    for lead in range(1, 21):
        await store.ingest([failed(events, lead_id=lead, at=T0)], T0)

    results = await asyncio.gather(
        *(store.ingest([paid(events, at=T0 + 60, lead_id=n)], T0 + 60) for n in range(1, 21))
    )

    assert sum(len(r.followups.cancelled) for r in results) == 20
    assert [len(r.followups.cancelled) for r in results] == [1] * 20
    assert await store.followups(state=FollowUpState.SCHEDULED) == []


async def test_an_event_as_old_as_the_follow_ups_stored_later_is_the_newer_one(
    store: Store, events: Events
) -> None:
    await store.ingest([failed(events, at=T0)], T0)

    await store.ingest([paid(events, at=T0)], T0 + 1)

    assert (await only(store)).state is FollowUpState.CANCELLED


async def test_replay_schedules_and_cancels_as_ingest_does(store: Store, events: Events) -> None:
    await store.ingest([failed(events, at=T0)], T0)
    event, _ = events.matched(occurred_at=T0 + DAY)
    await store.ingest([(event, Evaluation(Outcome.UNMAPPED))], T0 + DAY)
    [stored] = await store.events_for_replay(outcome=Outcome.UNMAPPED)
    fixed = Transition("paid", 7, 1, LeadStatus.WON)

    replayed = await store.apply_replay(
        stored.pk, Evaluation(Outcome.MATCHED, (fixed,), (), ("paid",)), T0 + 2 * DAY
    )

    assert replayed.transitions == 1
    [cancelled] = replayed.followups.cancelled
    assert cancelled.cause == f"newer event stripe/{event.event_id} (rule paid)"


# --- fired by the deliverer --------------------------------------------------------------


async def test_a_due_follow_up_fires_once_into_a_pending_transition_at_its_due_time(
    store: Store, events: Events
) -> None:
    await store.ingest([failed(events)], T0)
    due = T0 + 7 * DAY
    early = await store.fire_followups(due - 0.5, 100, epoch=EPOCH)
    assert (early.fired, early.next_due_at) == ([], due)

    firing = await store.fire_followups(due + 5, 100, epoch=EPOCH)

    [fired] = firing.fired
    assert (fired.state, fired.settled_at) == (FollowUpState.FIRED, due + 5)
    assert firing.next_due_at is None
    assert (await store.fire_followups(due + 6, 100, epoch=EPOCH)).fired == []
    follow, main = await store.ledger(7, 1)
    assert (follow.id, follow.origin, follow.rule) == (
        fired.transition_id,
        "followup",
        "payment-failed",
    )
    assert (follow.status, follow.notes, follow.state) == (
        LeadStatus.LOST,
        "still unpaid",
        TransitionState.PENDING,
    )
    assert (follow.occurred_at, follow.created_at, follow.next_attempt_at) == (
        due,
        due + 5,
        due + 5,
    )
    assert follow.follow_up == main.follow_up == await only(store)
    assert main.origin == "event"


async def test_a_fired_follow_up_is_claimed_and_settled_like_any_transition(
    store: Store, events: Events
) -> None:
    await store.ingest([failed(events)], T0)
    await store.mark_delivered(
        (await store.claim_due(T0, 10, coalesce=True, epoch=EPOCH)).claimed[0].id,
        T0,
        200,
        epoch=EPOCH,
    )
    due = T0 + 7 * DAY
    await store.fire_followups(due, 100, epoch=EPOCH)

    [claimed] = (await store.claim_due(due, 10, coalesce=True, epoch=EPOCH)).claimed
    assert (claimed.status, claimed.origin, claimed.occurred_at) == (
        LeadStatus.LOST,
        "followup",
        due,
    )
    await store.mark_delivered(claimed.id, due, 200, epoch=EPOCH)

    states = [(e.status, e.state) for e in await store.ledger(7, 1)]
    assert states == [
        (LeadStatus.LOST, TransitionState.DELIVERED),
        (LeadStatus.SNOOZED, TransitionState.DELIVERED),
    ]


async def test_a_follow_up_due_before_its_event_was_sent_supersedes_it_not_the_other_way(
    store: Store, events: Events
) -> None:
    # A time in the past (here: at the event's own time) fires at once and sorts after
    # the event's transition: same occurred_at, a later id.
    now_due = FollowUp(LeadStatus.OPEN, None, T0)
    await store.ingest([events.matched(status=LeadStatus.SNOOZED, follow_up=now_due)], T0)
    await store.fire_followups(T0, 100, epoch=EPOCH)

    claim = await store.claim_due(T0, 10, coalesce=True, epoch=EPOCH)

    assert [c.status for c in claim.claimed] == [LeadStatus.OPEN]
    assert [s.status for s in claim.superseded] == [LeadStatus.SNOOZED]


async def test_follow_ups_fire_earliest_first_up_to_the_limit(store: Store, events: Events) -> None:
    for lead in range(1, 6):
        follow_up = FollowUp(LeadStatus.LOST, None, T0 + 100 - lead)
        await store.ingest([events.matched(lead_id=lead, follow_up=follow_up)], T0)

    firing = await store.fire_followups(T0 + 100, 2, epoch=EPOCH)

    assert [f.lead_id for f in firing.fired] == [5, 4]
    assert firing.next_due_at == T0 + 97  # still due: the caller fires again at once


async def test_a_firing_cancels_the_leads_other_follow_ups_it_is_newer_than(
    store: Store, events: Events
) -> None:
    # Two rules of one event schedule for one lead: neither cancels the other as they are
    # stored; the first to fire is newer than the event, and cancels the second.
    soon = Transition("a", 7, 1, LeadStatus.SNOOZED, None, FollowUp(LeadStatus.LOST, None, T0 + 10))
    late = Transition("b", 7, 1, LeadStatus.SNOOZED, None, FollowUp(LeadStatus.OPEN, None, T0 + 20))
    evaluation = Evaluation(Outcome.MATCHED, (soon, late), (), ("a", "b"))
    result = await store.ingest([(events.event(), evaluation)], T0)
    assert len(result.followups.scheduled) == 2

    firing = await store.fire_followups(T0 + 30, 100, epoch=EPOCH)

    [fired] = firing.fired
    [cancelled] = firing.cancelled
    assert (fired.rule, cancelled.rule) == ("a", "b")
    assert cancelled.cause == f"follow-up {fired.id} fired first"
    assert [e.origin for e in await store.ledger(7, 1)].count("followup") == 1


async def test_claim_due_reports_the_earliest_scheduled_follow_up(
    store: Store, events: Events
) -> None:
    assert (await store.claim_due(T0, 10, coalesce=True, epoch=EPOCH)).followup_due_at is None
    await store.ingest([failed(events, lead_id=1), failed(events, lead_id=2, at=T0 - DAY)], T0)

    claim = await store.claim_due(T0, 10, coalesce=True, epoch=EPOCH)

    assert claim.followup_due_at == T0 + 6 * DAY


async def test_only_the_current_lease_term_can_fire(
    store: Store, backend: Backend, events: Events
) -> None:
    await store.ingest([failed(events)], T0)
    new_epoch = await backend.take_over()

    with pytest.raises(LeaseLost):
        await store.fire_followups(T0 + 8 * DAY, 100, epoch=EPOCH)

    assert (await only(store)).state is FollowUpState.SCHEDULED
    assert len(await store.ledger(7, 1)) == 1
    assert len((await store.fire_followups(T0 + 8 * DAY, 100, epoch=new_epoch)).fired) == 1


# --- operators ---------------------------------------------------------------------------


async def test_an_operator_cancels_by_id_or_by_lead_and_only_what_is_scheduled(
    store: Store, events: Events
) -> None:
    for lead in (1, 2, 3):
        await store.ingest([failed(events, lead_id=lead)], T0)
    one, two, three = (e.id for e in await store.followups())
    await store.fire_followups(T0 + 7 * DAY, 1, epoch=EPOCH)  # the first fires

    by_id = await store.cancel_followups(T0, ids=[one, two, 999_999], cause="operator")
    by_lead = await store.cancel_followups(T0, lead=(7, 3), cause="operator")

    assert [e.id for e in by_id] == [two]
    assert [(e.id, e.state, e.cause) for e in by_lead] == [
        (three, FollowUpState.CANCELLED, "operator")
    ]
    assert await store.cancel_followups(T0, lead=(7, 3), cause="operator") == []
    states = {e.id: e.state for e in await store.followups()}
    assert states == {
        one: FollowUpState.FIRED,
        two: FollowUpState.CANCELLED,
        three: FollowUpState.CANCELLED,
    }


async def test_the_listing_chooses_by_ids_lead_and_state(store: Store, events: Events) -> None:
    for lead in (1, 2):
        await store.ingest([failed(events, lead_id=lead, at=T0 + lead)], T0)
    await store.cancel_followups(T0, lead=(7, 2), cause="operator")
    first, second = await store.followups()

    assert await store.followups(lead=(7, 2)) == [second]
    assert await store.followups(state=FollowUpState.SCHEDULED) == [first]
    assert await store.followups(ids=[second.id, 12345]) == [second]
    assert await store.followups(lead=(7, 2), state=FollowUpState.SCHEDULED) == []
    assert await store.followups(limit=1) == [first]


async def test_a_cancel_and_a_firing_at_once_never_both_take_one_follow_up(
    backend: Backend, events: Events
) -> None:
    # Two stores on one database: the server firing and `followups cancel` beside it.
    server, tool = await backend.open(), await backend.open()
    await backend.lease().acquire("contract-tests", 3600)
    for lead in range(1, 61):
        await server.ingest([failed(events, lead_id=lead, at=T0 + lead)], T0)
    ids = [e.id for e in await server.followups()]
    due = T0 + 8 * DAY

    async def fire() -> list[FollowUpEntry]:
        fired: list[FollowUpEntry] = []
        while batch := (await server.fire_followups(due, 3, epoch=EPOCH)).fired:
            fired += batch
        return fired

    async def cancel() -> list[FollowUpEntry]:
        cancelled: list[FollowUpEntry] = []
        for followup_id in reversed(ids):  # from the other end, to meet in the middle
            cancelled += await tool.cancel_followups(due, ids=[followup_id], cause="operator")
        return cancelled

    fired, cancelled = await asyncio.gather(fire(), cancel())

    fired_ids, cancelled_ids = {e.id for e in fired}, {e.id for e in cancelled}
    assert fired_ids.isdisjoint(cancelled_ids)
    assert fired_ids | cancelled_ids == set(ids)
    final = {e.id: e for e in await server.followups()}
    assert {i for i, e in final.items() if e.state is FollowUpState.FIRED} == fired_ids
    for lead in range(1, 61):  # a fired one has its transition; a cancelled one none
        origins = [e.origin for e in await server.ledger(7, lead)]
        followup_id = ids[lead - 1]
        assert origins.count("followup") == (1 if followup_id in fired_ids else 0)


# --- bookkeeping -------------------------------------------------------------------------


async def test_stats_count_follow_ups_per_state_and_the_next_one_due(
    store: Store, events: Events
) -> None:
    empty = await store.stats(T0)
    assert (empty.followups, empty.next_followup_at) == (
        {"scheduled": 0, "fired": 0, "cancelled": 0},
        None,
    )
    for lead in (1, 2, 3):
        await store.ingest([failed(events, lead_id=lead, at=T0 + lead)], T0)
    await store.fire_followups(T0 + 7 * DAY + 1, 100, epoch=EPOCH)
    await store.cancel_followups(T0, lead=(7, 2), cause="operator")

    stats = await store.stats(T0)

    assert stats.followups == {"scheduled": 1, "fired": 1, "cancelled": 1}
    assert stats.next_followup_at == T0 + 7 * DAY + 3


async def test_purge_keeps_an_event_while_its_follow_up_is_scheduled(
    store: Store, events: Events
) -> None:
    await store.ingest([failed(events, received_at=T0 - 1000)], T0 - 1000)
    await store.mark_delivered(
        (await store.claim_due(T0, 10, coalesce=True, epoch=EPOCH)).claimed[0].id,
        T0,
        200,
        epoch=EPOCH,
    )

    assert await store.purge(T0) == 0  # its one transition is settled; the follow-up waits
    await store.cancel_followups(T0, lead=(7, 1), cause="operator")
    assert await store.purge(T0) == 1
    assert await store.followups() == []


# --- the migration -----------------------------------------------------------------------

OLD_ROWS = (
    "INSERT INTO events (source, event_id, occurred_at, received_at, payload, headers, outcome)"
    " VALUES ('stripe', 'evt_old', 1700000000, 1700000000, '{}', '{}', 'matched')",
    "INSERT INTO transitions (event_pk, rule, account_id, lead_id, status, occurred_at,"
    " created_at, state, next_attempt_at) VALUES (1, 'paid', 7, 1, 'won', 1700000000,"
    " 1700000000, 'pending', 1700000000)",
    "INSERT INTO leads (account_id, lead_id) VALUES (7, 1)",
)


async def _database_before_follow_ups(backend: Backend) -> None:
    """The database as the last release left it: migrations 1 and 2, one transition."""
    if backend.name == "sqlite":
        from bridge.store.sqlite.schema import MIGRATIONS

        path = backend.url.removeprefix("sqlite:///")
        conn = sqlite3.connect(path, isolation_level=None)
        for statement in (*MIGRATIONS[0], *MIGRATIONS[1], *OLD_ROWS):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 2")
        conn.close()
        return
    import asyncpg

    from bridge.store.postgres.schema import _VERSIONS
    from bridge.store.postgres.schema import MIGRATIONS as PG

    schema = backend.url.rsplit("schema=", 1)[1]
    conn = await asyncpg.connect(os.environ[POSTGRES_DSN_ENV])
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        await conn.execute(f'SET search_path = "{schema}"')
        for statement in (_VERSIONS, *PG[0], *PG[1], *OLD_ROWS):
            await conn.execute(statement)
        await conn.execute("INSERT INTO schema_migrations (version) VALUES (1), (2)")
    finally:
        await conn.close()


async def test_a_database_of_the_release_before_follow_ups_is_migrated_in_place(
    backend: Backend, events: Events
) -> None:
    await _database_before_follow_ups(backend)

    store = await backend.open()
    await backend.lease().acquire("contract-tests", 3600)

    [old] = await store.ledger(7, 1)
    assert (old.event_id, old.origin, old.follow_up) == ("evt_old", "event", None)
    await store.ingest([failed(events, at=T0 + 1)], T0)
    firing = await store.fire_followups(T0 + 8 * DAY, 10, epoch=EPOCH)
    assert [f.lead_id for f in firing.fired] == [1]
    assert [e.origin for e in await store.ledger(7, 1)] == ["followup", "event", "event"]
