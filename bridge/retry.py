"""Retry decisions, the pure core of delivery: what happens after one attempt.

No I/O and no clock of its own: the transition's history, the answer, the time and the
random source come in as arguments, so every rule here is a plain function test. A
decision covers the transition (delivered, retry, dead, pause) and the pace of every
request after it (`Pacing`); the worker only carries it out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from bridge.answers import Reply, Verdict, classify
from bridge.config import RetryConfig
from bridge.store.base import QueuedTransition


class Action(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # back to pending at next_attempt_at
    DEAD = "dead"
    PAUSE = "pause"  # token refused: release without an attempt, pause the token


@dataclass(frozen=True, slots=True)
class Pacing:
    """What one answer means for the pace of all requests (bridge.voxys.Pacer.react)."""

    slow_down: bool = False  # a 429 although we kept to the pace: halve it
    pause_s: float | None = None  # a 429's or 503's Retry-After: send nothing for this long
    recover: bool = False  # delivered: win back some rate after a window free of 429s


KEEP_PACE: Final = Pacing()


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    next_attempt_at: float | None = None
    counts: bool = True  # the attempt uses up one of retry.max_attempts
    not_found: bool = False
    reason: str | None = None
    pacing: Pacing = KEEP_PACE


def backoff(attempt: int, retry: RetryConfig, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [initial, min(max, initial * 2^(n-1))]."""
    initial, ceiling = retry.backoff.initial, retry.backoff.max
    cap = min(ceiling, initial * 2 ** min(attempt - 1, 60))
    return rng.uniform(initial, max(initial, cap))


def reply_reason(reply: Reply) -> str:
    """A short reason for logs and dead letters."""
    if reply.status is None:
        return reply.error or "no answer"
    return f"HTTP {reply.status}" + (f": {reply.message}" if reply.message else "")


def refused_reason(account_id: int, reply: Reply | None = None) -> str:
    """The dead-letter reason of a transition that waited on a refused token too long."""
    detail = f" ({reply_reason(reply)})" if reply is not None else ""
    return f"token refused for account {account_id}{detail}"


def decide(
    transition: QueuedTransition,
    reply: Reply,
    *,
    now: float,
    retry: RetryConfig,
    rng: random.Random,
) -> Decision:
    """What to do after one attempt. Pure: time and randomness come in as arguments.

    The pacing reaction is the answer's, whatever becomes of the transition: a 429 for a
    transition too old to retry still slows every request after it.
    """
    verdict = classify(reply)
    decision = _transition_outcome(transition, reply, verdict, now=now, retry=retry, rng=rng)
    return replace(decision, pacing=pacing_for(reply, verdict))


def pacing_for(reply: Reply, verdict: Verdict) -> Pacing:
    """What an answer means for the pace of every request after it."""
    if verdict is Verdict.DELIVERED:
        return Pacing(recover=True)
    if verdict is Verdict.THROTTLED:  # a 429 although we kept to the pace: halve it
        return Pacing(slow_down=True, pause_s=reply.retry_after)
    if reply.status == 503 and reply.retry_after is not None:
        return Pacing(pause_s=reply.retry_after)  # the service asks every request to wait
    return KEEP_PACE


def _transition_outcome(
    transition: QueuedTransition,
    reply: Reply,
    verdict: Verdict,
    *,
    now: float,
    retry: RetryConfig,
    rng: random.Random,
) -> Decision:
    if verdict is Verdict.DELIVERED:
        return Decision(Action.DELIVERED)
    attempts = transition.attempts + 1  # counting this one
    too_old = now - transition.created_at >= retry.max_age
    if verdict is Verdict.REFUSED:
        if too_old:  # waiting on a refused token ages like any other wait
            return Decision(Action.DEAD, reason=refused_reason(transition.account_id, reply))
        return Decision(Action.PAUSE, counts=False, reason=reply_reason(reply))
    if verdict is Verdict.REJECTED:
        return Decision(Action.DEAD, reason=reply_reason(reply))
    if verdict is Verdict.NOT_FOUND:
        tries = transition.not_found_attempts + 1
        if tries >= retry.not_found.attempts:
            return Decision(
                Action.DEAD, reason=f"lead not found after {tries} attempts ({reply_reason(reply)})"
            )
        if too_old:
            return Decision(
                Action.DEAD, reason=f"gave up after {retry.max_age:g} s: lead not found"
            )
        return Decision(
            Action.RETRY,
            next_attempt_at=now + retry.not_found.backoff,
            not_found=True,
            reason=reply_reason(reply),
        )
    if verdict is Verdict.THROTTLED:
        if too_old:
            return Decision(Action.DEAD, reason=f"gave up after {retry.max_age:g} s: throttled")
        wait = reply.retry_after if reply.retry_after is not None else retry.backoff.initial
        return Decision(
            Action.RETRY, next_attempt_at=now + wait, counts=False, reason=reply_reason(reply)
        )
    # Verdict.RETRY: 408, 425, 5xx, timeout, connection error.
    if attempts >= retry.max_attempts:
        return Decision(
            Action.DEAD, reason=f"gave up after {attempts} attempts: {reply_reason(reply)}"
        )
    if too_old:
        return Decision(
            Action.DEAD, reason=f"gave up after {retry.max_age:g} s: {reply_reason(reply)}"
        )
    wait = backoff(attempts, retry, rng)
    if reply.retry_after is not None:
        wait = max(wait, reply.retry_after)
    return Decision(Action.RETRY, next_attempt_at=now + wait, reason=reply_reason(reply))
