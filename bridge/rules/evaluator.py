"""Evaluating rules: one event in, its transitions (or why none) out; never raises.

A rule that fails on an event makes it unmapped with a short reason, so the event stays
stored and can be replayed once the rule is fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from bridge import followups
from bridge.models import (
    Evaluation,
    Event,
    FollowUp,
    LeadStatus,
    Outcome,
    Transition,
    Unmapped,
)
from bridge.rules.compiled import (
    MAX_RENDER,
    STATUSES,
    CompiledFollowUp,
    CompiledRule,
    TooLong,
    Value,
    parse_id,
)

MAX_NOTES = 2_000  # notes are truncated to this many characters
MAX_REASON_VALUE = 40  # characters of a rendered value quoted in an unmapped reason


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _quote(value: str) -> str:
    if len(value) > MAX_REASON_VALUE:
        value = value[:MAX_REASON_VALUE] + "..."
    return repr(value)


class _Unmappable(Exception):
    """A matched rule cannot produce a valid transition; the message is the reason."""


@dataclass(frozen=True)
class RuleSet:
    """Compiled rules in evaluation order, with the default account."""

    rules: list[CompiledRule]
    default_account_id: int | None = None

    def __post_init__(self) -> None:
        by_source: dict[str, list[CompiledRule]] = {}
        for rule in self.rules:
            for src in dict.fromkeys(rule.sources):
                by_source.setdefault(src, []).append(rule)
        object.__setattr__(self, "_by_source", {k: tuple(v) for k, v in by_source.items()})

    def for_source(self, source: str) -> tuple[CompiledRule, ...]:
        """The rules an event from `source` is tried against, in order."""
        by_source: dict[str, tuple[CompiledRule, ...]] = self.__dict__["_by_source"]
        return by_source.get(source, ())

    def evaluate(self, event: Event) -> Evaluation:
        """Run the rules on one event; never raises."""
        ctx = {
            "event": event.payload,
            "headers": dict(event.headers),
            "source": event.source,
            "received_at": event.received_at,
            "occurred_at": event.occurred_at,
            "event_id": event.event_id,
        }
        transitions: list[Transition] = []
        unmapped: list[Unmapped] = []
        matched: list[str] = []
        for rule in self.for_source(event.source):
            try:
                if not _holds(rule, ctx):
                    continue
                transition = self._transition(rule, ctx)
                if rule.follow_up is not None:
                    # A follow-up that cannot be made is unmapped on its own: the rule's
                    # transition still goes.
                    try:
                        follow_up = _follow_up(rule.follow_up, ctx, event.occurred_at)
                        transition = replace(transition, follow_up=follow_up)
                    except _Unmappable as exc:
                        unmapped.append(Unmapped(rule.name, str(exc)))
                transitions.append(transition)
                matched.append(rule.name)
            except _Unmappable as exc:
                unmapped.append(Unmapped(rule.name, str(exc)))
            # A rule that fails on one event must not lose it: the event is stored as
            # unmapped with the reason and can be replayed once the rule is fixed.
            except Exception as exc:
                unmapped.append(Unmapped(rule.name, _short(exc)))
            if not rule.continue_:
                break
        if transitions:
            outcome = Outcome.MATCHED
        elif unmapped:
            outcome = Outcome.UNMAPPED
        else:
            outcome = Outcome.IGNORED
        return Evaluation(outcome, tuple(transitions), tuple(unmapped), tuple(matched))

    def _transition(self, rule: CompiledRule, ctx: Mapping[str, Any]) -> Transition:
        if rule.account_id is None:
            if self.default_account_id is None:
                raise _Unmappable("no account_id: the rule sets none and voxys.account_id is unset")
            account_id = self.default_account_id
        else:
            account_id = _render_id(rule.account_id, ctx, "account_id")
        lead_id = _render_id(rule.lead_id, ctx, "lead_id")
        status = _render_status(rule.status, ctx, "status")
        notes = _render_notes(rule.notes, ctx, "notes")
        return Transition(rule.name, account_id, lead_id, status, notes)


def _follow_up(config: CompiledFollowUp, ctx: Mapping[str, Any], occurred_at: float) -> FollowUp:
    if isinstance(config.after, float):
        due_at = followups.due_after(occurred_at, config.after)
    else:
        text = _render(config.after, ctx, "follow_up.after")
        try:
            due_at = followups.due_at(occurred_at, followups.parse_time(text))
        except (ValueError, OverflowError, OSError) as exc:
            raise _Unmappable(f"follow_up.after rendered {_quote(text.strip())}: {exc}") from exc
    status = _render_status(config.status, ctx, "follow_up.status")
    notes = _render_notes(config.notes, ctx, "follow_up.notes")
    return FollowUp(status, notes, due_at)


def _holds(rule: CompiledRule, ctx: Mapping[str, Any]) -> bool:
    for condition in rule.when:
        try:
            if not condition.evaluate(ctx):
                return False
        except TooLong as exc:
            raise _Unmappable(f"{condition.key} {exc}") from exc
        except Exception as exc:  # reported as unmapped, see evaluate
            raise _Unmappable(f"{condition.key} failed: {_short(exc)}") from exc
    return True


def _render(
    value: Value,
    ctx: Mapping[str, Any],
    key: str,
    limit: int = MAX_RENDER,
    *,
    truncate: bool = False,
) -> str:
    try:
        return value.render(ctx, limit, truncate=truncate)
    except TooLong as exc:
        raise _Unmappable(f"{key} {exc}") from exc
    except Exception as exc:  # reported as unmapped, see evaluate
        raise _Unmappable(f"{key} failed: {_short(exc)}") from exc


def _render_id(value: Value, ctx: Mapping[str, Any], key: str) -> int:
    text = _render(value, ctx, key)
    number = parse_id(text)
    if number is None:
        raise _Unmappable(f"{key} rendered {_quote(text)}, not a positive integer")
    return number


def _render_status(value: Value, ctx: Mapping[str, Any], key: str) -> LeadStatus:
    status = _render(value, ctx, key).strip()
    if status not in STATUSES:
        raise _Unmappable(f"{key} rendered {_quote(status)}, not one of open, won, lost, snoozed")
    return LeadStatus(status)


def _render_notes(value: Value | None, ctx: Mapping[str, Any], key: str) -> str | None:
    """Notes are truncated, never refused; empty notes are None."""
    if value is None:
        return None
    return _render(value, ctx, key, MAX_NOTES, truncate=True).strip()[:MAX_NOTES] or None
