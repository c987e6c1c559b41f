"""Follow-ups: a transition a rule schedules for later, unless the lead moves first. Pure.

A rule with `follow_up` makes two transitions of one event: its own, queued at once, and
a follow-up, kept in the store until its due time and then turned into an ordinary
pending transition (occurred_at = the due time), paced, ordered, coalesced and retried
like any other. The store applies the decisions below in the transaction that stores
the transition deciding them; this module says what they are.

Due time. `after: 7d` is counted from the event's occurred_at; a template renders an
absolute time (ISO 8601, or epoch seconds). A due time before the event is the event's
own time: the follow-up then fires at once and still sorts after the event's own
transition (same occurred_at, a later id), so it is not stale.

Cancellation follows the per-lead order of bridge/claims.py (occurred_at, ties broken by
arrival). A scheduled follow-up is cancelled when a newer transition for its lead is
stored before it fires:
- a transition of another event that happened at or after the follow-up's event (a tie
  counts: the one stored later is the newer) cancels it; the event's own transitions do
  not, and neither does an older (stale) event;
- a follow-up whose lead already has a transition of another event that happened after
  its own event is cancelled as it is scheduled (a stale event's follow-up never fires);
- a follow-up firing is a newer transition at its due time: it cancels the lead's other
  scheduled follow-ups whose event happened at or before that time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from bridge.store.base import FollowUpChanges, FollowUpEntry

MILLISECONDS_FROM: Final = 1e11  # epoch seconds this large are year 5138: milliseconds, surely
OPERATOR: Final = "cancelled by an operator"
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")


@dataclass(frozen=True, slots=True)
class Scheduled:
    """What a cancellation decision needs of a scheduled follow-up."""

    id: int
    event_pk: int  # the event whose rule scheduled it
    occurred_at: float  # that event's occurred_at


def parse_time(text: str) -> float:
    """A rendered `follow_up.after`: ISO 8601 (no offset: UTC) or epoch seconds, as POSIX
    seconds. Raises ValueError with the reason."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        seconds = float(text)
        if abs(seconds) >= MILLISECONDS_FROM:
            raise ValueError(f"{text} is not epoch seconds (milliseconds? divide by 1000)")
        return seconds
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError("not an ISO 8601 time or epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def due_after(occurred_at: float, seconds: float) -> float:
    """The due time of `after: <duration>`."""
    return occurred_at + seconds


def due_at(occurred_at: float, moment: float) -> float:
    """The due time of a rendered time: never before the event itself (see module doc)."""
    if not math.isfinite(moment):
        raise ValueError("not a finite time")
    return max(moment, occurred_at)


def cancelled_by_event(
    event_pk: int, occurred_at: float, scheduled: Iterable[Scheduled]
) -> list[Scheduled]:
    """The follow-ups a transition of event `event_pk` (at `occurred_at`) cancels as it is
    stored: those of other events that happened no later."""
    return [f for f in scheduled if f.event_pk != event_pk and f.occurred_at <= occurred_at]


def cancelled_by_firing(
    fired_id: int, due_at: float, scheduled: Iterable[Scheduled]
) -> list[Scheduled]:
    """The follow-ups a follow-up firing at `due_at` cancels: the lead's others whose event
    happened no later."""
    return [f for f in scheduled if f.id != fired_id and f.occurred_at <= due_at]


def born_cancelled(occurred_at: float, newest_other: float | None) -> bool:
    """A follow-up of an event at `occurred_at` is cancelled as it is scheduled when its
    lead has a transition of another event that happened later (`newest_other`)."""
    return newest_other is not None and newest_other > occurred_at


# --- words ----------------------------------------------------------------------------


def by_event(source: str, event_id: str, rule: str) -> str:
    """The cause of a cancellation by a newer transition."""
    return f"newer event {source}/{event_id} (rule {rule})"


def by_stored(source: str, event_id: str, rule: str) -> str:
    """The cause of a follow-up cancelled as it was scheduled."""
    return f"a newer event was stored first: {source}/{event_id} (rule {rule})"


def by_firing(followup_id: int) -> str:
    """The cause of a cancellation by another follow-up firing."""
    return f"follow-up {followup_id} fired first"


def span(seconds: float) -> str:
    """A duration for people: `7d`, `36h`, `1d 2h`, `5m 30s`, `0s`."""
    seconds = round(abs(seconds))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts[:2]) or "0s"


def iso(ts: float) -> str:
    """POSIX seconds as ISO 8601 UTC to the second, e.g. 2024-09-01T12:00:00Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def fields(entry: FollowUpEntry) -> dict[str, Any]:
    """The log fields of one follow-up."""
    return {
        "followup_id": entry.id,
        "source": entry.source,
        "event_id": entry.event_id,
        "rule": entry.rule,
        "account_id": entry.account_id,
        "lead_id": entry.lead_id,
        "status": str(entry.status),
        "due_at": iso(entry.due_at),
    }


def log_lines(changes: FollowUpChanges, now: float) -> list[tuple[str, str, dict[str, Any]]]:
    """(level, event, fields) of the lines for what one write did: `followup.scheduled` at
    debug (the webhook's own line counts them; `followups list` has the rest) and
    `followup.cancelled` at info, with its cause."""
    lines = [
        ("debug", "followup.scheduled", {**fields(e), "due_in": span(max(0.0, e.due_at - now))})
        for e in changes.scheduled
    ]
    lines += [
        ("info", "followup.cancelled", {**fields(e), "cause": e.cause}) for e in changes.cancelled
    ]
    return lines
