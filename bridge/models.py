"""The nouns every other module passes around: events, transitions, evaluations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class LeadStatus(StrEnum):
    """The four statuses Voxys Connect accepts for a lead."""

    OPEN = "open"
    WON = "won"
    LOST = "lost"
    SNOOZED = "snoozed"


class Outcome(StrEnum):
    """What the rules made of one stored event."""

    MATCHED = "matched"  # at least one transition was queued
    IGNORED = "ignored"  # no rule matched
    UNMAPPED = "unmapped"  # a rule matched but its lead, account or status was invalid


@dataclass(frozen=True, slots=True)
class Event:
    """One provider event, split out of a verified request.

    Times are POSIX seconds (UTC). `occurred_at` is the provider's own time of the
    event, or `received_at` when the provider gives none or gives one too far in the
    future (then `claimed_at` keeps what it gave; see `bridge/sources/base.py`).
    `headers` are the request's headers with lower-cased names and credentials removed.
    """

    source: str
    event_id: str
    occurred_at: float
    received_at: float
    payload: Any
    headers: Mapping[str, str] = field(default_factory=dict)
    claimed_at: float | None = None


@dataclass(frozen=True, slots=True)
class FollowUp:
    """A second transition a rule schedules for later: sent at `due_at` (POSIX seconds)
    unless a newer transition for the lead is stored first (bridge/followups.py)."""

    status: LeadStatus
    notes: str | None
    due_at: float


@dataclass(frozen=True, slots=True)
class Transition:
    """A lead-status change a rule asks for: what one PATCH would carry."""

    rule: str
    account_id: int
    lead_id: int
    status: LeadStatus
    notes: str | None = None
    follow_up: FollowUp | None = None


@dataclass(frozen=True, slots=True)
class Unmapped:
    """A rule matched an event but could not turn it into a valid transition."""

    rule: str
    reason: str


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The rules' verdict on one event: its outcome, transitions and problems."""

    outcome: Outcome
    transitions: tuple[Transition, ...] = ()
    unmapped: tuple[Unmapped, ...] = ()
    matched_rules: tuple[str, ...] = ()

    @property
    def reason(self) -> str | None:
        """The first unmapped rule's reason, for the event's stored outcome."""
        return self.unmapped[0].reason if self.unmapped else None

    @property
    def rule(self) -> str | None:
        """The rule that decided the outcome (first matched or first unmapped)."""
        if self.matched_rules:
            return self.matched_rules[0]
        return self.unmapped[0].rule if self.unmapped else None
