"""Stripe: signatures checked against Stripe's own library, and event ids and times."""

from __future__ import annotations

import json

import pytest
import stripe

from bridge.errors import BadRequest, UnsupportedMediaType
from bridge.sources.base import WebhookRequest
from bridge.sources.stripe import StripeSource

from .conftest import (
    CONFIG_FILE,
    build_one,
    config_errors,
    make_request,
    refused,
    rejected,
    sample,
)

SECRET = "whsec_9f3c1b7a2e5d4c6b8a0f1e2d3c4b5a69"
OLD_SECRET = "whsec_0a1b2c3d4e5f60718293a4b5c6d7e8f9"
T = 1_724_419_200
BODY = sample("stripe", "checkout.session.completed.json")


def stripe_header(body: bytes, secret: str, t: int = T, extra: str = "") -> str:
    """`Stripe-Signature` as Stripe computes it (its library's own HMAC helper).

    stripe 13 no longer ships `generate_signature_header`; `_compute_signature` is the
    function its `verify_header` uses, so it is still Stripe's code signing.
    """
    signature = stripe.WebhookSignature._compute_signature(f"{t}.{body.decode()}", secret)
    return f"t={t},v1={signature}{extra}"


def source(secret: str | list[str] = SECRET, **extra: object) -> StripeSource:
    built = build_one({"preset": "stripe", "secret": secret, **extra})
    assert isinstance(built, StripeSource)
    return built


def signed(body: bytes = BODY, secret: str = SECRET, t: int = T, extra: str = "") -> WebhookRequest:
    return make_request(body, {"Stripe-Signature": stripe_header(body, secret, t, extra)})


def test_a_request_signed_by_stripe_is_accepted() -> None:
    source().verify(signed(), now=T + 1)


def test_stripes_own_verifier_accepts_what_the_test_signs() -> None:
    # The oracle checks itself: the header we build passes stripe's verify_header.
    header = stripe_header(BODY, SECRET)
    assert stripe.WebhookSignature.verify_header(BODY.decode(), header, SECRET)


def test_a_request_signed_with_another_secret_is_refused() -> None:
    request = signed(secret="whsec_someone_else_entirely_123")
    assert refused(source(), request, T, SECRET) == "signature mismatch"


def test_a_tampered_body_is_refused() -> None:
    request = signed()
    tampered = make_request(BODY.replace(b"4711", b"4712"), request.headers)
    assert refused(source(), tampered, T, SECRET) == "signature mismatch"


def test_a_tampered_timestamp_is_refused() -> None:
    header = stripe_header(BODY, SECRET).replace(f"t={T}", f"t={T + 60}")
    request = make_request(BODY, {"Stripe-Signature": header})
    assert refused(source(), request, T + 60, SECRET) == "signature mismatch"


@pytest.mark.parametrize("drift", [301, -301, 86_400, -86_400])
def test_a_timestamp_more_than_300_seconds_away_is_refused(drift: int) -> None:
    assert refused(source(), signed(), T + drift, SECRET) == "timestamp outside tolerance"


@pytest.mark.parametrize("drift", [300, -300, 0])
def test_a_timestamp_within_300_seconds_either_way_is_accepted(drift: int) -> None:
    source().verify(signed(), T + drift)


def test_the_tolerance_is_configurable_as_a_duration() -> None:
    lenient = source(tolerance="10m")
    lenient.verify(signed(), T + 599)
    assert refused(lenient, signed(), T + 601) == "timestamp outside tolerance"


def test_a_request_without_the_header_is_refused() -> None:
    request = make_request(BODY, {})
    assert refused(source(), request, T) == "missing Stripe-Signature header"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("garbage", "no timestamp in Stripe-Signature header"),
        ("v1=abc123", "no timestamp in Stripe-Signature header"),
        (f"t={T}", "no v1 signature in Stripe-Signature header"),
        (f"t={T},v0=abc", "no v1 signature in Stripe-Signature header"),
        ("t=yesterday,v1=abc", "malformed Stripe-Signature timestamp"),
        ("t=1e9,v1=abc", "malformed Stripe-Signature timestamp"),
        ("t=" + "9" * 400 + ",v1=abc", "malformed Stripe-Signature timestamp"),
        (f"t={T},v1=not-hex-at-all", "signature mismatch"),
    ],
)
def test_a_garbled_header_is_refused_with_a_reason(header: str, reason: str) -> None:
    request = make_request(BODY, {"Stripe-Signature": header})
    assert refused(source(), request, T, SECRET) == reason


def test_during_a_secret_roll_the_old_and_the_new_secret_are_both_accepted() -> None:
    rolling = source([OLD_SECRET, SECRET])
    rolling.verify(signed(secret=OLD_SECRET), T)
    rolling.verify(signed(secret=SECRET), T)
    assert refused(rolling, signed(secret="whsec_neither_of_them_000"), T) == "signature mismatch"


def test_any_of_several_v1_signatures_may_match() -> None:
    # Stripe sends one v1 per active secret while an endpoint secret is being rolled.
    def v1(secret: str) -> str:
        return stripe.WebhookSignature._compute_signature(f"{T}.{BODY.decode()}", secret)

    for header in (
        f"t={T},v1={v1(SECRET)},v1={v1(OLD_SECRET)},v0=deadbeef",
        f"t={T},v1={v1(OLD_SECRET)},v1={v1(SECRET)}",
        f"v1={v1(OLD_SECRET)}, t={T}, v1={v1(SECRET)}",
    ):
        source().verify(make_request(BODY, {"Stripe-Signature": header}), T)


def test_the_event_id_and_time_come_from_the_event() -> None:
    [event] = source().parse(signed(), received_at=T + 5)
    payload = json.loads(BODY)
    assert event.event_id == payload["id"] == "evt_1PqR7sLkdIwHu7ix0a8mZ3Qd"
    assert event.occurred_at == payload["created"]
    assert (event.received_at, event.source, event.payload) == (T + 5, "test", payload)


def test_stored_headers_leave_out_the_signature() -> None:
    request = make_request(BODY, {"Stripe-Signature": "t=1,v1=ab", "User-Agent": "Stripe/1.0"})
    [event] = source().parse(request, received_at=T)
    assert dict(event.headers) == {"user-agent": "Stripe/1.0"}


@pytest.mark.parametrize("created", [None, "soon", True, -5, 1e300, [1]])
def test_a_missing_or_garbage_created_falls_back_to_the_receive_time(created: object) -> None:
    body = json.dumps({"id": "evt_1", "created": created}).encode()
    [event] = source().parse(make_request(body), received_at=T)
    assert event.occurred_at == T


def test_a_thin_event_with_an_iso_created_is_read() -> None:
    body = json.dumps({"id": "evt_2", "created": "2024-08-23T13:20:00.500Z"}).encode()
    [event] = source().split(make_request(body), received_at=0.0)
    assert event.occurred_at == T + 0.5


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "Stripe event is not a JSON object"),
        (b'[{"id": "evt_1"}]', "Stripe event is not a JSON object"),
        (b'{"object": "event"}', "Stripe event without id"),
        (b'{"id": ""}', "Stripe event without id"),
        (b'{"id": {"nested": 1}}', "Stripe event without id"),
        (b"{not json", "malformed JSON"),
        (b"", "empty body"),
    ],
)
def test_a_body_that_is_not_a_stripe_event_is_a_bad_request(body: bytes, reason: str) -> None:
    assert rejected(BadRequest, source(), make_request(body)) == reason


def test_a_body_of_another_media_type_is_refused() -> None:
    request = make_request(BODY, content_type="text/plain")
    rejected(UnsupportedMediaType, source(), request)


def test_the_issue_yaml_shape_builds_and_its_repr_hides_the_secret() -> None:
    built = build_one(f"{{preset: stripe, secret: {SECRET}}}")
    assert isinstance(built, StripeSource)
    assert SECRET not in repr(built.settings)
    assert SECRET not in str(built.settings)


def test_an_unknown_key_and_a_missing_secret_are_reported_with_file_and_key() -> None:
    messages = config_errors("stripe: {preset: stripe, secrets: [a, b], tolerance: 5 minutes}")
    assert f"{CONFIG_FILE}: key 'sources.stripe.secret': required" in messages
    assert any("key 'sources.stripe.secrets'" in m and "unknown key" in m for m in messages)
    assert any("key 'sources.stripe.tolerance'" in m and "duration" in m for m in messages)


@pytest.mark.parametrize("secret", ["", "   ", [], ["whsec_ok", ""]])
def test_an_empty_secret_is_a_config_error(secret: object) -> None:
    messages = config_errors({"stripe": {"preset": "stripe", "secret": secret}})
    assert len(messages) == 1
    assert "key 'sources.stripe.secret'" in messages[0]
