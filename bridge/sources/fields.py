"""Reading event fields the same way in every source: ids, times, body hashes."""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from typing import Any, Literal

# Above this a bare number is taken as milliseconds: 1e11 s is the year 5138,
# 1e11 ms is 1973, so no real webhook time is ambiguous.
_MS_THRESHOLD = 1e11
# datetime cannot go past the year 9999; later "times" are garbage anyway.
_MAX_SECONDS = 253_402_300_799.0

Unit = Literal["s", "ms", "auto"]


def body_sha256(body: bytes) -> str:
    """The hex SHA-256 of a request body: the dedupe id of events that carry none."""
    return hashlib.sha256(body).hexdigest()


def canonical_sha256(value: Any) -> str:
    """The hex SHA-256 of a JSON value written canonically (sorted keys, no spaces)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def id_text(value: Any) -> str | None:
    """An id as a non-empty string, from a string or an integer; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def epoch_seconds(value: Any, unit: Unit = "auto") -> float | None:
    """POSIX seconds from epoch seconds or milliseconds, or an ISO 8601 string; None if garbage.

    `unit` says how to read bare numbers; "auto" takes numbers above 1e11 as milliseconds.
    ISO 8601 strings without an offset are taken as UTC.
    """
    if isinstance(value, bool):
        return None
    number: float | None = None
    if isinstance(value, int | float):
        number = _to_float(value)
    elif isinstance(value, str):
        text = value.strip()
        number = _to_float(text)
        if number is None:
            return _iso_seconds(text)
    if number is None:
        return None
    if unit == "ms" or (unit == "auto" and abs(number) >= _MS_THRESHOLD):
        number /= 1000.0
    return number if 0.0 <= number <= _MAX_SECONDS else None


def occurred_at(value: Any, received_at: float, unit: Unit = "auto") -> float:
    """The event's own time from `value`, or `received_at` when it is missing or garbage."""
    seconds = epoch_seconds(value, unit)
    return received_at if seconds is None else seconds


def _to_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _iso_seconds(text: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        seconds = parsed.timestamp()
    except (ValueError, OverflowError):
        return None
    return seconds if 0.0 <= seconds <= _MAX_SECONDS else None
