"""Follow-ups in SQLite: scheduled and cancelled as transitions are stored, fired by the
deliverer, cancelled by operators. Plain functions over a connection inside the writer's
transaction (reads in the reader's); the decisions are bridge/followups.py's.

Costs. Storing a group of webhooks asks once which of their leads have a scheduled
follow-up (an index probe per lead, one statement); only those leads' follow-ups are
read, and only an event with a `follow_up` reads its lead's newest other transition.
Nothing is held in memory while a follow-up waits: the deliverer reads the earliest due
time from a partial index of the scheduled ones.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Final

from bridge import followups as rules
from bridge.followups import Scheduled
from bridge.models import Transition
from bridge.store.base import (
    Firing,
    FollowUpChanges,
    FollowUpEntry,
    FollowUpState,
)
from bridge.store.rows import FOLLOWUP, FOLLOWUP_WIDTH, followup_entry
from bridge.store.sqlite.queue import (
    IN_IDS,
    ROWS_PER_STATEMENT,
    LeadKey,
    check_epoch,
    placeholders,
    refresh_leads,
    text,
)

_OF_LEAD: Final = (
    "SELECT id, event_pk, occurred_at FROM followups"
    " WHERE account_id = ? AND lead_id = ? AND state = 'scheduled'"
)
# Which of a set of leads (`{values}`: `(?, ?)` per lead) have a scheduled follow-up: a
# probe of followups_lead per lead; for one lead (a lone webhook) the plain probe is cheaper.
_WAITING: Final = (
    "SELECT f.account_id, f.lead_id FROM (VALUES {values}) AS k"
    " JOIN followups f ON f.account_id = k.column1 AND f.lead_id = k.column2"
    " AND f.state = 'scheduled'"
)
_WAITING_ONE: Final = (
    "SELECT account_id, lead_id FROM followups"
    " WHERE account_id = ? AND lead_id = ? AND state = 'scheduled' LIMIT 1"
)
_NEWEST_OTHER: Final = (
    "SELECT t.occurred_at, e.source, e.event_id, t.rule"
    " FROM transitions t JOIN events e ON e.pk = t.event_pk"
    " WHERE t.account_id = ? AND t.lead_id = ? AND t.event_pk <> ? AND t.occurred_at > ?"
    " ORDER BY t.occurred_at DESC LIMIT 1"
)
_CANCEL: Final = (
    "UPDATE followups SET state = 'cancelled', settled_at = ?, cause = ?"
    " WHERE id = ? AND state = 'scheduled'"
)
_ENTRIES: Final = f"SELECT {FOLLOWUP} FROM followups f JOIN events e ON e.pk = f.event_pk"  # noqa: S608
_DUE: Final = (
    f"SELECT {FOLLOWUP}, f.event_pk FROM followups f JOIN events e ON e.pk = f.event_pk"  # noqa: S608
    " WHERE f.state = 'scheduled' AND f.due_at <= ? ORDER BY f.due_at, f.id LIMIT ?"
)


@dataclass(frozen=True, slots=True)
class EventRef:
    """The stored event whose transitions are being queued."""

    pk: int
    source: str
    event_id: str
    occurred_at: float


Queued = tuple[EventRef, Sequence[Transition]]  # a stored event and its new transitions


@dataclass(slots=True)
class Changes:
    """Follow-ups scheduled and cancelled so far in one transaction."""

    scheduled: list[FollowUpEntry] = field(default_factory=list)
    cancelled: list[FollowUpEntry] = field(default_factory=list)

    def frozen(self) -> FollowUpChanges:
        return FollowUpChanges(tuple(self.scheduled), tuple(self.cancelled))


def after_stored(
    conn: sqlite3.Connection, requests: Sequence[Sequence[Queued]], nows: Sequence[float]
) -> list[FollowUpChanges]:
    """The follow-up side of one group's ingest, its transitions all inserted: for each
    request (stored at its `now`), event by event in arrival order, what `after_queued`
    does; the leads with nothing scheduled are found first, in one statement."""
    keys = {(t.account_id, t.lead_id) for events in requests for _, ts in events for t in ts}
    waiting = _waiting(conn, list(keys))
    results = []
    for events, now in zip(requests, nows, strict=True):
        out = Changes()
        for event, transitions in events:
            after_queued(conn, event, transitions, now, out, waiting)
        results.append(out.frozen())
    return results


def _waiting(conn: sqlite3.Connection, keys: list[LeadKey]) -> set[LeadKey]:
    if len(keys) == 1:
        return set(conn.execute(_WAITING_ONE, keys[0]).fetchall())
    found: set[LeadKey] = set()
    for start in range(0, len(keys), ROWS_PER_STATEMENT):
        chunk = keys[start : start + ROWS_PER_STATEMENT]
        sql = _WAITING.format(values=placeholders(len(chunk), "(?, ?)"))
        found.update(conn.execute(sql, [v for key in chunk for v in key]).fetchall())
    return found


def after_queued(
    conn: sqlite3.Connection,
    event: EventRef,
    transitions: Sequence[Transition],
    now: float,
    out: Changes,
    waiting: set[LeadKey] | None = None,
) -> None:
    """The follow-up side of queueing one event's transitions: cancel the scheduled ones
    they are newer than, then schedule the ones they ask for. `waiting`, when given, holds
    every lead that may have a scheduled follow-up (and gains those scheduled here)."""
    first_rule: dict[LeadKey, str] = {}
    for t in transitions:
        first_rule.setdefault((t.account_id, t.lead_id), t.rule)
    for key, rule in first_rule.items():
        if waiting is not None and key not in waiting:
            continue
        rows = conn.execute(_OF_LEAD, key).fetchall()
        if not rows:
            continue
        scheduled = [Scheduled(*row) for row in rows]
        doomed = rules.cancelled_by_event(event.pk, event.occurred_at, scheduled)
        if doomed:
            cause = rules.by_event(event.source, event.event_id, rule)
            out.cancelled += _cancel(conn, [f.id for f in doomed], now, cause)
    for t in transitions:
        if t.follow_up is not None and _schedule(conn, event, t, now, out) and waiting is not None:
            waiting.add((t.account_id, t.lead_id))


def _schedule(
    conn: sqlite3.Connection, event: EventRef, t: Transition, now: float, out: Changes
) -> bool:
    """Store `t`'s follow-up; True when it is scheduled (not cancelled as it is stored)."""
    assert t.follow_up is not None
    newer = conn.execute(
        _NEWEST_OTHER, (t.account_id, t.lead_id, event.pk, event.occurred_at)
    ).fetchone()
    cancelled = rules.born_cancelled(event.occurred_at, newer[0] if newer else None)
    cause = rules.by_stored(*newer[1:]) if cancelled else None
    state = FollowUpState.CANCELLED if cancelled else FollowUpState.SCHEDULED
    follow_up = t.follow_up
    row = conn.execute(
        "INSERT INTO followups (event_pk, rule, account_id, lead_id, status, notes, occurred_at,"
        " due_at, created_at, state, settled_at, cause) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (event_pk, rule) DO NOTHING RETURNING id",
        (
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
            cause,
        ),
    ).fetchall()
    if not row:  # this (event, rule) scheduled one already
        return False
    entry = FollowUpEntry(
        id=row[0][0],
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
    return not cancelled


def _cancel(
    conn: sqlite3.Connection, ids: Sequence[int], now: float, cause: str
) -> list[FollowUpEntry]:
    conn.executemany(_CANCEL, [(now, cause, i) for i in ids])
    return entries(conn, ids)


def entries(conn: sqlite3.Connection, ids: Sequence[int]) -> list[FollowUpEntry]:
    """The follow-ups with these ids, earliest due first."""
    if not ids:
        return []
    rows = conn.execute(
        f"{_ENTRIES} WHERE f.id {IN_IDS} ORDER BY f.due_at, f.id", (json.dumps(list(ids)),)
    ).fetchall()
    return [followup_entry(row) for row in rows]


def next_due(conn: sqlite3.Connection) -> float | None:
    """The earliest due_at of a scheduled follow-up (the partial index's first entry)."""
    (due,) = conn.execute("SELECT min(due_at) FROM followups WHERE state = 'scheduled'").fetchone()
    return None if due is None else float(due)


def fire_due(conn: sqlite3.Connection, now: float, limit: int, epoch: int) -> Firing:
    """Turn up to `limit` due follow-ups into pending transitions; see Store.fire_followups."""
    check_epoch(conn, epoch)
    fired: list[FollowUpEntry] = []
    cancelled: list[FollowUpEntry] = []
    touched: set[LeadKey] = set()
    for row in conn.execute(_DUE, (now, limit)).fetchall():
        entry = followup_entry(row)
        if any(c.id == entry.id for c in cancelled):  # by one that fired before it, here
            continue
        key = (entry.account_id, entry.lead_id)
        transition_id = _fire(conn, row[FOLLOWUP_WIDTH], entry, now)
        fired.append(
            replace(entry, state=FollowUpState.FIRED, settled_at=now, transition_id=transition_id)
        )
        touched.add(key)
        waiting = [Scheduled(*r) for r in conn.execute(_OF_LEAD, key)]
        doomed = rules.cancelled_by_firing(entry.id, entry.due_at, waiting)
        if doomed:
            cancelled += _cancel(conn, [f.id for f in doomed], now, rules.by_firing(entry.id))
    conn.executemany(
        "INSERT INTO leads (account_id, lead_id) VALUES (?, ?) ON CONFLICT DO NOTHING", touched
    )
    refresh_leads(conn, touched)
    return Firing(fired, cancelled, next_due(conn))


def _fire(conn: sqlite3.Connection, event_pk: int, entry: FollowUpEntry, now: float) -> int:
    """Queue the follow-up's transition (occurred_at = due_at), mark it fired; its id."""
    inserted = conn.execute(
        "INSERT INTO transitions (event_pk, rule, account_id, lead_id, status, notes,"
        " occurred_at, created_at, state, next_attempt_at, origin)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?, 'followup')"
        " ON CONFLICT (event_pk, rule, origin) DO NOTHING RETURNING id",
        (
            event_pk,
            entry.rule,
            entry.account_id,
            entry.lead_id,
            str(entry.status),
            entry.notes,
            entry.due_at,
            now,
            now,
        ),
    ).fetchall()
    if inserted:
        transition_id = int(inserted[0][0])
    else:  # the unique key says it fired already: record that, queue nothing twice
        (transition_id,) = conn.execute(
            "SELECT id FROM transitions WHERE event_pk = ? AND rule = ? AND origin = 'followup'",
            (event_pk, entry.rule),
        ).fetchone()
    conn.execute(
        "UPDATE followups SET state = 'fired', settled_at = ?, transition_id = ? WHERE id = ?",
        (now, transition_id, entry.id),
    )
    return int(transition_id)


def cancel_chosen(
    conn: sqlite3.Connection,
    now: float,
    ids: Sequence[int] | None,
    lead: LeadKey | None,
    cause: str,
) -> list[FollowUpEntry]:
    """Cancel the scheduled follow-ups among `ids`, or of `lead`; those cancelled."""
    where, params = _chosen(ids, lead)
    rows = conn.execute(
        "UPDATE followups SET state = 'cancelled', settled_at = ?, cause = ?"  # noqa: S608
        f" WHERE state = 'scheduled' AND {where} RETURNING id",
        (now, text(cause), *params),
    ).fetchall()
    return entries(conn, [row[0] for row in rows])


def select(
    conn: sqlite3.Connection,
    ids: Sequence[int] | None,
    lead: LeadKey | None,
    state: FollowUpState | None,
    limit: int,
) -> list[FollowUpEntry]:
    """Follow-ups by id, or by lead and state; earliest due first."""
    where, params = _chosen(ids, lead, prefix="f.")
    if state is not None:
        where += " AND f.state = ?"
        params.append(str(state))
    rows = conn.execute(
        f"{_ENTRIES} WHERE {where} ORDER BY f.due_at, f.id LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [followup_entry(row) for row in rows]


def _chosen(
    ids: Sequence[int] | None, lead: LeadKey | None, prefix: str = ""
) -> tuple[str, list[Any]]:
    if ids is not None:
        return f"{prefix}id {IN_IDS}", [json.dumps(list(ids))]
    if lead is not None:
        return f"{prefix}account_id = ? AND {prefix}lead_id = ?", list(lead)
    return "1", []


def counts(conn: sqlite3.Connection) -> dict[str, int]:
    """Follow-ups per state, every state present."""
    result = dict.fromkeys(map(str, FollowUpState), 0)
    result.update(conn.execute("SELECT state, count(*) FROM followups GROUP BY state").fetchall())
    return result
