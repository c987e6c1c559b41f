"""Bulk claims and batch settles (Store.claim_requests, Store.settle_many) as a
specification, run against every backend. The per-lead rules of `claim_due` hold inside
a batch: one transition per lead in flight, order, stale, superseded, fencing.

Times are passed in: T0 is "now" unless a test says otherwise; nothing sleeps.
"""

from __future__ import annotations

import asyncio

import pytest

from bridge.errors import LeaseLost
from bridge.models import LeadStatus
from bridge.store.base import BatchRecord, BulkRules, Settle, Store

from .conftest import EPOCH, T0, Backend, Events

RULES = BulkRules(min_batch=3, max_batch=5)


async def claim(store: Store, requests: int = 10, *, now: float = T0, coalesce: bool = True):  # type: ignore[no-untyped-def]
    return await store.claim_requests(now, requests, bulk=RULES, coalesce=coalesce, epoch=EPOCH)


def lead_ids(batch: list) -> list[int]:  # type: ignore[type-arg]
    return [t.lead_id for t in batch]


async def states(store: Store, lead_id: int, account_id: int = 7) -> list[str]:
    return [str(e.state) for e in await store.ledger(account_id, lead_id)]


async def test_a_backlog_is_claimed_as_batches_of_one_account_and_status(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(lead_id=n, occurred_at=T0 + n) for n in range(1, 13)], T0)

    got = await claim(store)

    assert [lead_ids(b) for b in got.batches] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert got.claimed == []  # two left, fewer than min_batch: they wait for company...
    assert all(s == ["in_flight"] for s in [await states(store, n) for n in range(1, 11)])
    rest = await claim(store)  # ... and go as PATCHes when nothing else is due
    assert rest.batches == [] and [t.lead_id for t in rest.claimed] == [11, 12]


async def test_a_lone_transition_is_claimed_for_a_patch(store: Store, events: Events) -> None:
    await store.ingest([events.matched(lead_id=1)], T0)

    got = await claim(store)

    assert got.batches == [] and [t.lead_id for t in got.claimed] == [1]


async def test_no_more_requests_than_asked_and_the_rest_stays_pending(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(lead_id=n) for n in range(1, 13)], T0)

    first = await claim(store, 1)
    second = await claim(store, 1)

    assert [len(b) for b in first.batches] == [5] and first.claimed == []
    assert [len(b) for b in second.batches] == [5]
    assert not set(lead_ids(first.batches[0])) & set(lead_ids(second.batches[0]))
    assert [await states(store, n) for n in range(1, 13)].count(["pending"]) == 2


async def test_accounts_and_statuses_are_never_mixed_in_a_batch(
    store: Store, events: Events
) -> None:
    items = [events.matched(lead_id=n, status=LeadStatus.WON) for n in range(1, 4)]
    items += [events.matched(lead_id=n, status=LeadStatus.LOST) for n in range(4, 7)]
    items += [events.matched(lead_id=n, account_id=8) for n in range(7, 10)]
    await store.ingest(items, T0)

    got = await claim(store)

    assert sorted(sorted({(t.account_id, str(t.status)) for t in b}) for b in got.batches) == [
        [(7, "lost")],
        [(7, "won")],
        [(8, "won")],
    ]


async def test_transitions_with_notes_are_patched_when_notes_are_kept(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(lead_id=n, notes="paid") for n in range(1, 5)], T0)

    kept = await claim(store)

    assert kept.batches == [] and len(kept.claimed) == 4


async def test_only_the_newest_of_a_lead_is_batched_and_the_older_is_superseded(
    store: Store, events: Events
) -> None:
    items = [events.matched(lead_id=n, status=LeadStatus.LOST, occurred_at=T0) for n in range(3)]
    items += [events.matched(lead_id=n, occurred_at=T0 + 1) for n in range(3)]
    await store.ingest(items, T0)

    got = await claim(store)

    [batch] = got.batches
    assert sorted(lead_ids(batch)) == [0, 1, 2] and {t.status for t in batch} == {LeadStatus.WON}
    assert sorted(t.lead_id for t in got.superseded) == [0, 1, 2]
    assert await states(store, 0) == ["in_flight", "superseded"]


async def test_a_stale_head_is_settled_and_never_batched(store: Store, events: Events) -> None:
    await store.ingest([events.matched(lead_id=1, occurred_at=T0 + 10)], T0)
    [newer] = (await claim(store)).claimed
    await store.mark_delivered(newer.id, T0, 200, epoch=EPOCH)
    await store.ingest([events.matched(lead_id=n, occurred_at=T0) for n in (1, 2, 3, 4)], T0)

    got = await claim(store)

    assert [t.lead_id for t in got.stale] == [1]
    assert [sorted(lead_ids(b)) for b in got.batches] == [[2, 3, 4]]


async def test_a_lead_in_flight_is_not_claimed_again(store: Store, events: Events) -> None:
    await store.ingest([events.matched(lead_id=n) for n in range(1, 4)], T0)
    [batch] = (await claim(store)).batches
    await store.ingest([events.matched(lead_id=n, occurred_at=T0 + 1) for n in range(1, 4)], T0)

    again = await claim(store)

    assert again.batches == [] and again.claimed == []
    assert len(batch) == 3


async def test_concurrent_claims_never_hand_out_a_lead_twice(store: Store, events: Events) -> None:
    await store.ingest([events.matched(lead_id=n) for n in range(60)], T0)

    claims = list(await asyncio.gather(*(claim(store, 2) for _ in range(8))))
    while (more := await claim(store, 2)).batches or more.claimed:  # what the race left
        claims.append(more)

    leads = [t.lead_id for c in claims for b in c.batches for t in b]
    leads += [t.lead_id for c in claims for t in c.claimed]
    assert sorted(leads) == list(range(60))


async def test_a_batch_settles_in_one_go_and_the_ledger_names_it(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(lead_id=n, notes=f"n{n}") for n in range(1, 4)], T0)
    got = await store.claim_requests(
        T0, 10, bulk=BulkRules(3, 5, drop_notes=True), coalesce=True, epoch=EPOCH
    )
    [batch] = got.batches
    record = BatchRecord(7, LeadStatus.WON, size=3, http_status=200, sent_at=T0)

    batch_id = await store.settle_many(
        [Settle(t.id, "delivered", http_status=200) for t in batch],
        T0 + 1,
        batch=record,
        epoch=EPOCH,
    )

    [entry] = await store.ledger(7, 2)
    assert (str(entry.state), entry.attempts, entry.http_status) == ("delivered", 1, 200)
    assert (entry.batch_id, entry.batch_size, entry.notes_dropped) == (batch_id, 3, True)
    assert entry.as_json()["batch"] == {"id": batch_id, "leads": 3}


async def test_a_batch_settle_applies_each_outcome(store: Store, events: Events) -> None:
    await store.ingest([events.matched(lead_id=n) for n in range(1, 5)], T0)
    [batch] = (await claim(store)).batches
    a, b, c, d = sorted(batch, key=lambda t: t.lead_id)

    await store.settle_many(
        [
            Settle(a.id, "delivered", http_status=200),
            Settle(b.id, "retry", http_status=503, reason="HTTP 503", next_attempt_at=T0 + 9),
            Settle(c.id, "dead", http_status=404, reason="lead not found"),
            Settle(d.id, "release", next_attempt_at=T0 + 5),
        ],
        T0,
        batch=BatchRecord(7, LeadStatus.WON, 4, 503, T0),
        epoch=EPOCH,
    )

    entries = {e.lead_id: e for n in range(1, 5) for e in await store.ledger(7, n)}
    assert [str(entries[n].state) for n in range(1, 5)] == [
        "delivered",
        "pending",
        "dead",
        "pending",
    ]
    assert (entries[2].attempts, entries[2].next_attempt_at, entries[2].reason) == (
        1,
        T0 + 9,
        "HTTP 503",
    )
    assert (entries[4].attempts, entries[4].batch_id) == (0, None)  # released: no attempt
    assert entries[3].batch_id is not None and entries[3].batch_size == 4
    assert [e.lead_id for e in await store.dead_letters()] == [3]


async def test_a_later_patch_attempt_clears_the_batch_from_the_ledger(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(lead_id=n) for n in range(1, 4)], T0)
    [batch] = (await claim(store)).batches
    await store.settle_many(
        [Settle(t.id, "retry", http_status=503, next_attempt_at=T0) for t in batch],
        T0,
        batch=BatchRecord(7, LeadStatus.WON, 3, 503, T0),
        epoch=EPOCH,
    )
    [single] = (await store.claim_due(T0, 1, coalesce=True, epoch=EPOCH)).claimed

    await store.mark_delivered(single.id, T0, 200, epoch=EPOCH)

    [entry] = await store.ledger(7, single.lead_id)
    assert (str(entry.state), entry.batch_id, entry.attempts) == ("delivered", None, 2)


async def test_a_batch_settle_from_an_earlier_term_changes_nothing(
    backend: Backend, store: Store, events: Events
) -> None:
    await store.ingest([events.matched(lead_id=n) for n in range(1, 4)], T0)
    [batch] = (await claim(store)).batches
    await backend.take_over()

    with pytest.raises(LeaseLost):
        await store.settle_many(
            [Settle(t.id, "delivered", http_status=200) for t in batch],
            T0,
            batch=BatchRecord(7, LeadStatus.WON, 3, 200, T0),
            epoch=EPOCH,
        )
    with pytest.raises(LeaseLost):
        await claim(store)
    assert all(s == ["in_flight"] for s in [await states(store, t.lead_id) for t in batch])


async def test_one_claim_not_ours_refuses_the_whole_batch_settle(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(lead_id=n) for n in range(1, 4)], T0)
    [batch] = (await claim(store)).batches
    first, *rest = batch
    await store.mark_delivered(first.id, T0, 200, epoch=EPOCH)  # no longer in flight

    with pytest.raises(LeaseLost):
        await store.settle_many([Settle(t.id, "dead", reason="x") for t in batch], T0, epoch=EPOCH)

    assert all(s == ["in_flight"] for s in [await states(store, t.lead_id) for t in rest])


async def test_a_recovered_batch_is_claimed_again_by_the_new_term(
    backend: Backend, store: Store, events: Events
) -> None:
    await store.ingest([events.matched(lead_id=n) for n in range(1, 4)], T0)
    [batch] = (await claim(store)).batches
    epoch = await backend.take_over()

    assert await store.recover_claims(epoch=epoch) == 3
    again = await store.claim_requests(T0, 10, bulk=RULES, coalesce=True, epoch=epoch)

    assert sorted(lead_ids(again.batches[0])) == sorted(lead_ids(batch))


# --- past a front of PATCH-only leads ----------------------------------------------------
# A claim of 3 requests scans the oldest 3 x 5 x 2 = 30 due leads (bridge.bulk.scan_size).
FRONT = 30


@pytest.mark.parametrize("coalesce", [True, False])
async def test_leads_for_bulk_behind_a_front_of_patches_still_go_in_batches(
    store: Store, events: Events, coalesce: bool
) -> None:
    # Given the 30 oldest due leads all carry notes (kept: PATCHed one at a time) and
    # ten leads that may go in bulk are due behind them,
    await store.ingest([events.matched(lead_id=n, notes="paid") for n in range(1, 31)], T0)
    await store.ingest([events.matched(lead_id=n) for n in range(31, 41)], T0)

    # when a claim of three requests is made,
    got = await claim(store, 3, coalesce=coalesce)

    # it starts with the oldest PATCH and fills the rest with batches from behind.
    assert [t.lead_id for t in got.claimed] == [1]
    assert [lead_ids(b) for b in got.batches] == [[31, 32, 33, 34, 35], [36, 37, 38, 39, 40]]
    assert [await states(store, n) for n in (1, 2, 31, 40)] == [
        ["in_flight"],
        ["pending"],
        ["in_flight"],
        ["in_flight"],
    ]


async def test_behind_the_front_only_a_lead_whose_head_may_go_in_bulk_is_batched(
    store: Store, events: Events
) -> None:
    front = [events.matched(lead_id=n, notes="paid") for n in range(1, FRONT + 1)]
    await store.ingest(front, T0)
    # Lead 31's newest transition carries notes (its older one without is superseded by
    # it); lead 32 comes from a `bulk: false` rule; 33..35 may go in bulk.
    await store.ingest([events.matched(lead_id=31, occurred_at=T0)], T0)
    await store.ingest([events.matched(lead_id=31, occurred_at=T0 + 1, notes="paid")], T0)
    await store.ingest([events.matched(lead_id=32, rule="manual")], T0)
    await store.ingest([events.matched(lead_id=n) for n in range(33, 36)], T0)
    rules = BulkRules(min_batch=3, max_batch=5, patch_only_rules=frozenset({"manual"}))

    got = await store.claim_requests(T0, 3, bulk=rules, coalesce=True, epoch=EPOCH)

    assert [lead_ids(b) for b in got.batches] == [[33, 34, 35]]
    assert [t.lead_id for t in got.claimed] == [1, 2]
    assert await states(store, 31) == ["pending", "pending"]


async def test_behind_the_front_leads_of_an_account_without_bulk_are_not_looked_for(
    store: Store, events: Events
) -> None:
    front = [events.matched(lead_id=n, notes="paid") for n in range(1, 21)]
    await store.ingest(front, T0)
    # Account 8's bulk path answered 404: its ten leads come first behind the front, and
    # would fill the ten a claim of two requests looks further for.
    await store.ingest([events.matched(lead_id=n, account_id=8) for n in range(21, 31)], T0)
    await store.ingest([events.matched(lead_id=n) for n in range(31, 36)], T0)
    rules = BulkRules(min_batch=3, max_batch=5, patch_only_accounts=frozenset({8}))

    got = await store.claim_requests(T0, 2, bulk=rules, coalesce=True, epoch=EPOCH)

    assert [t.lead_id for t in got.claimed] == [1]
    assert [lead_ids(b) for b in got.batches] == [[31, 32, 33, 34, 35]]


async def test_the_leads_behind_the_front_are_handed_out_once_among_concurrent_claims(
    store: Store, events: Events
) -> None:
    await store.ingest([events.matched(lead_id=n, notes="paid") for n in range(1, 21)], T0)
    await store.ingest([events.matched(lead_id=n) for n in range(21, 81)], T0)

    # Claims of 2 requests scan 20 leads each: the front, or what the others left of it.
    claims = list(await asyncio.gather(*(claim(store, 2) for _ in range(8))))
    while (more := await claim(store, 2)).batches or more.claimed:  # what the race left
        claims.append(more)

    leads = [t.lead_id for c in claims for b in c.batches for t in b]
    leads += [t.lead_id for c in claims for t in c.claimed]
    assert sorted(leads) == list(range(1, 81))
