"""Generic sources (`verify:` without a preset): hmac, basic, token, none; templated ids."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import replace
from typing import Any

import pytest
import yaml

from bridge.config import LocatedRule, RuleConfig
from bridge.errors import BadRequest
from bridge.rules import compile_rules
from bridge.sources import build_sources
from bridge.sources.base import Source
from bridge.sources.generic import GenericSource
from bridge.sources.hubspot import HubSpotSource
from bridge.sources.pipedrive import PipedriveSource
from bridge.sources.standard_webhooks import StandardWebhooksSource
from bridge.sources.stripe import StripeSource

from .conftest import (
    CONFIG_FILE,
    PUBLIC_URL,
    build_one,
    config_errors,
    make_request,
    refused,
    rejected,
)

SECRET = "gh-hook-secret-5c1a9e"
OLD_SECRET = "gh-hook-secret-old-77d2"
NOW = 1_724_419_200.0
BODY = json.dumps({"id": "ord_991", "created_at": "2024-08-23T13:20:00Z", "lead": 42}).encode()
HMAC_HEX = {
    "type": "hmac",
    "header": "X-Signature",
    "algorithm": "sha256",
    "encoding": "hex",
    "prefix": "sha256=",
}


def generic(verify: dict[str, Any], **extra: Any) -> GenericSource:
    built = build_one({"verify": verify, **extra})
    assert isinstance(built, GenericSource)
    return built


def mac(message: bytes, secret: str = SECRET, algorithm: str = "sha256") -> bytes:
    """The HMAC a sender computes, with Python's hmac module as the oracle."""
    return hmac.new(secret.encode(), message, getattr(hashlib, algorithm)).digest()


def hex_signed(body: bytes = BODY, secret: str = SECRET) -> dict[str, str]:
    return {"X-Signature": "sha256=" + mac(body, secret).hex()}


# --- hmac ---------------------------------------------------------------------------


def test_an_hmac_hex_signature_with_a_prefix_is_accepted() -> None:
    generic(HMAC_HEX, secret=SECRET).verify(make_request(BODY, hex_signed()), NOW)


def test_an_uppercase_hex_signature_is_the_same_signature() -> None:
    header = "sha256=" + mac(BODY).hex().upper()
    generic(HMAC_HEX, secret=SECRET).verify(make_request(BODY, {"X-Signature": header}), NOW)


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
def test_base64_signatures_of_each_algorithm_are_accepted(algorithm: str) -> None:
    verify = {"type": "hmac", "header": "X-Sig", "algorithm": algorithm, "encoding": "base64"}
    header = base64.b64encode(mac(BODY, algorithm=algorithm)).decode()
    generic(verify, secret=SECRET).verify(make_request(BODY, {"X-Sig": header}), NOW)


def test_an_hmac_signature_with_another_secret_is_refused() -> None:
    request = make_request(BODY, hex_signed(secret="not-the-secret"))
    assert refused(generic(HMAC_HEX, secret=SECRET), request, NOW, SECRET) == "signature mismatch"


def test_an_hmac_signed_tampered_body_is_refused() -> None:
    request = make_request(BODY.replace(b"42", b"43"), hex_signed())
    assert refused(generic(HMAC_HEX, secret=SECRET), request, NOW, SECRET) == "signature mismatch"


def test_both_secrets_are_accepted_while_rotating() -> None:
    source = generic(HMAC_HEX, secret=[OLD_SECRET, SECRET])
    source.verify(make_request(BODY, hex_signed(secret=OLD_SECRET)), NOW)
    source.verify(make_request(BODY, hex_signed(secret=SECRET)), NOW)


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({}, "missing X-Signature header"),
        ({"X-Signature": "  "}, "missing X-Signature header"),
        ({"X-Signature": "sha1=abcd"}, "malformed X-Signature header"),
        ({"X-Signature": "sha256=xyz"}, "malformed X-Signature header"),
        ({"X-Signature": "sha256=abcd"}, "signature mismatch"),
    ],
)
def test_a_missing_or_garbled_hmac_header_is_refused(headers: dict[str, str], reason: str) -> None:
    request = make_request(BODY, headers)
    assert refused(generic(HMAC_HEX, secret=SECRET), request, NOW, SECRET) == reason


TIMED = {
    "type": "hmac",
    "header": "X-Signature",
    "timestamp_header": "X-Timestamp",
    "tolerance": "5m",
    "encoding": "base64",
}


def timed(ts: str, body: bytes = BODY) -> dict[str, str]:
    """Signed over "{timestamp}.{body}", the default when a timestamp header is set."""
    message = f"{ts}.".encode() + body
    return {"X-Signature": base64.b64encode(mac(message)).decode(), "X-Timestamp": ts}


def test_a_timestamped_hmac_signs_timestamp_dot_body_by_default() -> None:
    source = generic(TIMED, secret=SECRET)
    source.verify(make_request(BODY, timed(str(int(NOW) - 100))), NOW)
    source.verify(make_request(BODY, timed(str(int(NOW * 1000) + 100_000))), NOW)  # ms


@pytest.mark.parametrize("drift", [301, -301])
def test_a_timestamped_hmac_outside_its_tolerance_is_refused(drift: int) -> None:
    request = make_request(BODY, timed(str(int(NOW) + drift)))
    assert refused(generic(TIMED, secret=SECRET), request, NOW) == "timestamp outside tolerance"


def test_a_timestamped_hmac_without_or_with_a_garbled_timestamp_is_refused() -> None:
    source = generic(TIMED, secret=SECRET)
    headers = timed(str(int(NOW)))
    del headers["X-Timestamp"]
    assert refused(source, make_request(BODY, headers), NOW) == "missing X-Timestamp header"
    garbled = {**timed("soon"), "X-Timestamp": "soon"}
    assert refused(source, make_request(BODY, garbled), NOW) == "malformed X-Timestamp header"


def test_the_signed_string_follows_its_template() -> None:
    verify = {**TIMED, "signed": "v0:{timestamp}:{method}:{url}:{body}"}
    ts = str(int(NOW))
    path, query = "/webhooks/custom", "a=1&b=%2F"
    message = f"v0:{ts}:POST:{PUBLIC_URL}{path}?{query}:".encode() + BODY
    headers = {"X-Signature": base64.b64encode(mac(message)).decode(), "X-Timestamp": ts}
    request = make_request(BODY, headers, path=path, query_string=query)
    generic(verify, secret=SECRET).verify(request, NOW)
    moved = make_request(BODY, headers, path="/webhooks/other", query_string=query)
    assert refused(generic(verify, secret=SECRET), moved, NOW) == "signature mismatch"


# --- basic, token, none -------------------------------------------------------------

BASIC = {"type": "basic", "username": "hooks", "password": "pa55:word:2024"}


def basic(username: str, password: str) -> dict[str, str]:
    return {
        "Authorization": "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
    }


def test_basic_auth_accepts_the_configured_credentials_only() -> None:
    source = generic(BASIC)
    source.verify(make_request(BODY, basic("hooks", "pa55:word:2024")), NOW)
    wrong = make_request(BODY, basic("hooks", "pa55:wrd:2024"))
    assert refused(source, wrong, NOW, "pa55:word:2024") == "invalid credentials"
    assert refused(source, make_request(BODY), NOW) == "missing Authorization header"


def test_a_header_token_is_compared_after_its_prefix() -> None:
    source = generic({"type": "token", "header": "X-Auth-Key", "prefix": "Bearer "}, secret=SECRET)
    source.verify(make_request(BODY, {"X-Auth-Key": f"Bearer {SECRET}"}), NOW)
    wrong = make_request(BODY, {"X-Auth-Key": "Bearer guess"})
    assert refused(source, wrong, NOW, SECRET) == "invalid token"
    no_prefix = make_request(BODY, {"X-Auth-Key": SECRET})
    assert refused(source, no_prefix, NOW, SECRET) == "malformed X-Auth-Key header"
    assert refused(source, make_request(BODY), NOW) == "missing X-Auth-Key header"


def test_a_query_token_is_accepted_and_either_rotated_value_works() -> None:
    source = generic({"type": "token", "query": "key"}, secret=[OLD_SECRET, SECRET])
    source.verify(make_request(BODY, query_string=f"x=1&key={SECRET}"), NOW)
    source.verify(make_request(BODY, query_string=f"key={OLD_SECRET}"), NOW)
    wrong = make_request(BODY, query_string="key=guess")
    assert refused(source, wrong, NOW, SECRET, OLD_SECRET) == "invalid token"
    missing = make_request(BODY, query_string="x=1")
    assert refused(source, missing, NOW) == "missing key query parameter"


def test_an_unsigned_source_is_refused_unless_allowed_and_then_warned_about() -> None:
    messages = config_errors({"open": {"verify": {"type": "none"}}})
    assert messages == [
        f"{CONFIG_FILE}: key 'sources.open.verify.type': verify type none accepts requests "
        "from anyone; set allow_unsigned: true to allow it"
    ]
    source = generic({"type": "none"}, allow_unsigned=True)
    source.verify(make_request(BODY), NOW)
    assert source.startup_warnings() == ["source 'test' accepts unsigned requests from anyone"]
    assert generic(HMAC_HEX, secret=SECRET).startup_warnings() == []


# --- parse --------------------------------------------------------------------------


def test_event_id_and_occurred_at_come_from_their_templates() -> None:
    source = generic(
        HMAC_HEX, secret=SECRET, event_id="{{ event.id }}", occurred_at="{{ event.created_at }}"
    )
    [event] = source.parse(make_request(BODY, hex_signed()), received_at=NOW + 3)
    assert (event.event_id, event.occurred_at, event.received_at) == ("ord_991", NOW, NOW + 3)
    assert event.payload == json.loads(BODY)


def test_without_an_event_id_template_the_id_is_the_body_hash() -> None:
    [event] = generic(HMAC_HEX, secret=SECRET).parse(make_request(BODY), received_at=NOW)
    assert event.event_id == hashlib.sha256(BODY).hexdigest()
    assert event.occurred_at == NOW


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1724419200, NOW),
        (1724419200500, NOW + 0.5),
        ("1724419200", NOW),
        ("2024-08-23T15:20:00+02:00", NOW),
        ("2024-08-23 13:20:00", NOW),
        ("next tuesday", 5.0),
        (None, 5.0),
        (-1, 5.0),
    ],
)
def test_occurred_at_accepts_epoch_seconds_milliseconds_or_iso_8601(
    value: object, expected: float
) -> None:
    source = generic(BASIC, occurred_at="{{ event.t }}")
    [event] = source.split(make_request(json.dumps({"t": value}).encode()), received_at=5.0)
    assert event.occurred_at == expected


def test_templates_can_read_headers_but_not_the_credential_header() -> None:
    verify = {"type": "token", "header": "X-Auth-Key"}
    source = generic(verify, secret=SECRET, event_id="{{ headers['x-delivery'] }}")
    headers = {"X-Auth-Key": SECRET, "X-Delivery": "dlv-7", "Authorization": "Bearer z"}
    [event] = source.parse(make_request(BODY, headers), received_at=NOW)
    assert event.event_id == "dlv-7"
    assert dict(event.headers) == {"x-delivery": "dlv-7"}


@pytest.mark.parametrize("key", ["event_id", "occurred_at"])
def test_an_hmac_source_refuses_an_id_or_time_read_from_unsigned_headers(key: str) -> None:
    errors = config_errors(
        {"custom": {"verify": HMAC_HEX, "secret": SECRET, key: "{{ headers['x-delivery'] }}"}}
    )
    [message] = errors
    assert f"key 'sources.custom.{key}': reads headers" in message
    assert "which an hmac signature does not cover" in message


def test_a_form_encoded_body_is_an_event_too() -> None:
    source = generic(BASIC, event_id="{{ event.id }}")
    request = make_request(b"id=f-1&status=won", content_type="application/x-www-form-urlencoded")
    [event] = source.parse(request, received_at=NOW)
    assert (event.event_id, event.payload) == ("f-1", {"id": "f-1", "status": "won"})


@pytest.mark.parametrize(
    ("template", "reason"),
    [
        ("{{ event.missing }}", "event_id template rendered empty"),
        ("{{ event.__class__.__mro__ }}", "event_id template failed on this event"),
        ("{{ 1 // 0 }}", "event_id template failed on this event"),
        ("{{ event.id + 1 }}", "event_id template failed on this event"),
    ],
)
def test_an_event_id_template_that_fails_on_an_event_is_a_bad_request(
    template: str, reason: str
) -> None:
    source = generic(BASIC, event_id=template)
    assert rejected(BadRequest, source, make_request(BODY)) == reason


@pytest.mark.parametrize(
    ("template", "refusal"),
    [
        ("{{ event.lead ** 100000000 }}", "power too large"),
        ("{{ event.id * 1000000000 }}", "repetition too large"),
    ],
)
@pytest.mark.parametrize("key", ["event_id", "occurred_at"])
def test_a_huge_power_or_repetition_is_refused_by_the_same_bound_as_in_a_rule(
    key: str, template: str, refusal: str
) -> None:
    # Unbounded, the power takes seconds and then fails on its own size, and the
    # repetition asks for gigabytes; the bound refuses both before they start.
    source = generic(BASIC, **{key: template})
    with pytest.raises(BadRequest) as info:
        source.parse(make_request(BODY), NOW)
    assert info.value.reason == f"{key} template failed on this event"
    assert isinstance(info.value.__cause__, OverflowError)
    assert str(info.value.__cause__) == refusal
    # A rule with the same template meets the same bound.
    rule = RuleConfig.model_validate(
        {"name": "r", "source": "custom", "lead_id": template, "status": "won"}
    )
    rules = compile_rules(
        [LocatedRule(rule=rule, file="rules.yaml")],
        lookups={},
        sources=["custom"],
        default_account_id=1,
    )
    [event] = generic(BASIC).parse(make_request(BODY), NOW)
    [unmapped] = rules.evaluate(replace(event, source="custom")).unmapped
    assert unmapped.reason == f"lead_id failed: OverflowError: {refusal}"


# --- configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "key", "words"),
    [
        ({"verify": HMAC_HEX}, "sources.custom.secret", "needs a secret"),
        ({"verify": {"type": "token", "header": "X-T"}}, "sources.custom.secret", "needs a secret"),
        ({"verify": BASIC, "secret": SECRET}, "sources.custom.secret", "does not use a secret"),
        (
            {"verify": {**HMAC_HEX, "signed": "{body}.{nonce}"}, "secret": SECRET},
            "sources.custom.verify.signed",
            "unknown field {nonce}",
        ),
        (
            {"verify": {**HMAC_HEX, "signed": "{timestamp}.{body}"}, "secret": SECRET},
            "sources.custom.verify.signed",
            "timestamp_header",
        ),
        (
            {"verify": {**HMAC_HEX, "signed": "{body"}, "secret": SECRET},
            "sources.custom.verify.signed",
            "'}'",
        ),
        (
            {"verify": HMAC_HEX, "secret": SECRET, "event_id": "{{ event.id "},
            "sources.custom.event_id",
            "syntax",
        ),
        (
            {"verify": HMAC_HEX, "secret": SECRET, "occurred_at": "{% if %}"},
            "sources.custom.occurred_at",
            "syntax",
        ),
        (
            {"verify": {**HMAC_HEX, "algorithm": "md5"}, "secret": SECRET},
            "sources.custom.verify.algorithm",
            "sha1",
        ),
        (
            {"verify": {**HMAC_HEX, "encoding": "base32"}, "secret": SECRET},
            "sources.custom.verify.encoding",
            "hex",
        ),
        (
            {"verify": {"type": "token", "header": "A", "query": "b"}, "secret": SECRET},
            "sources.custom.verify",
            "exactly one",
        ),
        (
            {"verify": {"type": "token"}, "secret": SECRET},
            "sources.custom.verify",
            "exactly one",
        ),
        ({"verify": {"type": "jwt"}}, "sources.custom.verify", "jwt"),
        (
            {"verify": {"type": "basic", "username": "u"}},
            "sources.custom.verify.password",
            "required",
        ),
        (
            {"verify": HMAC_HEX, "secret": SECRET, "event": "{{ event.id }}"},
            "sources.custom.event",
            "unknown key",
        ),
        ({"secret": SECRET}, "sources.custom.verify", "required"),
    ],
)
def test_config_mistakes_name_the_file_and_the_key(
    entry: dict[str, Any], key: str, words: str
) -> None:
    messages = config_errors({"custom": entry})
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{CONFIG_FILE}: key '{key}': ")
    assert words in messages[0]


ISSUE_SOURCES = """
stripe:    {preset: stripe, secret: whsec_test_issue_8d2f4a}
hubspot:   {preset: hubspot, secret: hubspot-client-secret}
pipedrive: {preset: pipedrive, basic_auth: {username: voxys, password: pd-password-1}}
billing:   {preset: standard-webhooks, secret: whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0}
custom:
  verify: {type: hmac, header: X-Signature, algorithm: sha256, encoding: hex, prefix: "sha256="}
  secret: custom-secret-9a7b
  event_id: "{{ event.id }}"
  occurred_at: "{{ event.created_at }}"
"""


def test_the_issue_sources_block_builds_every_preset() -> None:
    built = build_sources(yaml.safe_load(ISSUE_SOURCES), public_url=PUBLIC_URL, file=CONFIG_FILE)
    kinds: dict[str, type[Source]] = {k: type(v) for k, v in built.items()}
    assert kinds == {
        "stripe": StripeSource,
        "hubspot": HubSpotSource,
        "pipedrive": PipedriveSource,
        "billing": StandardWebhooksSource,
        "custom": GenericSource,
    }
    for secret in (
        "whsec_test_issue_8d2f4a",
        "hubspot-client-secret",
        "pd-password-1",
        "custom-secret-9a7b",
    ):
        assert all(secret not in repr(s.settings) for s in built.values())


def test_every_mistake_in_the_sources_block_is_reported_at_once() -> None:
    messages = config_errors(
        """
        stripe: {preset: stripe}
        hubspot: {preset: hubspot, secret: s, tolerance: soon}
        paddle2: {preset: padle, secret: s}
        pipedrive: {preset: pipedrive, basic_auth: {username: u, password: "", colour: red}}
        custom: {verify: {type: none}}
        """
    )
    assert [m.split(": ")[1] for m in messages] == [
        "key 'sources.stripe.secret'",
        "key 'sources.hubspot.secret'",
        "key 'sources.hubspot.tolerance'",
        "key 'sources.paddle2.preset'",
        "key 'sources.pipedrive.basic_auth.password'",
        "key 'sources.pipedrive.basic_auth.colour'",
        "key 'sources.custom.verify.type'",
    ]
