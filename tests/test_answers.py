"""The answer model: one status -> verdict map, and Retry-After read as seconds or a date."""

from __future__ import annotations

import pytest

from bridge.answers import Reply, Verdict, classify, parse_retry_after, status_path

NOW = 1_700_000_000.0


def reply(status: int | None) -> Reply:
    return Reply(status=status, latency_s=0.01)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (408, Verdict.RETRY),
        (425, Verdict.RETRY),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (None, Verdict.RETRY),
        (429, Verdict.THROTTLED),
        (401, Verdict.REFUSED),
        (403, Verdict.REFUSED),
        (404, Verdict.NOT_FOUND),
        (400, Verdict.REJECTED),
        (409, Verdict.REJECTED),
        (422, Verdict.REJECTED),
        (418, Verdict.REJECTED),
        (302, Verdict.REJECTED),
    ],
)
def test_each_status_has_one_verdict(status: int | None, verdict: Verdict) -> None:
    assert classify(reply(status)) is verdict


def test_retry_after_is_read_as_seconds_or_http_date_and_capped() -> None:
    assert parse_retry_after("7", NOW) == 7.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:40 GMT", NOW) == 20.0
    assert parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", NOW) == 0.0  # in the past
    assert parse_retry_after("999999", NOW) == 3600.0
    assert parse_retry_after("soon", NOW) is None
    assert parse_retry_after(None, NOW) is None


@pytest.mark.parametrize(("account_id", "lead_id"), [(0, 42), (7, -1), (7, True), ("7", 42)])
def test_the_status_path_is_built_from_positive_integers_only(
    account_id: object, lead_id: object
) -> None:
    assert status_path(7, 42) == "/api/v1/accounts/7/leads/42/status"
    with pytest.raises(ValueError, match="must be a positive integer"):
        status_path(account_id, lead_id)  # type: ignore[arg-type]
