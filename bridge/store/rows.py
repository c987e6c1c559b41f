"""Rows to records and back, shared by the backends: both select the same columns in the
same order.

`QUEUED`-shaped rows become QueuedTransition, ledger rows LedgerEntry, event rows
StoredEvent, `FOLLOWUP` rows FollowUpEntry; each backend's queries name their columns
to match. `json_text` encodes what an event row keeps.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

import orjson

from bridge.models import Event, LeadStatus, Outcome
from bridge.store.base import (
    FollowUpEntry,
    FollowUpState,
    LedgerEntry,
    QueuedTransition,
    StoredEvent,
    TransitionState,
)

# A transition `t` with its event `e`, in the order `ledger_entry` reads them (both
# backends): its batch's size comes from a scalar subquery, NULL when it went alone.
LEDGER: Final = (
    "t.id, e.source, e.event_id, t.rule, t.account_id, t.lead_id, t.status, t.notes, t.state,"
    " t.occurred_at, t.created_at, t.attempts, t.first_attempt_at, t.last_attempt_at,"
    " t.next_attempt_at, t.http_status, t.reason, e.pk, t.origin, t.batch_id,"
    " (SELECT b.size FROM batches b WHERE b.id = t.batch_id)"
)
# A follow-up `f` joined with its event `e`, in the order `followup_entry` reads them.
FOLLOWUP: Final = (
    "f.id, e.source, e.event_id, f.rule, f.account_id, f.lead_id, f.status, f.notes,"
    " f.occurred_at, f.due_at, f.created_at, f.state, f.settled_at, f.transition_id, f.cause"
)
FOLLOWUP_WIDTH: Final = 15


def json_text(value: Any) -> str:
    """Compact JSON text of a payload or headers, as stored (SQLite and PostgreSQL text).

    orjson escapes control characters (NUL included) and writes other text as UTF-8,
    ten times faster than `json`. What it refuses, a lone surrogate (valid in a JSON
    escape, not in UTF-8) or an integer beyond 64 bits, goes through `json`, whose
    ASCII escapes store it exactly. orjson would write a non-finite float as null, but
    bodies never decode to one (`bridge.sources.base.decode_body` refuses them).
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":"))


def queued(row: Sequence[Any]) -> QueuedTransition:
    """id, source, event_id, rule, account_id, lead_id, status, notes, occurred_at,
    created_at, attempts, not_found_attempts[, next_attempt_at[, origin]]."""
    return QueuedTransition(
        id=row[0],
        source=row[1],
        event_id=row[2],
        rule=row[3],
        account_id=row[4],
        lead_id=row[5],
        status=LeadStatus(row[6]),
        notes=row[7],
        occurred_at=row[8],
        created_at=row[9],
        attempts=row[10],
        not_found_attempts=row[11],
        next_attempt_at=row[12] if len(row) > 12 else None,
        origin=row[13] if len(row) > 13 else "event",
    )


def ledger_entry(row: Sequence[Any]) -> LedgerEntry:
    """id, source, event_id, rule, account_id, lead_id, status, notes, state, occurred_at,
    created_at, attempts, first/last/next attempt times, http_status, reason, event pk,
    origin, batch id, batch size[, FOLLOWUP columns of a LEFT JOIN] (`LEDGER`)."""
    follow_up = None
    if len(row) > 21 and row[21] is not None:
        follow_up = followup_entry(row[21 : 21 + FOLLOWUP_WIDTH])
    return LedgerEntry(
        id=row[0],
        source=row[1],
        event_id=row[2],
        rule=row[3],
        account_id=row[4],
        lead_id=row[5],
        status=LeadStatus(row[6]),
        notes=row[7],
        state=TransitionState(row[8]),
        occurred_at=row[9],
        created_at=row[10],
        attempts=row[11],
        first_attempt_at=row[12],
        last_attempt_at=row[13],
        next_attempt_at=row[14],
        http_status=row[15],
        reason=row[16],
        event_pk=row[17],
        origin=row[18],
        follow_up=follow_up,
        batch_id=row[19],
        batch_size=row[20],
    )


def followup_entry(row: Sequence[Any]) -> FollowUpEntry:
    """The FOLLOWUP columns."""
    return FollowUpEntry(
        id=row[0],
        source=row[1],
        event_id=row[2],
        rule=row[3],
        account_id=row[4],
        lead_id=row[5],
        status=LeadStatus(row[6]),
        notes=row[7],
        occurred_at=row[8],
        due_at=row[9],
        created_at=row[10],
        state=FollowUpState(row[11]),
        settled_at=row[12],
        transition_id=row[13],
        cause=row[14],
    )


def stored_event(row: Sequence[Any]) -> StoredEvent:
    """pk, source, event_id, occurred_at, received_at, payload, headers, outcome, rule, reason."""
    event = Event(
        source=row[1],
        event_id=row[2],
        occurred_at=row[3],
        received_at=row[4],
        payload=json.loads(row[5]),
        headers=json.loads(row[6]),
    )
    return StoredEvent(pk=row[0], event=event, outcome=Outcome(row[7]), rule=row[8], reason=row[9])
