"""Read-only queries of the SQLite store, run in its reader thread.

Its f-strings join constant SQL fragments only; every value is a bound parameter.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from bridge.models import Outcome
from bridge.store.base import LedgerEntry, Stats, StoredEvent, TransitionState
from bridge.store.rows import FOLLOWUP, LEDGER, ledger_entry, stored_event
from bridge.store.sqlite.followups import counts, next_due
from bridge.store.sqlite.queue import FROM, IN_IDS, LeadKey

EVENT = "pk, source, event_id, occurred_at, received_at, payload, headers, outcome, rule, reason"


def dead_letters(conn: sqlite3.Connection, limit: int) -> list[LedgerEntry]:
    """Dead transitions, the most recently dead first."""
    rows = conn.execute(
        # Without ANALYZE statistics the planner would sort every dead row instead.
        f"SELECT {LEDGER} FROM transitions t INDEXED BY transitions_dead"  # noqa: S608
        " JOIN events e ON e.pk = t.event_pk WHERE t.state = 'dead'"
        " ORDER BY t.settled_at DESC, t.id DESC LIMIT ?",
        (limit,),
    ).fetchall()
    return [ledger_entry(row) for row in rows]


def ledger(conn: sqlite3.Connection, key: LeadKey) -> list[LedgerEntry]:
    """Every transition of one lead, newest first in the order they apply, each with the
    follow-up of its (event, rule) if there is one."""
    rows = conn.execute(
        f"SELECT {LEDGER}, {FOLLOWUP} {FROM}"
        " LEFT JOIN followups f ON f.event_pk = t.event_pk AND f.rule = t.rule"
        " WHERE t.account_id = ? AND t.lead_id = ? ORDER BY t.occurred_at DESC, t.id DESC",
        key,
    ).fetchall()
    return [ledger_entry(row) for row in rows]


def events_by_ids(conn: sqlite3.Connection, ids: Sequence[int], limit: int) -> list[StoredEvent]:
    """The stored events with these primary keys, in arrival order."""
    rows = conn.execute(
        f"SELECT {EVENT} FROM events WHERE pk {IN_IDS} ORDER BY pk LIMIT ?",  # noqa: S608
        (json.dumps(list(ids)), limit),
    ).fetchall()
    return [stored_event(row) for row in rows]


def events_matching(
    conn: sqlite3.Connection, outcome: Outcome | None, since: float | None, limit: int
) -> list[StoredEvent]:
    """Stored events with this outcome received at or after `since`, oldest first."""
    where: list[str] = []
    params: list[Any] = []
    if outcome is not None:
        where.append("outcome = ?")
        params.append(str(outcome))
    if since is not None:
        where.append("received_at >= ?")
        params.append(since)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT {EVENT} FROM events {clause} ORDER BY received_at, pk LIMIT ?",  # noqa: S608
        (*params, limit),
    ).fetchall()
    return [stored_event(row) for row in rows]


def list_events(
    conn: sqlite3.Connection,
    outcome: Outcome | None,
    source: str | None,
    since: float | None,
    limit: int,
) -> list[StoredEvent]:
    """Stored events, newest first, optionally by outcome, source and received_at >= since."""
    where: list[str] = []
    params: list[Any] = []
    for condition, value in (("outcome = ?", outcome), ("source = ?", source)):
        if value is not None:
            where.append(condition)
            params.append(str(value))
    if since is not None:
        where.append("received_at >= ?")
        params.append(since)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT {EVENT} FROM events {clause}"  # noqa: S608
        " ORDER BY received_at DESC, pk DESC LIMIT ?",
        (*params, limit),
    ).fetchall()
    return [stored_event(row) for row in rows]


def stats(conn: sqlite3.Connection, now: float) -> Stats:
    """Counts per state and outcome, from one consistent snapshot."""
    conn.execute("BEGIN")
    try:
        transitions = dict.fromkeys(map(str, TransitionState), 0)
        transitions.update(
            conn.execute("SELECT state, count(*) FROM transitions GROUP BY state").fetchall()
        )
        events = dict.fromkeys(map(str, Outcome), 0)
        events.update(conn.execute("SELECT outcome, count(*) FROM events GROUP BY outcome"))
        (retrying,) = conn.execute(
            "SELECT count(*) FROM transitions"
            " WHERE state = 'pending' AND last_attempt_at IS NOT NULL"
        ).fetchone()
        (oldest,) = conn.execute(
            "SELECT min(created_at) FROM transitions WHERE state IN ('pending', 'in_flight')"
        ).fetchone()
        followups, next_followup_at = counts(conn), next_due(conn)
    finally:
        conn.execute("COMMIT")
    return Stats(
        transitions=transitions,
        events=events,
        retrying=retrying,
        oldest_pending_age_s=None if oldest is None else max(0.0, now - oldest),
        followups=followups,
        next_followup_at=next_followup_at,
    )
