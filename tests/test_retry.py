"""Retry decisions: what one answer leads to for the transition and for the pace. Pure."""

from __future__ import annotations

import random
from typing import Any

from bridge.answers import Reply
from bridge.config import RetryConfig
from bridge.models import LeadStatus
from bridge.retry import KEEP_PACE, Action, Pacing, backoff, decide
from bridge.store.base import QueuedTransition

NOW = 1_700_000_000.0
RETRY = RetryConfig.model_validate(
    {
        "max_attempts": 5,
        "max_age": "1h",
        "backoff": {"initial": "1s", "max": "60s"},
        "not_found": {"attempts": 3, "backoff": "5m"},
    }
)


def queued(attempts: int = 0, not_found: int = 0, created_at: float = NOW) -> QueuedTransition:
    return QueuedTransition(
        id=1,
        source="stripe",
        event_id="evt_1",
        rule="r",
        account_id=7,
        lead_id=42,
        status=LeadStatus.WON,
        notes=None,
        occurred_at=created_at,
        created_at=created_at,
        attempts=attempts,
        not_found_attempts=not_found,
    )


def reply(status: int | None, **kw: Any) -> Reply:
    return Reply(status=status, latency_s=0.01, **kw)


def run_decide(t: QueuedTransition, r: Reply, now: float = NOW) -> Any:
    return decide(t, r, now=now, retry=RETRY, rng=random.Random(1))


def test_a_2xx_delivers() -> None:
    assert run_decide(queued(), reply(200)).action is Action.DELIVERED


def test_a_refused_token_pauses_without_using_an_attempt() -> None:
    d = run_decide(queued(), reply(401))
    assert (d.action, d.counts) == (Action.PAUSE, False)


def test_a_refused_transition_past_max_age_is_dead_with_the_account_in_its_reason() -> None:
    d = run_decide(queued(created_at=NOW - 3601), reply(403, message="Forbidden"))
    assert d.action is Action.DEAD
    assert d.reason == "token refused for account 7 (HTTP 403: Forbidden)"


def test_a_validation_error_is_dead_at_once_with_the_message() -> None:
    d = run_decide(queued(), reply(422, message="Status is not included in the list"))
    assert d.action is Action.DEAD
    assert d.reason == "HTTP 422: Status is not included in the list"


def test_a_server_error_retries_with_backoff_within_the_bounds() -> None:
    d = run_decide(queued(attempts=2), reply(500))
    assert d.action is Action.RETRY
    assert d.counts
    assert NOW + 1 <= d.next_attempt_at <= NOW + 8  # third attempt: cap 1 s * 2^2


def test_backoff_never_exceeds_the_maximum_nor_falls_below_the_initial() -> None:
    rng = random.Random(3)
    delays = [backoff(n, RETRY, rng) for n in range(1, 80) for _ in range(20)]
    assert min(delays) >= 1.0
    assert max(delays) <= 60.0
    assert max(delays) > 30.0  # the cap is actually reached


def test_the_last_allowed_attempt_dead_letters() -> None:
    d = run_decide(queued(attempts=4), reply(None, error="timeout"))
    assert d.action is Action.DEAD
    assert d.reason == "gave up after 5 attempts: timeout"


def test_a_transition_older_than_max_age_is_dead_on_its_next_failure() -> None:
    d = run_decide(queued(created_at=NOW - 3601), reply(503))
    assert d.action is Action.DEAD
    assert "3600" in (d.reason or "")


def test_retry_after_on_a_server_error_is_honoured_as_a_minimum() -> None:
    d = run_decide(queued(), reply(503, retry_after=120.0))
    assert d.next_attempt_at == NOW + 120.0


def test_a_429_does_not_use_up_an_attempt_and_waits_its_retry_after() -> None:
    d = run_decide(queued(attempts=4), reply(429, retry_after=30.0))
    assert (d.action, d.counts, d.next_attempt_at) == (Action.RETRY, False, NOW + 30.0)


def test_a_404_retries_per_not_found_then_dead_letters() -> None:
    first = run_decide(queued(), reply(404))
    assert (first.action, first.not_found, first.next_attempt_at) == (
        Action.RETRY,
        True,
        NOW + 300,
    )
    last = run_decide(queued(attempts=2, not_found=2), reply(404))
    assert last.action is Action.DEAD
    assert last.reason is not None
    assert last.reason.startswith("lead not found after 3 attempts")


# --- the pacing reaction ------------------------------------------------------------------


def test_a_delivery_lets_the_pace_recover() -> None:
    assert run_decide(queued(), reply(200)).pacing == Pacing(recover=True)


def test_a_429_slows_the_pace_down_and_holds_every_send_for_its_retry_after() -> None:
    assert run_decide(queued(), reply(429, retry_after=30.0)).pacing == Pacing(
        slow_down=True, pause_s=30.0
    )
    assert run_decide(queued(), reply(429)).pacing == Pacing(slow_down=True)


def test_a_503_with_retry_after_holds_every_send_without_slowing_the_pace() -> None:
    assert run_decide(queued(), reply(503, retry_after=120.0)).pacing == Pacing(pause_s=120.0)


def test_other_failures_leave_the_pace_alone() -> None:
    for r in (reply(500, retry_after=5.0), reply(503), reply(None, error="timeout"), reply(404)):
        assert run_decide(queued(), r).pacing is KEEP_PACE
    assert run_decide(queued(), reply(422)).pacing is KEEP_PACE
    assert run_decide(queued(), reply(401)).pacing is KEEP_PACE


def test_a_429_past_max_age_is_dead_yet_still_slows_and_holds_every_request() -> None:
    # The transition is too old to retry, but Voxys's answer is about the token: the
    # requests after it must still slow down and wait out the Retry-After.
    d = run_decide(queued(created_at=NOW - 3601), reply(429, retry_after=30.0))
    assert (d.action, d.pacing) == (Action.DEAD, Pacing(slow_down=True, pause_s=30.0))


def test_a_503_with_retry_after_on_a_last_attempt_still_holds_every_request() -> None:
    d = run_decide(queued(attempts=RETRY.max_attempts - 1), reply(503, retry_after=12.0))
    assert (d.action, d.pacing) == (Action.DEAD, Pacing(pause_s=12.0))
