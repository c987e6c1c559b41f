"""`Source.sign`: what a source signs, it verifies, and so do the providers' own libraries."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest
import stripe
from hubspot.utils.signature import Signature
from standardwebhooks import Webhook

from bridge.errors import Unauthorized
from bridge.models import Event
from bridge.sources.base import Source, SourceSettings, WebhookRequest
from bridge.sources.generic import GenericSource

from .conftest import PUBLIC_URL, build_one, make_request

NOW = 1_724_419_200.25
PATH = "/webhooks/test"
BODY = '{"id": "evt_1", "name": "Zoë", "amount": 1999}'.encode()

STRIPE_NEW, STRIPE_OLD = "whsec_new_5b1e9c4a8d2f7e", "whsec_old_7d2f0a9c3e6b1d"
HUBSPOT_NEW, HUBSPOT_OLD = "hubspot-secret-new-1a2b", "hubspot-secret-old-3c4d"
SW_NEW = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
SW_OLD = "whsec_" + base64.b64encode(b"fedcba9876543210fedcba9876543210").decode()
GENERIC_NEW, GENERIC_OLD = "generic-secret-new-99", "generic-secret-old-11"

HMAC_HEX = {
    "verify": {"type": "hmac", "header": "X-Signature", "prefix": "sha256="},
}
HMAC_URL = {
    "verify": {
        "type": "hmac",
        "header": "X-Sig",
        "algorithm": "sha512",
        "encoding": "base64",
        "timestamp_header": "X-Timestamp",
        "signed": "{method} {url} {timestamp} {body}",
    },
}
TOKEN_HEADER = {"verify": {"type": "token", "header": "Authorization", "prefix": "Bearer "}}
TOKEN_QUERY = {"verify": {"type": "token", "query": "token"}}

# Each case: its YAML mapping, and the secret settings for (new, old) rotation.
CASES: dict[str, tuple[dict[str, Any], tuple[str, str]]] = {
    "stripe": ({"preset": "stripe"}, (STRIPE_NEW, STRIPE_OLD)),
    "hubspot": ({"preset": "hubspot"}, (HUBSPOT_NEW, HUBSPOT_OLD)),
    "standard-webhooks": ({"preset": "standard-webhooks"}, (SW_NEW, SW_OLD)),
    "generic-hmac-hex": (HMAC_HEX, (GENERIC_NEW, GENERIC_OLD)),
    "generic-hmac-url": (HMAC_URL, (GENERIC_NEW, GENERIC_OLD)),
    "generic-token-header": (TOKEN_HEADER, (GENERIC_NEW, GENERIC_OLD)),
    "generic-token-query": (TOKEN_QUERY, (GENERIC_NEW, GENERIC_OLD)),
    "paddle": (
        {"preset": "paddle"},
        ("pdl_ntfset_new_4f8a2c9e1b7d", "pdl_ntfset_old_6d3b8f0a2e5c"),
    ),
    "shopify": ({"preset": "shopify"}, ("shpss_new_1c9e4a7f2d8b", "shpss_old_5a2f8c1e9d3b")),
    "close": ({"preset": "close"}, ("0a1b2c3d4e5f6789" * 4, "f5e4d3c2b1a09876" * 4)),
}
# Credentials that are not a secret list: basic auth in two shapes, and none.
BASIC_CASES: dict[str, dict[str, Any]] = {
    "pipedrive": {
        "preset": "pipedrive",
        "basic_auth": {"username": "voxys", "password": "pd-password-1"},
    },
    "generic-basic": {
        "verify": {"type": "basic", "username": "voxys", "password": "gb-password-1"}
    },
    "chargebee": {
        "preset": "chargebee",
        "basic_auth": {"username": "cb", "password": "cb-password-1"},
    },
}
BODY_SIGNED = ["stripe", "hubspot", "standard-webhooks", "generic-hmac-hex", "generic-hmac-url"]
CREDENTIAL_ONLY = ["pipedrive", "generic-basic", "generic-token-header", "generic-token-query"]
TIMESTAMPED = ["stripe", "hubspot", "standard-webhooks", "generic-hmac-url", "paddle", "close"]
URL_SIGNED = ["hubspot", "generic-hmac-url"]


def configured(case: str, *secrets: str) -> Source:
    """The case's source; `secrets` replace its default (new, old) list."""
    if case in BASIC_CASES:
        return build_one(BASIC_CASES[case])
    if case == "generic-none":
        return build_one({"verify": {"type": "none"}, "allow_unsigned": True})
    entry, default = CASES[case]
    return build_one({**entry, "secret": list(secrets or default)})


def sent(
    source: Source, body: bytes = BODY, now: float = NOW, query: str = "a=1&b=%2F"
) -> WebhookRequest:
    """The request a sender builds with `source.sign`, as the ingest handler would see it."""
    if isinstance(source, GenericSource):
        query = source.signed_query(query)
    headers = source.sign(body, now=now, path=PATH, query_string=query)
    return make_request(body, headers, path=PATH, query_string=query)


def flipped(request: WebhookRequest) -> WebhookRequest:
    body = bytearray(request.body)
    body[len(body) // 2] ^= 0x01
    return make_request(bytes(body), request.headers, path=PATH, query_string=request.query_string)


ALL = [*CASES, *BASIC_CASES, "generic-none"]


@pytest.mark.parametrize("case", ALL)
def test_a_request_a_source_signs_is_accepted_by_that_source(case: str) -> None:
    source = configured(case)
    source.verify(sent(source), NOW)


@pytest.mark.parametrize("case", ALL)
def test_signed_headers_carry_the_content_type(case: str) -> None:
    source = configured(case)
    headers = source.sign(
        BODY, now=NOW, path=PATH, content_type="application/x-www-form-urlencoded"
    )
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"


@pytest.mark.parametrize("case", BODY_SIGNED)
def test_a_flipped_body_byte_is_refused(case: str) -> None:
    source = configured(case)
    with pytest.raises(Unauthorized, match="signature mismatch"):
        source.verify(flipped(sent(source)), NOW)


@pytest.mark.parametrize("case", CREDENTIAL_ONLY)
def test_credential_schemes_do_not_cover_the_body(case: str) -> None:
    # Basic auth and tokens authenticate the sender, not the content (RFC 7617): a
    # changed body is still accepted. This is why they are weaker than an HMAC.
    source = configured(case)
    source.verify(flipped(sent(source)), NOW)


@pytest.mark.parametrize("case", list(CASES))
def test_a_request_signed_with_another_secret_is_refused(case: str) -> None:
    _, (new, _old) = CASES[case]
    other = {
        "standard-webhooks": "whsec_" + base64.b64encode(b"x" * 32).decode(),
        "stripe": "whsec_" + "x" * 24,
        "close": "ab" * 32,
    }.get(case, "x" * 24)
    with pytest.raises(Unauthorized):
        configured(case, new).verify(sent(configured(case, other)), NOW)


@pytest.mark.parametrize("case", list(BASIC_CASES))
def test_basic_credentials_of_another_password_are_refused(case: str) -> None:
    entry = BASIC_CASES[case]
    if "basic_auth" in entry:
        other = {**entry, "basic_auth": {**entry["basic_auth"], "password": "other-password"}}
    else:
        other = {**entry, "verify": {**entry["verify"], "password": "other-password"}}
    with pytest.raises(Unauthorized, match="invalid credentials"):
        configured(case).verify(sent(build_one(other)), NOW)


@pytest.mark.parametrize("case", list(CASES))
def test_the_first_of_several_secrets_signs(case: str) -> None:
    _, (new, old) = CASES[case]
    request = sent(configured(case, new, old))
    configured(case, new).verify(request, NOW)
    with pytest.raises(Unauthorized):
        configured(case, old).verify(request, NOW)


@pytest.mark.parametrize("case", TIMESTAMPED)
def test_a_signature_is_stamped_with_now_and_expires_after_the_tolerance(case: str) -> None:
    source = configured(case)
    request = sent(source)
    tolerance = 73 * 3600 if case == "close" else 300  # Close spans its 72 h of retries
    source.verify(request, NOW + tolerance - 1)
    with pytest.raises(Unauthorized, match="timestamp outside tolerance"):
        source.verify(request, NOW + tolerance + 1)


@pytest.mark.parametrize("case", URL_SIGNED)
def test_a_url_signing_scheme_covers_the_path_and_query(case: str) -> None:
    source = configured(case)
    request = sent(source)
    moved = make_request(request.body, request.headers, path="/webhooks/other", query_string="a=1")
    with pytest.raises(Unauthorized, match="signature mismatch"):
        source.verify(moved, NOW)
    requeried = make_request(request.body, request.headers, path=PATH, query_string="a=2")
    with pytest.raises(Unauthorized, match="signature mismatch"):
        source.verify(requeried, NOW)


def test_a_query_token_is_appended_to_the_query_and_not_sent_as_a_header() -> None:
    source = configured("generic-token-query")
    assert isinstance(source, GenericSource)
    assert source.signed_query("a=1") == f"a=1&token={GENERIC_NEW}"
    assert source.signed_query() == f"token={GENERIC_NEW}"
    assert source.sign(BODY, now=NOW, path=PATH) == {"Content-Type": "application/json"}
    with pytest.raises(Unauthorized, match="missing token query parameter"):
        source.verify(make_request(BODY, source.sign(BODY, now=NOW, path=PATH), path=PATH), NOW)


def test_sources_other_than_query_token_leave_the_query_alone() -> None:
    source = configured("generic-hmac-hex")
    assert isinstance(source, GenericSource)
    assert source.signed_query("a=1") == "a=1"


def test_a_standard_webhooks_id_is_stable_per_body_and_differs_between_bodies() -> None:
    source = configured("standard-webhooks")
    first = source.sign(BODY, now=NOW, path=PATH)["webhook-id"]
    assert source.sign(BODY, now=NOW + 60, path=PATH)["webhook-id"] == first
    assert source.sign(BODY + b" ", now=NOW, path=PATH)["webhook-id"] != first


def test_a_source_without_a_signer_says_its_preset_cannot_sign() -> None:
    class Unsigned(Source):
        preset: ClassVar[str] = "paddle-test"
        settings_model: ClassVar[type[SourceSettings]] = SourceSettings

        def verify(self, request: WebhookRequest, now: float) -> None:
            return None

        def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
            return []

    source = Unsigned("paddle", SourceSettings(), public_url=PUBLIC_URL)
    with pytest.raises(NotImplementedError, match="preset paddle-test cannot sign requests"):
        source.sign(BODY, now=NOW, path=PATH)


# Independent oracles: the providers' own libraries.


def test_stripe_signature_equals_what_stripes_library_computes() -> None:
    headers = configured("stripe").sign(BODY, now=NOW, path=PATH)
    t = int(NOW)
    expected = stripe.WebhookSignature._compute_signature(f"{t}.{BODY.decode()}", STRIPE_NEW)
    assert headers["Stripe-Signature"] == f"t={t},v1={expected}"


def test_stripes_library_verifies_our_stripe_signature_header() -> None:
    headers = configured("stripe").sign(BODY, now=NOW, path=PATH)
    header = headers["Stripe-Signature"]
    assert stripe.WebhookSignature.verify_header(BODY.decode(), header, STRIPE_NEW)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.WebhookSignature.verify_header(BODY.decode(), header, STRIPE_OLD)


def test_standard_webhooks_signature_equals_what_the_reference_library_computes() -> None:
    headers = configured("standard-webhooks").sign(BODY, now=NOW, path=PATH)
    expected = Webhook(SW_NEW).sign(
        headers["webhook-id"], datetime.fromtimestamp(NOW, tz=UTC), BODY.decode()
    )
    assert headers["webhook-signature"] == expected
    assert headers["webhook-timestamp"] == str(int(NOW))


def test_the_reference_standard_webhooks_library_verifies_our_headers() -> None:
    # The library reads the wall clock for freshness, so this one signs at the real now.
    headers = configured("standard-webhooks").sign(BODY, now=time.time(), path=PATH)
    assert Webhook(SW_NEW).verify(BODY, headers) == {"id": "evt_1", "name": "Zoë", "amount": 1999}


def test_hubspot_signature_equals_what_hubspots_library_computes() -> None:
    query = "a=1&b=%2F"
    headers = configured("hubspot").sign(BODY, now=NOW, path=PATH, query_string=query)
    timestamp = headers["X-HubSpot-Request-Timestamp"]
    assert timestamp == str(int(NOW * 1000))
    expected = Signature.get_signature(
        HUBSPOT_NEW,
        BODY.decode(),
        "v3",
        http_uri=f"{PUBLIC_URL}{PATH}?a=1&b=/",  # HubSpot's guide decodes %2F before signing
        http_method="POST",
        timestamp=timestamp,
    )
    assert headers["X-HubSpot-Signature-v3"] == expected
