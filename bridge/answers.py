"""What Voxys answered, and what that means: the reply, its verdict, Retry-After. Pure.

The client (bridge/voxys.py) turns HTTP into a `Reply`; everything after that (retry
decisions, auth pauses, the console) reads it through `classify` here, the one place a
status becomes a verdict. No aiohttp: this and bridge/retry.py import without it.
"""

from __future__ import annotations

import email.utils
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

MAX_MESSAGE: Final = 300  # characters of a response body kept as a dead letter's reason
MAX_RETRY_AFTER_S: Final = 3600.0


class Verdict(StrEnum):
    """What one answer from Voxys means for the transition that was sent."""

    DELIVERED = "delivered"  # 2xx
    RETRY = "retry"  # 408, 425, 5xx, timeout, connection error
    THROTTLED = "throttled"  # 429: does not use up an attempt
    REFUSED = "refused"  # 401, 403: pause the token, keep the queue
    NOT_FOUND = "not_found"  # 404: the lead may not exist yet
    REJECTED = "rejected"  # 400, 409, 422 and any other status: dead letter at once


@dataclass(frozen=True, slots=True)
class Reply:
    """One attempt's result: an HTTP answer or the error that stood in for one."""

    status: int | None
    latency_s: float
    retry_after: float | None = None  # seconds from now, from a Retry-After header
    message: str | None = None  # short text from the body, safe to log
    error: str | None = None  # timeout / connection error, when no answer came
    sent: bool = True  # False: held back before a byte left (the lease fence); no attempt


class NotSent(Exception):
    """Raised inside the request, just before it is written, when the fence says stop."""


def classify(reply: Reply) -> Verdict:
    """The one place an answer from Voxys becomes a verdict."""
    status = reply.status
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status == 429:
        return Verdict.THROTTLED
    if status in (408, 425) or status >= 500:
        return Verdict.RETRY
    if status in (401, 403):
        return Verdict.REFUSED
    if status == 404:
        return Verdict.NOT_FOUND
    return Verdict.REJECTED


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), capped at 1 h."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER_S)


def status_path(account_id: int, lead_id: int) -> str:
    """The endpoint's path, from validated integers only (never from raw text)."""
    for name, value in (("account_id", account_id), ("lead_id", lead_id)):
        if type(value) is not int or value <= 0:
            raise ValueError(f"{name} must be a positive integer, not {value!r}")
    return f"/api/v1/accounts/{account_id}/leads/{lead_id}/status"


def error_message(body: bytes) -> str | None:
    """A short, single-line text from an error body (its `message`/`error` when JSON)."""
    text = body.decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        for key in ("message", "error", "errors"):
            if key in doc:
                text = json.dumps(doc[key]) if not isinstance(doc[key], str) else doc[key]
                break
    text = " ".join(text.split())
    return text[:MAX_MESSAGE]
