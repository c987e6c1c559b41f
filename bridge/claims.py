"""The per-lead claim rule, written once for every store backend. Pure.

A lead's pending transitions are ordered by (occurred_at, id): the order their events
happened in, ties broken by arrival. At most one transition per lead is in flight.

- With coalescing, the newest pending transition is the lead's head: when it is due it
  is claimed and every older pending one is `superseded` (sending them would only be
  overwritten). Without coalescing the oldest is the head and the rest wait their turn.
- A head that happened before the lead's last delivered transition is `stale`: sending
  it would move the lead back to an older state. It is settled without sending and the
  next one is considered (with coalescing every older one is stale as well).

Backends fetch a lead's pending transitions, call `plan_lead`, and apply the plan in
the same transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.store.base import QueuedTransition


@dataclass(frozen=True, slots=True)
class LeadPlan:
    """What to do with one lead's pending transitions now."""

    claim: QueuedTransition | None = None
    superseded: tuple[QueuedTransition, ...] = ()
    stale: tuple[QueuedTransition, ...] = ()


def plan_lead(
    pending: Sequence[QueuedTransition],
    last_delivered: float | None,
    now: float,
    *,
    coalesce: bool,
) -> LeadPlan:
    """Plan one lead: `pending` in (occurred_at, id) order, `last_delivered` the occurred_at
    of its newest delivered transition (None if none)."""

    def is_stale(t: QueuedTransition) -> bool:
        return last_delivered is not None and t.occurred_at < last_delivered

    def due(t: QueuedTransition) -> bool:
        return t.next_attempt_at is None or t.next_attempt_at <= now

    if coalesce:
        if not pending or not due(pending[-1]):
            return LeadPlan()
        head = pending[-1]
        if is_stale(head):  # then every older one is stale too
            return LeadPlan(stale=tuple(pending))
        return LeadPlan(claim=head, superseded=tuple(pending[:-1]))
    stale: list[QueuedTransition] = []
    for t in pending:
        if not due(t):
            break
        if not is_stale(t):
            return LeadPlan(claim=t, stale=tuple(stale))
        stale.append(t)
    return LeadPlan(stale=tuple(stale))
