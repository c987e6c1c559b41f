"""Close: `close-sig-hash` checked against an independent HMAC, the event's id and time."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from bridge.errors import BadRequest
from bridge.sources.base import WebhookRequest
from bridge.sources.close import CloseSource

from .conftest import CONFIG_FILE, build_one, config_errors, make_request, refused, rejected, sample

# Close returns the signature_key as 64 hex digits; the HMAC key is their bytes.
SECRET = "6b3a1f0e9d8c7b6a5f4e3d2c1b0a99887766554433221100ffeeddccbbaa0123"
OLD_SECRET = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
T = 1_724_419_200
BODY = sample("close", "opportunity.updated-won.json")


def sig_hash(body: bytes, secret: str, ts: int | str = T) -> str:
    """Close's hash, computed here from the documented recipe."""
    return hmac.new(bytes.fromhex(secret), f"{ts}".encode() + body, hashlib.sha256).hexdigest()


def source(secret: str | list[str] = SECRET, **extra: object) -> CloseSource:
    built = build_one({"preset": "close", "secret": secret, **extra})
    assert isinstance(built, CloseSource)
    return built


def signed(body: bytes = BODY, secret: str = SECRET, ts: int = T) -> WebhookRequest:
    headers = {"close-sig-timestamp": str(ts), "close-sig-hash": sig_hash(body, secret, ts)}
    return make_request(body, headers)


def test_a_request_signed_as_close_documents_is_accepted() -> None:
    source().verify(signed(), now=T + 1)


def test_the_key_is_the_hex_decoded_signature_key_not_its_text() -> None:
    as_text = hmac.new(SECRET.encode(), f"{T}".encode() + BODY, hashlib.sha256).hexdigest()
    request = make_request(BODY, {"close-sig-timestamp": str(T), "close-sig-hash": as_text})
    assert refused(source(), request, T, SECRET) == "signature mismatch"


def test_a_request_signed_with_another_key_is_refused() -> None:
    assert refused(source(), signed(secret=OLD_SECRET), T, SECRET) == "signature mismatch"


def test_a_tampered_body_is_refused() -> None:
    tampered = make_request(BODY.replace(b"4711", b"4712"), signed().headers)
    assert refused(source(), tampered, T, SECRET) == "signature mismatch"


def test_a_tampered_timestamp_is_refused() -> None:
    headers = {**signed().headers, "close-sig-timestamp": str(T + 60)}
    assert refused(source(), make_request(BODY, headers), T + 60, SECRET) == "signature mismatch"


@pytest.mark.parametrize("drift", [73 * 3600 + 1, -(73 * 3600 + 1), 30 * 86_400])
def test_a_timestamp_beyond_closes_72_hour_retry_window_is_refused(drift: int) -> None:
    assert refused(source(), signed(), T + drift, SECRET) == "timestamp outside tolerance"


@pytest.mark.parametrize("hours", [1, 24, 72])
def test_a_genuine_retry_is_never_refused_for_its_age_within_closes_retry_window(
    hours: int,
) -> None:
    # Close may keep the first attempt's timestamp on its retries (its docs do not say):
    # a retry 72 h later is accepted, and a replay of a stored event is a duplicate.
    source().verify(signed(), T + hours * 3600)


@pytest.mark.parametrize("drift", [300, -300, 0])
def test_a_timestamp_within_300_seconds_either_way_is_accepted(drift: int) -> None:
    source().verify(signed(), T + drift)


def test_the_tolerance_is_configurable_as_a_duration() -> None:
    lenient = source(tolerance="10m")
    lenient.verify(signed(), T + 599)
    assert refused(lenient, signed(), T + 601) == "timestamp outside tolerance"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing close-sig-timestamp header"),
        ({"close-sig-timestamp": str(T)}, "missing close-sig-hash header"),
        ({"close-sig-hash": "ab"}, "missing close-sig-timestamp header"),
        (
            {"close-sig-timestamp": "soon", "close-sig-hash": "ab"},
            "malformed close-sig-timestamp header",
        ),
        (
            {"close-sig-timestamp": str(T), "close-sig-hash": "xyz"},
            "malformed close-sig-hash header",
        ),
    ],
)
def test_missing_or_garbled_headers_are_refused(headers: dict[str, str], reason: str) -> None:
    assert refused(source(), make_request(BODY, headers), T, SECRET) == reason


def test_while_rotating_both_keys_are_accepted() -> None:
    rolling = source([OLD_SECRET, SECRET])
    rolling.verify(signed(secret=OLD_SECRET), T)
    rolling.verify(signed(secret=SECRET), T)


def test_what_the_source_signs_it_verifies_and_the_recipe_agrees() -> None:
    headers = source().sign(BODY, now=T + 0.9, path="/webhooks/close")
    assert headers == {
        "Content-Type": "application/json",
        "close-sig-timestamp": str(T),
        "close-sig-hash": sig_hash(BODY, SECRET),
    }
    source().verify(make_request(BODY, headers), T)


def test_the_event_id_and_time_come_from_the_nested_event() -> None:
    [event] = source().parse(signed(), received_at=T + 5)
    payload = json.loads(BODY)
    assert event.event_id == payload["event"]["id"] == "ev_2LQbUXk1zGDL3zVNnt7fms"
    assert event.occurred_at == T + 0.25  # "2024-08-23T13:20:00.250000", UTC
    assert (event.received_at, event.source, event.payload) == (T + 5, "test", payload)


def test_stored_headers_leave_out_the_hash() -> None:
    [event] = source().parse(signed(), received_at=T)
    assert "close-sig-hash" not in event.headers
    assert event.headers["close-sig-timestamp"] == str(T)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "Close payload is not an object with an event"),
        (b'{"subscription_id": "whsub_1"}', "Close payload is not an object with an event"),
        (b'{"event": "opportunity.updated"}', "Close payload is not an object with an event"),
        (b'{"event": {"object_type": "opportunity"}}', "Close event without id"),
        (b"{not json", "malformed JSON"),
        (b"", "empty body"),
    ],
)
def test_a_body_that_is_not_a_close_event_is_a_bad_request(body: bytes, reason: str) -> None:
    assert rejected(BadRequest, source(), make_request(body)) == reason


def test_the_issue_yaml_shape_builds_and_hides_the_key() -> None:
    built = build_one(f"{{preset: close, secret: '{SECRET}'}}")
    assert isinstance(built, CloseSource)
    assert SECRET not in repr(built.settings)


def test_a_missing_key_is_reported_with_file_and_key() -> None:
    messages = config_errors("close: {preset: close}")
    assert messages == [f"{CONFIG_FILE}: key 'sources.close.secret': required"]


@pytest.mark.parametrize("secret", ["not-hex-at-all-zz", "abc", [SECRET, "xyz"]])
def test_a_key_that_is_not_hex_is_a_config_error_that_does_not_echo_it(secret: object) -> None:
    [message] = config_errors({"close": {"preset": "close", "secret": secret}})
    assert "key 'sources.close.secret'" in message
    assert "64 hex digits Close returned" in message
    assert "zz" not in message and "xyz" not in message
