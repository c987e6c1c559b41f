"""Paddle Billing: `Paddle-Signature` checked against an independent HMAC, ids and times."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from bridge.errors import BadRequest
from bridge.sources.base import WebhookRequest
from bridge.sources.paddle import PaddleSource

from .conftest import CONFIG_FILE, build_one, config_errors, make_request, refused, rejected, sample

SECRET = "pdl_ntfset_01j6a2b3c4d5e6f7g8h9j0k1m7_Qm3xV8kLr2TnP5wYz9AbCdEf"
OLD_SECRET = "pdl_ntfset_01h0000000000000000000000_oldOldOldOldOldOldOldOld"
T = 1_724_419_200
BODY = sample("paddle", "subscription.canceled.json")


def h1(body: bytes, secret: str, ts: int | str = T) -> str:
    """Paddle's h1, computed here from the documented recipe: hex HMAC-SHA256 of "ts:body"."""
    return hmac.new(secret.encode(), f"{ts}:".encode() + body, hashlib.sha256).hexdigest()


def source(secret: str | list[str] = SECRET, **extra: object) -> PaddleSource:
    built = build_one({"preset": "paddle", "secret": secret, **extra})
    assert isinstance(built, PaddleSource)
    return built


def signed(body: bytes = BODY, secret: str = SECRET, ts: int = T) -> WebhookRequest:
    return make_request(body, {"Paddle-Signature": f"ts={ts};h1={h1(body, secret, ts)}"})


def test_a_request_signed_as_paddle_documents_is_accepted() -> None:
    source().verify(signed(), now=T + 1)


def test_a_request_signed_with_another_secret_is_refused() -> None:
    request = signed(secret="pdl_ntfset_someone_else_entirely")
    assert refused(source(), request, T, SECRET) == "signature mismatch"


def test_a_tampered_body_is_refused() -> None:
    tampered = make_request(BODY.replace(b"4711", b"4712"), signed().headers)
    assert refused(source(), tampered, T, SECRET) == "signature mismatch"


def test_a_tampered_timestamp_is_refused() -> None:
    header = f"ts={T + 60};h1={h1(BODY, SECRET, T)}"
    request = make_request(BODY, {"Paddle-Signature": header})
    assert refused(source(), request, T + 60, SECRET) == "signature mismatch"


@pytest.mark.parametrize("drift", [301, -301, 86_400])
def test_a_timestamp_more_than_300_seconds_away_is_refused(drift: int) -> None:
    assert refused(source(), signed(), T + drift, SECRET) == "timestamp outside tolerance"


@pytest.mark.parametrize("drift", [300, -300, 0])
def test_a_timestamp_within_300_seconds_either_way_is_accepted(drift: int) -> None:
    source().verify(signed(), T + drift)


def test_the_tolerance_can_be_as_strict_as_paddles_sdk() -> None:
    strict = source(tolerance=5)
    strict.verify(signed(), T + 5)
    assert refused(strict, signed(), T + 6) == "timestamp outside tolerance"


def test_a_request_without_the_header_is_refused() -> None:
    assert refused(source(), make_request(BODY), T) == "missing Paddle-Signature header"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("garbage", "no timestamp in Paddle-Signature header"),
        ("h1=abc", "no timestamp in Paddle-Signature header"),
        (f"ts={T}", "no h1 signature in Paddle-Signature header"),
        (f"ts={T};h2=abc", "no h1 signature in Paddle-Signature header"),
        ("ts=yesterday;h1=abc", "malformed Paddle-Signature timestamp"),
        ("ts=" + "9" * 400 + ";h1=abc", "malformed Paddle-Signature timestamp"),
        (f"ts={T};h1=not-hex-at-all", "signature mismatch"),
    ],
)
def test_a_garbled_header_is_refused_with_a_reason(header: str, reason: str) -> None:
    request = make_request(BODY, {"Paddle-Signature": header})
    assert refused(source(), request, T, SECRET) == reason


def test_any_of_several_h1_signatures_may_match_during_a_rotation() -> None:
    for header in (
        f"ts={T};h1={h1(BODY, OLD_SECRET)};h1={h1(BODY, SECRET)}",
        f"h1={h1(BODY, SECRET)}; ts={T}; h1={h1(BODY, OLD_SECRET)}",
    ):
        source().verify(make_request(BODY, {"Paddle-Signature": header}), T)


def test_while_rotating_both_configured_secrets_are_accepted() -> None:
    rolling = source([OLD_SECRET, SECRET])
    rolling.verify(signed(secret=OLD_SECRET), T)
    rolling.verify(signed(secret=SECRET), T)


def test_what_the_source_signs_it_verifies_and_the_recipe_agrees() -> None:
    headers = source().sign(BODY, now=T + 0.75, path="/webhooks/paddle")
    assert headers == {
        "Content-Type": "application/json",
        "Paddle-Signature": f"ts={T};h1={h1(BODY, SECRET)}",
    }
    source().verify(make_request(BODY, headers), T)


def test_the_event_id_and_time_come_from_the_event() -> None:
    [event] = source().parse(signed(), received_at=T + 5)
    payload = json.loads(BODY)
    assert event.event_id == payload["event_id"] == "evt_01j6a2b3c4d5e6f7g8h9j0k1m2"
    assert event.occurred_at == T + 0.25  # "2024-08-23T13:20:00.250000Z"
    assert (event.received_at, event.source, event.payload) == (T + 5, "test", payload)


def test_stored_headers_leave_out_the_signature() -> None:
    [event] = source().parse(signed(), received_at=T)
    assert "paddle-signature" not in event.headers


@pytest.mark.parametrize("occurred", [None, "soon", 1e300])
def test_a_missing_or_garbage_occurred_at_falls_back_to_the_receive_time(occurred: object) -> None:
    body = json.dumps({"event_id": "evt_1", "occurred_at": occurred}).encode()
    [event] = source().parse(make_request(body), received_at=T)
    assert event.occurred_at == T


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "Paddle event is not a JSON object"),
        (b'{"event_type": "subscription.canceled"}', "Paddle event without event_id"),
        (b'{"event_id": ""}', "Paddle event without event_id"),
        (b"{not json", "malformed JSON"),
        (b"", "empty body"),
    ],
)
def test_a_body_that_is_not_a_paddle_event_is_a_bad_request(body: bytes, reason: str) -> None:
    assert rejected(BadRequest, source(), make_request(body)) == reason


def test_the_issue_yaml_shape_builds_and_hides_the_secret() -> None:
    built = build_one(f"{{preset: paddle, secret: {SECRET}}}")
    assert isinstance(built, PaddleSource)
    assert SECRET not in repr(built.settings)


def test_a_missing_secret_is_reported_with_file_and_key() -> None:
    messages = config_errors("paddle: {preset: paddle, secrets: x}")
    assert f"{CONFIG_FILE}: key 'sources.paddle.secret': required" in messages
    assert any("key 'sources.paddle.secrets'" in m and "unknown key" in m for m in messages)


@pytest.mark.parametrize("secret", ["", "  ", []])
def test_an_empty_secret_is_a_config_error(secret: object) -> None:
    [message] = config_errors({"paddle": {"preset": "paddle", "secret": secret}})
    assert "key 'sources.paddle.secret'" in message
