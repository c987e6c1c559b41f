"""HubSpot: v3 signatures checked against HubSpot's own library; batches split into events."""

from __future__ import annotations

import json

import pytest
from hubspot.utils.signature import Signature

from bridge.errors import BadRequest
from bridge.sources.base import WebhookRequest
from bridge.sources.hubspot import HubSpotSource, signed_uri

from .conftest import (
    CONFIG_FILE,
    PUBLIC_URL,
    build_one,
    config_errors,
    make_request,
    refused,
    rejected,
    sample,
)

SECRET = "7c1e5a2b-93d4-4f60-8b1a-2e6f0c9d4a71"
OLD_SECRET = "0b6d2e9f-1a3c-4e57-9d08-6c4b2a1f7e35"
NOW = 1_724_419_260.0
TS = "1724419200123"  # ms: 59.877 s before NOW
BODY = sample("hubspot", "batch.json")
PATH = "/webhooks/hubspot"


def hubspot_headers(body: bytes, secret: str, uri: str, ts: str = TS) -> dict[str, str]:
    """Headers as HubSpot sends them, the signature computed by HubSpot's own library."""
    signature = Signature.get_signature(
        secret, body.decode(), "v3", http_uri=uri, http_method="POST", timestamp=ts
    )
    return {"X-HubSpot-Signature-v3": signature, "X-HubSpot-Request-Timestamp": ts}


def signed(
    body: bytes = BODY,
    secret: str = SECRET,
    ts: str = TS,
    query: str = "",
    signed_as: str | None = None,
) -> WebhookRequest:
    uri = signed_as or f"{PUBLIC_URL}{PATH}" + (f"?{query}" if query else "")
    return make_request(body, hubspot_headers(body, secret, uri, ts), path=PATH, query_string=query)


def source(secret: str | list[str] = SECRET, public_url: str = PUBLIC_URL) -> HubSpotSource:
    built = build_one({"preset": "hubspot", "secret": secret})
    assert isinstance(built, HubSpotSource)
    if public_url != PUBLIC_URL:
        built = HubSpotSource("test", built.settings, public_url=public_url)
    return built


def test_a_request_signed_by_hubspot_is_accepted() -> None:
    source().verify(signed(), NOW)


def test_the_public_url_is_signed_not_the_address_a_proxy_forwarded_to() -> None:
    # HubSpot called https://hooks.example.com/webhooks/hubspot; a proxy forwarded it
    # to http://10.0.0.5:8080/webhooks/hubspot. The signature covers the public one.
    request = signed()
    source(public_url="https://hooks.example.com/").verify(request, NOW)
    elsewhere = source(public_url="http://10.0.0.5:8080")
    assert refused(elsewhere, request, NOW, SECRET) == "signature mismatch"


def test_the_query_is_signed_with_hubspots_listed_escapes_decoded() -> None:
    query = "portal=a%3Ab%2Fc&who=%40ada%21&list=%28x%29%2C%2a%3b&space=a%20b&pct=%253A"
    decoded = "portal=a:b/c&who=@ada!&list=(x),*;&space=a%20b&pct=%253A"
    request = signed(query=query, signed_as=f"{PUBLIC_URL}{PATH}?{decoded}")
    source().verify(request, NOW)


def test_signed_uri_decodes_exactly_the_listed_escapes() -> None:
    listed = "%3A%2F%3F%40%21%24%27%28%29%2A%2C%3B"
    others = "%20%25%26%3D%2B%23%5B"
    uri = signed_uri(PUBLIC_URL, "/webhooks/h%3Ab", f"q={listed}&r={others}")
    assert uri == f"{PUBLIC_URL}/webhooks/h:b?q=:/?@!$'()*,;&r={others}"


def test_a_request_signed_with_another_secret_is_refused() -> None:
    request = signed(secret="00000000-0000-0000-0000-000000000000")
    assert refused(source(), request, NOW, SECRET) == "signature mismatch"


def test_a_tampered_body_is_refused() -> None:
    request = signed()
    tampered = make_request(BODY.replace(b"closedwon", b"closedlos"), request.headers, path=PATH)
    assert refused(source(), tampered, NOW, SECRET) == "signature mismatch"


def test_a_tampered_timestamp_is_refused() -> None:
    headers = dict(signed().headers)
    headers["x-hubspot-request-timestamp"] = str(int(TS) + 1000)
    assert refused(source(), make_request(BODY, headers, path=PATH), NOW) == "signature mismatch"


def test_another_method_is_refused() -> None:
    request = signed()
    as_put = make_request(BODY, request.headers, path=PATH, method="PUT")
    assert refused(source(), as_put, NOW) == "signature mismatch"


@pytest.mark.parametrize("drift", [300.2, -300.2, 3600.0, -3600.0])
def test_a_timestamp_more_than_300_seconds_away_is_refused(drift: float) -> None:
    ts = str(int(NOW * 1000 + drift * 1000))
    assert refused(source(), signed(ts=ts), NOW) == "timestamp outside tolerance"


@pytest.mark.parametrize("drift", [299.9, -299.9, 0.0])
def test_a_timestamp_within_300_seconds_either_way_is_accepted(drift: float) -> None:
    source().verify(signed(ts=str(int(NOW * 1000 + drift * 1000))), NOW)


@pytest.mark.parametrize(
    ("drop", "reason"),
    [
        ("X-HubSpot-Signature-v3", "missing X-HubSpot-Signature-v3 header"),
        ("X-HubSpot-Request-Timestamp", "missing X-HubSpot-Request-Timestamp header"),
    ],
)
def test_a_request_without_a_header_is_refused(drop: str, reason: str) -> None:
    headers = {k: v for k, v in signed().headers.items() if k != drop.lower()}
    assert refused(source(), make_request(BODY, headers, path=PATH), NOW) == reason


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("X-HubSpot-Signature-v3", "not base64!", "malformed X-HubSpot-Signature-v3 header"),
        ("X-HubSpot-Signature-v3", "c2hvcnQ=", "signature mismatch"),
        ("X-HubSpot-Request-Timestamp", "now", "malformed X-HubSpot-Request-Timestamp header"),
        ("X-HubSpot-Request-Timestamp", "-5", "malformed X-HubSpot-Request-Timestamp header"),
        ("X-HubSpot-Request-Timestamp", "1.7e12", "malformed X-HubSpot-Request-Timestamp header"),
    ],
)
def test_a_garbled_header_is_refused_with_a_reason(name: str, value: str, reason: str) -> None:
    headers = {**signed().headers, name.lower(): value}
    assert refused(source(), make_request(BODY, headers, path=PATH), NOW, SECRET) == reason


def test_while_rotating_the_old_and_the_new_client_secret_are_both_accepted() -> None:
    rotating = source([SECRET, OLD_SECRET])
    rotating.verify(signed(secret=OLD_SECRET), NOW)
    rotating.verify(signed(secret=SECRET), NOW)
    request = signed(secret="ffffffff-ffff-ffff-ffff-ffffffffffff")
    assert refused(rotating, request, NOW) == "signature mismatch"


def test_a_batch_is_split_into_one_event_per_item() -> None:
    events = source().parse(signed(), received_at=NOW)
    items = json.loads(BODY)
    assert [e.payload for e in events] == items
    assert [e.event_id for e in events] == [
        "62515:2881778:1836259021:9001:1724419200123",
        "62515:2881778:1836259021:9002:1724419200123",
        "62515:2881779:40991:123:1724419201500",
    ]
    assert [e.occurred_at for e in events] == [1724419200.123, 1724419200.123, 1724419201.5]
    assert {e.received_at for e in events} == {NOW}
    assert all("x-hubspot-signature-v3" not in e.headers for e in events)
    assert all(e.headers["x-hubspot-request-timestamp"] == TS for e in events)


def test_the_same_event_id_on_two_objects_gives_two_dedupe_ids() -> None:
    first, second, _ = source().parse(signed(), received_at=NOW)
    assert first.payload["eventId"] == second.payload["eventId"]
    assert first.event_id != second.event_id


def test_a_redelivered_batch_gives_the_same_ids() -> None:
    items = json.loads(BODY)
    for item in items:
        item["attemptNumber"] += 1
    again = json.dumps(items).encode()
    before = [e.event_id for e in source().parse(make_request(BODY), NOW)]
    after = [e.event_id for e in source().parse(make_request(again), NOW)]
    assert before == after


def test_a_garbage_occurred_at_falls_back_to_the_receive_time() -> None:
    body = json.dumps([{"eventId": 1, "occurredAt": "yesterday"}, {"eventId": 2}]).encode()
    events = source().parse(make_request(body), received_at=NOW)
    assert [e.occurred_at for e in events] == [NOW, NOW]
    assert [e.event_id for e in events] == ["::1::yesterday", "::2::"]


def test_an_empty_batch_has_no_events() -> None:
    assert source().parse(make_request(b"[]"), received_at=NOW) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"eventId": 1}', "HubSpot body is not a JSON array of events"),
        (b'"hello"', "HubSpot body is not a JSON array of events"),
        (b'[{"eventId": 1}, 7]', "HubSpot event 1 is not a JSON object"),
        (b'[{"objectId": 1}]', "HubSpot event 0 has no eventId"),
        (b'[{"eventId": {"x": 1}}]', "HubSpot event 0 has a malformed eventId"),
        (b'[{"eventId": 1, "portalId": [1]}]', "HubSpot event 0 has a malformed portalId"),
        (b"[{", "malformed JSON"),
    ],
)
def test_a_body_that_is_not_a_hubspot_batch_is_a_bad_request(body: bytes, reason: str) -> None:
    assert rejected(BadRequest, source(), make_request(body)) == reason


def test_more_than_100_events_is_a_bad_request() -> None:
    items = [{"eventId": i, "objectId": i} for i in range(101)]
    reason = rejected(BadRequest, source(), make_request(json.dumps(items).encode()))
    assert reason == "more than 100 events in one HubSpot request"
    hundred = make_request(json.dumps(items[:100]).encode())
    assert len(source().parse(hundred, NOW)) == 100


def test_the_issue_yaml_shape_builds() -> None:
    built = build_one(f"{{preset: hubspot, secret: {SECRET}, tolerance: 2m}}")
    assert isinstance(built, HubSpotSource)
    assert SECRET not in repr(built.settings)


def test_an_unknown_key_and_a_missing_secret_are_reported_with_file_and_key() -> None:
    messages = config_errors("hubspot: {preset: hubspot, client_secret: x}")
    assert f"{CONFIG_FILE}: key 'sources.hubspot.secret': required" in messages
    assert any("key 'sources.hubspot.client_secret'" in m for m in messages)
