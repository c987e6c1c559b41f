"""Follow-ups (issue 18), the pure part: due times, the cancellation rule, and rules with a
`follow_up` compiled at load and evaluated on events. No store, no loop, no clock."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bridge import followups
from bridge.followups import Scheduled
from bridge.models import FollowUp, LeadStatus, Outcome
from tests.test_rules import compile_, errors_of, event, rule, yaml_errors_of

T0 = 1_700_000_000.0
DAY = 86400.0

# --- due times ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2023-11-14T22:13:20Z", T0),
        ("2023-11-14T22:13:20+00:00", T0),
        ("2023-11-15T00:13:20+02:00", T0),
        ("2023-11-14T22:13:20", T0),  # no offset: UTC
        ("2023-11-14 22:13:20", T0),
        ("1700000000", T0),
        ("1700000000.5", T0 + 0.5),
        (" 1700000000 ", T0),
    ],
)
def test_a_rendered_time_is_iso_8601_or_epoch_seconds(text: str, seconds: float) -> None:
    assert followups.parse_time(text) == seconds


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not an ISO 8601 time or epoch seconds"),
        ("soon", "not an ISO 8601 time or epoch seconds"),
        ("7d", "not an ISO 8601 time or epoch seconds"),
        ("nan", "not an ISO 8601 time or epoch seconds"),
        ("1700000000000", "milliseconds? divide by 1000"),
    ],
)
def test_anything_else_is_refused_with_the_reason(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("?", r"\?")):
        followups.parse_time(text)


def test_a_duration_counts_from_the_event() -> None:
    assert followups.due_after(T0, 7 * DAY) == T0 + 7 * DAY


def test_a_rendered_time_before_the_event_is_due_as_the_event_happened() -> None:
    assert followups.due_at(T0, T0 - DAY) == T0
    assert followups.due_at(T0, T0 + DAY) == T0 + DAY


# --- the cancellation rule --------------------------------------------------------------

WAITING = [
    Scheduled(id=1, event_pk=10, occurred_at=T0),
    Scheduled(id=2, event_pk=11, occurred_at=T0 + 100),
]


def test_a_newer_event_cancels_the_follow_ups_of_events_before_it() -> None:
    assert followups.cancelled_by_event(12, T0 + 50, WAITING) == [WAITING[0]]
    assert followups.cancelled_by_event(12, T0 + 100, WAITING) == WAITING


def test_an_event_as_old_as_the_follow_ups_own_is_newer_by_arrival() -> None:
    # The per-lead order breaks ties by arrival: stored later is newer.
    assert followups.cancelled_by_event(12, T0, WAITING) == [WAITING[0]]


def test_a_stale_event_cancels_nothing() -> None:
    assert followups.cancelled_by_event(12, T0 - 1, WAITING) == []


def test_an_events_own_transitions_do_not_cancel_its_follow_up() -> None:
    assert followups.cancelled_by_event(10, T0 + 1000, WAITING) == [WAITING[1]]


def test_a_follow_up_is_born_cancelled_only_when_a_strictly_newer_event_is_stored() -> None:
    assert followups.born_cancelled(T0, T0 + 1)
    assert not followups.born_cancelled(T0, T0)  # the earlier arrival is the older one
    assert not followups.born_cancelled(T0, T0 - 1)
    assert not followups.born_cancelled(T0, None)


def test_a_firing_cancels_the_leads_other_follow_ups_of_events_up_to_its_due_time() -> None:
    assert followups.cancelled_by_firing(1, T0 + 7 * DAY, WAITING) == [WAITING[1]]
    assert followups.cancelled_by_firing(1, T0 + 99, WAITING) == []


def test_durations_read_as_people_write_them() -> None:
    assert [followups.span(s) for s in (0, 45, 90, 3600, 36 * 3600, 7 * DAY, DAY + 61)] == [
        "0s",
        "45s",
        "1m 30s",
        "1h",
        "1d 12h",
        "7d",
        "1d 1m",
    ]


# --- rules ----------------------------------------------------------------------------

FAILED = {
    "type": "invoice.payment_failed",
    "data": {"object": {"number": "INV-7", "attempt_count": 2, "resumes_at": T0 + 3 * DAY}},
}


def dunning(**follow_up: Any) -> dict[str, Any]:
    return rule(
        "stripe-payment-failed",
        status="snoozed",
        notes="Payment failed; {{ event.data.object.attempt_count }} attempts",
        follow_up={"after": "7d", "status": "lost", **follow_up},
    )


def test_a_rule_with_a_follow_up_schedules_it_counted_from_the_events_time() -> None:
    rules = compile_([dunning(notes="Still unpaid: {{ event.data.object.number }}")])

    evaluation = rules.evaluate(event(FAILED, occurred_at=T0))

    [transition] = evaluation.transitions
    assert (transition.status, transition.notes) == (
        LeadStatus.SNOOZED,
        "Payment failed; 2 attempts",
    )
    assert transition.follow_up == FollowUp(LeadStatus.LOST, "Still unpaid: INV-7", T0 + 7 * DAY)


@pytest.mark.parametrize(
    ("after", "due"),
    [
        ("36h", T0 + 36 * 3600),
        (600, T0 + 600),
        ("0s", T0),
        ("{{ event.data.object.resumes_at }}", T0 + 3 * DAY),
        ("{{ event.data.object.resumes_at | int }}", T0 + 3 * DAY),
        ("2023-11-17T22:13:20Z", None),  # a constant time is not a template: refused below
        ("{{ '2023-11-17T22:13:20Z' }}", T0 + 3 * DAY),
        ("{{ occurred_at + 86400 }}", T0 + DAY),
        ("{{ '2020-01-01T00:00:00Z' }}", T0),  # before the event: due at once, as it happened
    ],
)
def test_after_is_a_duration_or_a_template_rendering_a_time(after: Any, due: float | None) -> None:
    if due is None:
        [error] = errors_of([dunning(after=after)])
        assert error.key == "follow_up.after"
        return
    rules = compile_([dunning(after=after)])

    [transition] = rules.evaluate(event(FAILED, occurred_at=T0)).transitions

    assert transition.follow_up is not None
    assert transition.follow_up.due_at == due


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        ("{{ event.data.object.missing }}", "follow_up.after rendered '': not an ISO 8601"),
        ("{{ 'next tuesday' }}", "follow_up.after rendered 'next tuesday': not an ISO 8601"),
        ("{{ 1700000000000 }}", "(milliseconds? divide by 1000)"),
        ("{{ 1 / 0 }}", "follow_up.after failed: ZeroDivisionError"),
    ],
)
def test_an_invalid_render_makes_only_the_follow_up_unmapped(after: str, reason: str) -> None:
    rules = compile_([dunning(after=after)])

    evaluation = rules.evaluate(event(FAILED, occurred_at=T0))

    # The rule's own transition still goes, without its follow-up ...
    assert evaluation.outcome is Outcome.MATCHED
    [transition] = evaluation.transitions
    assert (transition.status, transition.follow_up) == (LeadStatus.SNOOZED, None)
    # ... and the follow-up is reported unmapped, naming the rule and the key.
    [problem] = evaluation.unmapped
    assert problem.rule == "stripe-payment-failed"
    assert reason in problem.reason


def test_a_templated_follow_up_status_is_checked_when_rendered() -> None:
    rules = compile_([dunning(status="{{ event.data.object.number }}")])

    evaluation = rules.evaluate(event(FAILED))

    assert evaluation.transitions[0].follow_up is None
    assert "follow_up.status rendered 'INV-7', not one of" in evaluation.unmapped[0].reason


def test_follow_up_notes_render_as_a_rules_notes_do() -> None:
    rules = compile_([dunning(notes="  ")])

    [transition] = rules.evaluate(event(FAILED)).transitions

    assert transition.follow_up is not None
    assert transition.follow_up.notes is None  # empty notes are no notes


@pytest.mark.parametrize(
    ("follow_up", "key", "message"),
    [
        ({"after": "7d", "status": "gone"}, "follow_up.status", "'gone' is not one of"),
        ({"after": "7 days", "status": "lost"}, "follow_up.after", "invalid duration"),
        ({"after": "-1d", "status": "lost"}, "follow_up.after", "invalid duration"),
        ({"after": True, "status": "lost"}, "follow_up.after", "a duration is a number"),
        ({"after": "{{ evnt.x }}", "status": "lost"}, "follow_up.after", "unknown name 'evnt'"),
        ({"after": "{{ x", "status": "lost"}, "follow_up.after", "syntax error"),
        ({"after": "7d", "status": "{{ event._y }}"}, "follow_up.status", "starting with '_'"),
        ({"after": "7d", "status": "lost", "notes": "{{ nope }}"}, "follow_up.notes", "'nope'"),
        ({"status": "lost"}, "follow_up.after", "required"),
        ({"after": "7d"}, "follow_up.status", "required"),
        ({"after": "7d", "status": "lost", "when": "x"}, "follow_up.when", "unknown key"),
    ],
)
def test_a_follow_up_mistake_names_the_file_the_rule_and_the_key(
    tmp_path: Path, follow_up: dict[str, Any], key: str, message: str
) -> None:
    [error] = yaml_errors_of(tmp_path, [rule("dunning", follow_up=follow_up)])

    assert (error.file, error.rule, error.key) == (str(tmp_path / "bridge.yaml"), "dunning", key)
    assert message in error.message


def test_a_rule_without_a_follow_up_schedules_none() -> None:
    [transition] = compile_([rule()]).evaluate(event(FAILED)).transitions

    assert transition.follow_up is None
