"""Shopify: `X-Shopify-Hmac-Sha256` checked against an independent HMAC, ids, topic, times."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from bridge.errors import BadRequest
from bridge.sources.base import WebhookRequest
from bridge.sources.shopify import ShopifySource

from .conftest import CONFIG_FILE, build_one, config_errors, make_request, refused, rejected, sample

SECRET = "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"
OLD_SECRET = "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"
T = 1_724_419_200
BODY = sample("shopify", "orders-paid.json")
EVENT_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
WEBHOOK_ID = "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"


def hmac_b64(body: bytes, secret: str) -> str:
    """Shopify's header, computed here from the documented recipe: base64 HMAC-SHA256."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def source(secret: str | list[str] = SECRET) -> ShopifySource:
    built = build_one({"preset": "shopify", "secret": secret})
    assert isinstance(built, ShopifySource)
    return built


def delivered(body: bytes = BODY, secret: str = SECRET, **extra: str) -> WebhookRequest:
    headers = {
        "X-Shopify-Hmac-Sha256": hmac_b64(body, secret),
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Shop-Domain": "example.myshopify.com",
        "X-Shopify-Event-Id": EVENT_ID,
        "X-Shopify-Webhook-Id": WEBHOOK_ID,
        "X-Shopify-Triggered-At": "2024-08-23T13:20:00.500000Z",
        **extra,
    }
    return make_request(body, {k: v for k, v in headers.items() if v})


def test_a_request_signed_as_shopify_documents_is_accepted() -> None:
    source().verify(delivered(), now=T)


def test_a_request_signed_with_another_secret_is_refused() -> None:
    assert refused(source(), delivered(secret="shpss_other"), T, SECRET) == "signature mismatch"


def test_a_tampered_body_is_refused() -> None:
    tampered = make_request(BODY.replace(b"4711", b"4712"), delivered().headers)
    assert refused(source(), tampered, T, SECRET) == "signature mismatch"


def test_a_hex_signature_is_not_mistaken_for_base64() -> None:
    hex_sig = hmac.new(SECRET.encode(), BODY, hashlib.sha256).hexdigest()
    request = delivered(**{"X-Shopify-Hmac-Sha256": hex_sig})
    assert refused(source(), request, T, SECRET) == "signature mismatch"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "missing X-Shopify-Hmac-Sha256 header"),
        ("%%%not base64", "malformed X-Shopify-Hmac-Sha256 header"),
    ],
)
def test_a_missing_or_garbled_signature_is_refused(value: str, reason: str) -> None:
    request = delivered(**{"X-Shopify-Hmac-Sha256": value})
    assert refused(source(), request, T, SECRET) == reason


def test_during_a_secret_rotation_both_secrets_are_accepted() -> None:
    rolling = source([SECRET, OLD_SECRET])
    rolling.verify(delivered(secret=OLD_SECRET), T)
    rolling.verify(delivered(secret=SECRET), T)


def digest(body: bytes = BODY) -> str:
    return hashlib.sha256(body).hexdigest()


def test_what_the_source_signs_it_verifies_and_parses() -> None:
    headers = source().sign(BODY, now=T + 0.5, path="/webhooks/shopify")
    assert headers["X-Shopify-Hmac-Sha256"] == hmac_b64(BODY, SECRET)
    request = make_request(BODY, headers)
    source().verify(request, T)
    [event] = source().parse(request, received_at=T + 9)
    assert (event.event_id, event.occurred_at) == (digest(), T)


def test_the_event_id_is_a_digest_of_the_signed_body_scoped_by_topic() -> None:
    [event] = source().parse(delivered(), received_at=T)
    assert event.event_id == f"orders/paid:{digest()}"


def test_the_unsigned_id_and_time_headers_decide_nothing() -> None:
    # A captured request replayed with a new event id and a trigger time in 2099.
    replayed = delivered(
        **{
            "X-Shopify-Event-Id": "forged-0001",
            "X-Shopify-Webhook-Id": "forged-0002",
            "X-Shopify-Triggered-At": "2099-01-01T00:00:00Z",
        }
    )
    [genuine] = source().parse(delivered(), received_at=T + 5)
    [replay] = source().parse(replayed, received_at=T + 3600)
    assert replay.event_id == genuine.event_id
    assert replay.occurred_at == genuine.occurred_at == T


def test_one_change_firing_two_topics_gives_two_events() -> None:
    [paid] = source().parse(delivered(), received_at=T)
    [updated] = source().parse(delivered(**{"X-Shopify-Topic": "orders/updated"}), received_at=T)
    assert paid.event_id != updated.event_id


def test_without_a_topic_the_id_is_the_bare_digest() -> None:
    [event] = source().parse(delivered(**{"X-Shopify-Topic": ""}), received_at=T)
    assert event.event_id == digest()


def test_rules_see_the_topic_in_the_headers_but_not_the_signature() -> None:
    [event] = source().parse(delivered(), received_at=T)
    assert event.headers["x-shopify-topic"] == "orders/paid"
    assert event.headers["x-shopify-shop-domain"] == "example.myshopify.com"
    assert "x-shopify-hmac-sha256" not in event.headers


def test_the_time_is_the_resources_updated_at_and_the_payload_the_body() -> None:
    [event] = source().parse(delivered(), received_at=T + 5)
    assert event.occurred_at == T  # "updated_at": "2024-08-23T15:20:00+02:00"
    assert (event.received_at, event.payload) == (T + 5, json.loads(BODY))


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"created_at": "2024-08-23T13:19:30Z"}, T - 30),
        ({"updated_at": "garbage", "created_at": "2024-08-23T13:19:30Z"}, T - 30),
        ({}, T + 5),
        ({"updated_at": None}, T + 5),
    ],
)
def test_without_updated_at_the_time_is_created_at_or_else_the_receive_time(
    fields: dict[str, object], expected: float
) -> None:
    body = json.dumps({"id": 1, **fields}).encode()
    [event] = source().parse(delivered(body), received_at=T + 5)
    assert event.occurred_at == expected


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "Shopify payload is not a JSON object"),
        (b"{not json", "malformed JSON"),
        (b"", "empty body"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_bad_request(body: bytes, reason: str) -> None:
    assert rejected(BadRequest, source(), delivered(body)) == reason


def test_the_issue_yaml_shape_builds_and_hides_the_secret() -> None:
    built = build_one(f"{{preset: shopify, secret: {SECRET}}}")
    assert isinstance(built, ShopifySource)
    assert SECRET not in repr(built.settings)


def test_a_missing_secret_is_reported_with_file_and_key() -> None:
    messages = config_errors("shopify: {preset: shopify, tolerance: 5}")
    assert f"{CONFIG_FILE}: key 'sources.shopify.secret': required" in messages
    # Nothing Shopify signs carries a time, so a tolerance would be a false promise.
    assert any("key 'sources.shopify.tolerance'" in m and "unknown key" in m for m in messages)
