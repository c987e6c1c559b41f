"""Follow-ups in PostgreSQL: the same rules as sqlite/followups.py, safe for replicas.

Async functions over one connection inside the caller's READ COMMITTED transaction; the
decisions are bridge/followups.py's.

Locks. Whoever reads a lead's follow-ups or transitions to decide about them holds the
lead's row in `leads` first (queue.lock_leads), so that scheduling a follow-up and
storing a newer transition for its lead are serialised: whichever commits second sees
the other (each statement of a READ COMMITTED transaction sees what committed before it
began). Follow-up rows are then locked in id order. Every writer, an operator's cancel
included, takes its lead locks (in key order) before any follow-up row: no cycle, no
deadlock. A firing and a cancel of one follow-up both update it only while it is
`scheduled`; the second to get its row lock finds it settled and changes nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from bridge import followups as rules
from bridge.followups import Scheduled
from bridge.models import Transition
from bridge.store.base import Firing, FollowUpChanges, FollowUpEntry, FollowUpState
from bridge.store.postgres.queue import LeadKey, check_epoch, lock_leads, refresh_leads, text
from bridge.store.rows import FOLLOWUP, FOLLOWUP_WIDTH, followup_entry

_OF_LEAD: Final = (
    "SELECT id, event_pk, occurred_at FROM followups"
    " WHERE account_id = $1 AND lead_id = $2 AND state = 'scheduled'"
)
_NEWEST_OTHER: Final = (
    "SELECT t.occurred_at, e.source, e.event_id, t.rule"
    " FROM transitions t JOIN events e ON e.pk = t.event_pk"
    " WHERE t.account_id = $1 AND t.lead_id = $2 AND t.event_pk <> $3 AND t.occurred_at > $4"
    " ORDER BY t.occurred_at DESC LIMIT 1"
)
# Rows are locked in id order before they change (see the module docstring).
_CANCEL: Final = """
    UPDATE followups SET state = 'cancelled', settled_at = $2, cause = $3
    WHERE id IN (SELECT id FROM followups WHERE id = ANY($1::bigint[]) AND state = 'scheduled'
                 ORDER BY id FOR UPDATE)
      AND state = 'scheduled'
    RETURNING id
"""
_ENTRIES: Final = f"SELECT {FOLLOWUP} FROM followups f JOIN events e ON e.pk = f.event_pk"  # noqa: S608
_DUE: Final = (
    "SELECT f.id, f.account_id, f.lead_id FROM followups f"
    " WHERE f.state = 'scheduled' AND f.due_at <= $1 ORDER BY f.due_at, f.id LIMIT $2"
)


@dataclass(frozen=True, slots=True)
class EventRef:
    """The stored event whose transitions are being queued."""

    pk: int
    source: str
    event_id: str
    occurred_at: float


@dataclass(slots=True)
class Changes:
    """Follow-ups scheduled and cancelled so far in one transaction."""

    scheduled: list[FollowUpEntry] = field(default_factory=list)
    cancelled: list[FollowUpEntry] = field(default_factory=list)

    def frozen(self) -> FollowUpChanges:
        return FollowUpChanges(tuple(self.scheduled), tuple(self.cancelled))


async def after_queued(
    conn: Any, event: EventRef, transitions: Sequence[Transition], now: float, out: Changes
) -> None:
    """The follow-up side of queueing one event's transitions, their leads already locked:
    cancel the scheduled ones they are newer than, then schedule the ones they ask for."""
    first_rule: dict[LeadKey, str] = {}
    for t in transitions:
        first_rule.setdefault((t.account_id, t.lead_id), t.rule)
    for key, rule in first_rule.items():
        rows = await conn.fetch(_OF_LEAD, *key)
        if not rows:  # most leads: one index probe, nothing more
            continue
        waiting = [Scheduled(*row) for row in rows]
        doomed = rules.cancelled_by_event(event.pk, event.occurred_at, waiting)
        if doomed:
            cause = rules.by_event(event.source, event.event_id, rule)
            out.cancelled += await _cancel(conn, [f.id for f in doomed], now, cause)
    for t in transitions:
        if t.follow_up is not None:
            await _schedule(conn, event, t, now, out)


async def _schedule(conn: Any, event: EventRef, t: Transition, now: float, out: Changes) -> None:
    assert t.follow_up is not None
    newer = await conn.fetchrow(_NEWEST_OTHER, t.account_id, t.lead_id, event.pk, event.occurred_at)
    cancelled = rules.born_cancelled(event.occurred_at, newer[0] if newer else None)
    cause = rules.by_stored(newer[1], newer[2], newer[3]) if cancelled else None
    state = FollowUpState.CANCELLED if cancelled else FollowUpState.SCHEDULED
    follow_up = t.follow_up
    followup_id = await conn.fetchval(
        "INSERT INTO followups (event_pk, rule, account_id, lead_id, status, notes, occurred_at,"
        " due_at, created_at, state, settled_at, cause)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        " ON CONFLICT (event_pk, rule) DO NOTHING RETURNING id",
        event.pk,
        text(t.rule),
        t.account_id,
        t.lead_id,
        str(follow_up.status),
        text(follow_up.notes),
        event.occurred_at,
        follow_up.due_at,
        now,
        str(state),
        now if cancelled else None,
        text(cause),
    )
    if followup_id is None:  # this (event, rule) scheduled one already
        return
    entry = FollowUpEntry(
        id=followup_id,
        source=event.source,
        event_id=event.event_id,
        rule=t.rule,
        account_id=t.account_id,
        lead_id=t.lead_id,
        status=follow_up.status,
        notes=follow_up.notes,
        occurred_at=event.occurred_at,
        due_at=follow_up.due_at,
        created_at=now,
        state=state,
        settled_at=now if cancelled else None,
        cause=cause,
    )
    (out.cancelled if cancelled else out.scheduled).append(entry)


async def _cancel(conn: Any, ids: Sequence[int], now: float, cause: str) -> list[FollowUpEntry]:
    rows = await conn.fetch(_CANCEL, list(ids), now, text(cause))
    return await entries(conn, [row[0] for row in rows])


async def entries(conn: Any, ids: Sequence[int]) -> list[FollowUpEntry]:
    """The follow-ups with these ids, earliest due first."""
    if not ids:
        return []
    rows = await conn.fetch(
        f"{_ENTRIES} WHERE f.id = ANY($1::bigint[]) ORDER BY f.due_at, f.id", list(ids)
    )
    return [followup_entry(row) for row in rows]


async def next_due(conn: Any) -> float | None:
    """The earliest due_at of a scheduled follow-up (the partial index's first entry)."""
    due = await conn.fetchval("SELECT min(due_at) FROM followups WHERE state = 'scheduled'")
    return None if due is None else float(due)


async def fire_due(conn: Any, now: float, limit: int, epoch: int) -> Firing:
    """Turn up to `limit` due follow-ups into pending transitions; see Store.fire_followups."""
    await check_epoch(conn, epoch)
    due = await conn.fetch(_DUE, now, limit)
    await lock_leads(conn, [(row[1], row[2]) for row in due])
    # Under the leads' locks, each one still scheduled is locked (in id order) and read.
    rows = await conn.fetch(
        f"SELECT {FOLLOWUP}, f.event_pk FROM followups f JOIN events e ON e.pk = f.event_pk"  # noqa: S608
        " WHERE f.id IN (SELECT id FROM followups WHERE id = ANY($1::bigint[])"
        " AND state = 'scheduled' ORDER BY id FOR UPDATE)"
        " ORDER BY f.due_at, f.id",
        [row[0] for row in due],
    )
    fired: list[FollowUpEntry] = []
    cancelled: list[FollowUpEntry] = []
    touched: set[LeadKey] = set()
    for row in rows:
        entry = followup_entry(row)
        if any(c.id == entry.id for c in cancelled):  # by one that fired before it, here
            continue
        key = (entry.account_id, entry.lead_id)
        transition_id = await _fire(conn, row[FOLLOWUP_WIDTH], entry, now)
        fired.append(
            replace(entry, state=FollowUpState.FIRED, settled_at=now, transition_id=transition_id)
        )
        touched.add(key)
        waiting = [Scheduled(*r) for r in await conn.fetch(_OF_LEAD, *key)]
        doomed = rules.cancelled_by_firing(entry.id, entry.due_at, waiting)
        if doomed:
            cancelled += await _cancel(conn, [f.id for f in doomed], now, rules.by_firing(entry.id))
    await refresh_leads(conn, touched)
    return Firing(fired, cancelled, await next_due(conn))


async def _fire(conn: Any, event_pk: int, entry: FollowUpEntry, now: float) -> int:
    """Queue the follow-up's transition (occurred_at = due_at), mark it fired; its id."""
    transition_id = await conn.fetchval(
        "INSERT INTO transitions (event_pk, rule, account_id, lead_id, status, notes,"
        " occurred_at, created_at, state, next_attempt_at, origin)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $8, 'followup')"
        " ON CONFLICT (event_pk, rule, origin) DO NOTHING RETURNING id",
        event_pk,
        entry.rule,
        entry.account_id,
        entry.lead_id,
        str(entry.status),
        entry.notes,
        entry.due_at,
        now,
    )
    if transition_id is None:  # the unique key says it fired already: queue nothing twice
        transition_id = await conn.fetchval(
            "SELECT id FROM transitions WHERE event_pk = $1 AND rule = $2 AND origin = 'followup'",
            event_pk,
            entry.rule,
        )
    await conn.execute(
        "UPDATE followups SET state = 'fired', settled_at = $2, transition_id = $3 WHERE id = $1",
        entry.id,
        now,
        transition_id,
    )
    return int(transition_id)


async def cancel_chosen(
    conn: Any, now: float, ids: Sequence[int] | None, lead: LeadKey | None, cause: str
) -> list[FollowUpEntry]:
    """Cancel the scheduled follow-ups among `ids`, or of `lead`; those cancelled."""
    if ids is not None:
        wanted = [i for i in ids if -(2**63) <= i < 2**63]  # others cannot be ids
        keys = await conn.fetch(
            "SELECT DISTINCT account_id, lead_id FROM followups WHERE id = ANY($1::bigint[])",
            wanted,
        )
        await lock_leads(conn, [(k[0], k[1]) for k in keys])  # leads first, as every writer
    else:
        assert lead is not None
        await lock_leads(conn, [lead])
        rows = await conn.fetch(
            "SELECT id FROM followups WHERE account_id = $1 AND lead_id = $2"
            " AND state = 'scheduled'",
            *lead,
        )
        wanted = [row[0] for row in rows]
    return await _cancel(conn, wanted, now, cause)


async def select(
    conn: Any,
    ids: Sequence[int] | None,
    lead: LeadKey | None,
    state: FollowUpState | None,
    limit: int,
) -> list[FollowUpEntry]:
    """Follow-ups by id, or by lead and state; earliest due first. A NULL parameter leaves
    its condition out."""
    rows = await conn.fetch(
        f"{_ENTRIES} WHERE ($1::bigint[] IS NULL OR f.id = ANY($1::bigint[]))"
        " AND ($2::bigint IS NULL OR (f.account_id = $2 AND f.lead_id = $3))"
        " AND ($4::text IS NULL OR f.state = $4) ORDER BY f.due_at, f.id LIMIT $5",
        None if ids is None else [i for i in ids if -(2**63) <= i < 2**63],
        None if lead is None else lead[0],
        None if lead is None else lead[1],
        None if state is None else str(state),
        limit,
    )
    return [followup_entry(row) for row in rows]


async def counts(conn: Any) -> dict[str, int]:
    """Follow-ups per state, every state present."""
    result = dict.fromkeys(map(str, FollowUpState), 0)
    for state, count in await conn.fetch("SELECT state, count(*) FROM followups GROUP BY state"):
        result[state] = count
    return result
