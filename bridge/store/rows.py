"""Rows to records, shared by the backends: both select the same columns in the same order.

`QUEUED`-shaped rows become QueuedTransition, ledger rows LedgerEntry, event rows
StoredEvent; each backend's queries name their columns to match.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from bridge.models import Event, LeadStatus, Outcome
from bridge.store.base import LedgerEntry, QueuedTransition, StoredEvent, TransitionState


def queued(row: Sequence[Any]) -> QueuedTransition:
    """id, source, event_id, rule, account_id, lead_id, status, notes, occurred_at,
    created_at, attempts, not_found_attempts[, next_attempt_at]."""
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
    )


def ledger_entry(row: Sequence[Any]) -> LedgerEntry:
    """id, source, event_id, rule, account_id, lead_id, status, notes, state, occurred_at,
    created_at, attempts, first/last/next attempt times, http_status, reason, event pk."""
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
