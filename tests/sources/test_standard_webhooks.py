"""Standard Webhooks: signatures from the reference `standardwebhooks` library, ids, times."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from bridge.errors import BadRequest
from bridge.sources.base import WebhookRequest
from bridge.sources.standard_webhooks import StandardWebhooksSource

from .conftest import CONFIG_FILE, build_one, config_errors, make_request, refused, rejected, sample

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
OLD_SECRET = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
MSG_ID = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W"
TS = 1_724_419_200
BODY = sample("standard-webhooks", "invoice.paid.json")


def sign(body: bytes = BODY, secret: str = SECRET, ts: int = TS, msg_id: str = MSG_ID) -> str:
    """A `v1,<base64>` signature made by the reference library."""
    return Webhook(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())


def signed(
    body: bytes = BODY,
    secret: str = SECRET,
    ts: int = TS,
    prefix: str = "webhook",
    signature: str | None = None,
) -> WebhookRequest:
    headers = {
        f"{prefix}-id": MSG_ID,
        f"{prefix}-timestamp": str(ts),
        f"{prefix}-signature": signature if signature is not None else sign(body, secret, ts),
    }
    return make_request(body, headers)


def source(secret: str | list[str] = SECRET) -> StandardWebhooksSource:
    built = build_one({"preset": "standard-webhooks", "secret": secret})
    assert isinstance(built, StandardWebhooksSource)
    return built


def test_a_request_signed_by_the_reference_library_is_accepted() -> None:
    source().verify(signed(), TS + 2)


def test_svix_header_names_are_accepted_too() -> None:
    source().verify(signed(prefix="svix"), TS)


def test_the_reference_verifier_accepts_what_the_test_signs() -> None:
    now = int(datetime.now(tz=UTC).timestamp())
    request = signed(ts=now)
    assert Webhook(SECRET).verify(BODY, dict(request.headers)) == json.loads(BODY)


def test_a_request_signed_with_another_secret_is_refused() -> None:
    other = "whsec_" + base64.b64encode(b"x" * 32).decode()
    assert refused(source(), signed(secret=other), TS, SECRET) == "signature mismatch"


def test_a_tampered_body_is_refused() -> None:
    request = signed()
    tampered = make_request(BODY.replace(b"4900", b"490"), request.headers)
    assert refused(source(), tampered, TS, SECRET) == "signature mismatch"


@pytest.mark.parametrize(
    ("header", "value"),
    [("webhook-id", "msg_other"), ("webhook-timestamp", str(TS + 1))],
)
def test_a_tampered_id_or_timestamp_is_refused(header: str, value: str) -> None:
    headers = {**signed().headers, header: value}
    assert refused(source(), make_request(BODY, headers), TS) == "signature mismatch"


@pytest.mark.parametrize("drift", [301, -301, 7200, -7200])
def test_a_timestamp_more_than_300_seconds_away_is_refused(drift: int) -> None:
    assert refused(source(), signed(), TS + drift, SECRET) == "timestamp outside tolerance"


@pytest.mark.parametrize("drift", [300, -300, 0])
def test_a_timestamp_within_300_seconds_either_way_is_accepted(drift: int) -> None:
    source().verify(signed(), TS + drift)


@pytest.mark.parametrize("name", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_a_request_missing_a_header_is_refused(name: str) -> None:
    headers = {k: v for k, v in signed().headers.items() if k != name}
    assert refused(source(), make_request(BODY, headers), TS) == f"missing {name} header"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("webhook-signature", "garbage", "no valid v1 signature in webhook-signature header"),
        ("webhook-signature", "v1,***", "no valid v1 signature in webhook-signature header"),
        ("webhook-signature", "v2,c2ln", "no valid v1 signature in webhook-signature header"),
        ("webhook-signature", "v1,c2hvcnQ=", "signature mismatch"),
        ("webhook-timestamp", "2024-08-23T13:20:00Z", "malformed webhook-timestamp header"),
        ("webhook-timestamp", "1724419200.5", "malformed webhook-timestamp header"),
    ],
)
def test_a_garbled_header_is_refused_with_a_reason(name: str, value: str, reason: str) -> None:
    headers = {**signed().headers, name: value}
    assert refused(source(), make_request(BODY, headers), TS, SECRET) == reason


def test_while_rotating_the_old_and_the_new_secret_are_both_accepted() -> None:
    rotating = source([OLD_SECRET, SECRET])
    rotating.verify(signed(secret=OLD_SECRET), TS)
    rotating.verify(signed(secret=SECRET), TS)


def test_any_signature_in_the_list_may_match_and_v1a_entries_are_skipped() -> None:
    # The sender signs with both keys during its rotation; we know only the new one.
    asymmetric = "v1a," + base64.b64encode(b"e" * 64).decode()
    header = f"{asymmetric} {sign(secret=OLD_SECRET)} {sign(secret=SECRET)}"
    source().verify(signed(signature=header), TS)
    assert refused(source(OLD_SECRET), signed(signature=sign()), TS) == "signature mismatch"


def test_a_secret_whose_base64_padding_was_dropped_works() -> None:
    raw = b"twenty-five bytes secret!"  # base64 of 25 bytes ends in "="
    padded = base64.b64encode(raw).decode()
    assert padded.endswith("=")
    unpadded = "whsec_" + padded.rstrip("=")
    source(unpadded).verify(signed(secret="whsec_" + padded), TS)


def test_the_event_is_identified_by_webhook_id_and_timed_by_the_payload() -> None:
    [event] = source().parse(signed(), received_at=TS + 1)
    assert event.event_id == MSG_ID
    assert event.occurred_at == pytest.approx(1724419200.512345)
    assert event.payload == json.loads(BODY)
    assert "webhook-signature" not in event.headers
    assert event.headers["webhook-id"] == MSG_ID


def test_svix_ids_are_read_too() -> None:
    [event] = source().parse(signed(prefix="svix"), received_at=TS)
    assert event.event_id == MSG_ID


def test_a_payload_without_a_timestamp_is_timed_at_receipt() -> None:
    body = b'{"type": "ping", "data": {}}'
    [event] = source().parse(signed(body=body), received_at=TS + 9)
    assert event.occurred_at == TS + 9


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[1, 2]", "Standard Webhooks payload is not a JSON object"),
        (b"{oops", "malformed JSON"),
    ],
)
def test_a_body_that_is_not_an_object_is_a_bad_request(body: bytes, reason: str) -> None:
    assert rejected(BadRequest, source(), signed(body=body)) == reason


def test_the_issue_yaml_shape_builds_and_its_repr_hides_the_secret() -> None:
    built = build_one(f"{{preset: standard-webhooks, secret: {SECRET}}}")
    assert isinstance(built, StandardWebhooksSource)
    assert SECRET[6:] not in repr(built.settings)


def test_config_mistakes_are_reported_with_file_and_key() -> None:
    messages = config_errors(
        """
        a: {preset: standard-webhooks}
        b: {preset: standard-webhooks, secret: "whsec_not base64!"}
        c: {preset: standard-webhooks, secret: [whsec_c2VjcmV0, "whsec_"], tolerence: 5m}
        """
    )
    assert f"{CONFIG_FILE}: key 'sources.a.secret': required" in messages
    assert any("key 'sources.b.secret'" in m and "base64" in m for m in messages)
    assert any("key 'sources.c.secret'" in m and "only the prefix whsec_" in m for m in messages)
    assert any("key 'sources.c.tolerence'" in m and "unknown key" in m for m in messages)
    assert all("not base64!" not in m for m in messages)
