"""Chargebee: HTTP basic auth (RFC 7617) and the event's id and time."""

from __future__ import annotations

import base64
import json

import pytest

from bridge.errors import BadRequest
from bridge.sources.base import WebhookRequest
from bridge.sources.chargebee import ChargebeeSource

from .conftest import CONFIG_FILE, build_one, config_errors, make_request, refused, rejected, sample

USER, PASSWORD = "cb", "chargebee-password-7f3a9c"
T = 1_724_419_200
BODY = sample("chargebee", "subscription_cancelled.json")


def basic(user: str = USER, password: str = PASSWORD) -> str:
    """The Authorization header Chargebee sends, encoded here per RFC 7617."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def source(password: str = PASSWORD) -> ChargebeeSource:
    built = build_one(
        {"preset": "chargebee", "basic_auth": {"username": USER, "password": password}}
    )
    assert isinstance(built, ChargebeeSource)
    return built


def sent(body: bytes = BODY, authorization: str | None = None) -> WebhookRequest:
    return make_request(body, {"Authorization": authorization or basic()})


def test_a_request_with_the_configured_credentials_is_accepted() -> None:
    source().verify(sent(), now=T)


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        (basic(password="wrong-password-123"), "invalid credentials"),
        (basic(user="someone"), "invalid credentials"),
        (basic(password=PASSWORD + "x"), "invalid credentials"),
        ("Bearer " + PASSWORD, "Authorization header is not Basic"),
        ("Basic !!!", "malformed Authorization header"),
    ],
)
def test_other_credentials_are_refused(authorization: str, reason: str) -> None:
    assert refused(source(), sent(authorization=authorization), T, PASSWORD) == reason


def test_a_request_without_credentials_is_refused() -> None:
    assert refused(source(), make_request(BODY), T) == "missing Authorization header"


def test_what_the_source_signs_it_verifies() -> None:
    headers = source().sign(BODY, now=T, path="/webhooks/chargebee")
    assert headers == {"Content-Type": "application/json", "Authorization": basic()}
    source().verify(make_request(BODY, headers), T)


def test_the_event_id_and_time_come_from_the_event() -> None:
    [event] = source().parse(sent(), received_at=T + 5)
    payload = json.loads(BODY)
    assert event.event_id == payload["id"] == "ev_16BPgETyVrQbiGhA"
    assert event.occurred_at == payload["occurred_at"] == T
    assert (event.received_at, event.source, event.payload) == (T + 5, "test", payload)


def test_stored_headers_leave_out_the_credentials() -> None:
    [event] = source().parse(sent(), received_at=T)
    assert "authorization" not in event.headers


@pytest.mark.parametrize("occurred", [None, "soon", True])
def test_a_missing_or_garbage_occurred_at_falls_back_to_the_receive_time(occurred: object) -> None:
    body = json.dumps({"id": "ev_1", "occurred_at": occurred}).encode()
    [event] = source().parse(make_request(body), received_at=T)
    assert event.occurred_at == T


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[]", "Chargebee event is not a JSON object"),
        (b'{"event_type": "subscription_cancelled"}', "Chargebee event without id"),
        (b'{"id": ""}', "Chargebee event without id"),
        (b"{not json", "malformed JSON"),
        (b"", "empty body"),
    ],
)
def test_a_body_that_is_not_a_chargebee_event_is_a_bad_request(body: bytes, reason: str) -> None:
    assert rejected(BadRequest, source(), make_request(body)) == reason


def test_the_issue_yaml_shape_builds_and_hides_the_password() -> None:
    built = build_one(f"{{preset: chargebee, basic_auth: {{username: cb, password: {PASSWORD}}}}}")
    assert isinstance(built, ChargebeeSource)
    assert PASSWORD not in repr(built.settings)


def test_missing_credentials_are_reported_with_file_and_key() -> None:
    messages = config_errors("chargebee: {preset: chargebee}")
    assert messages == [f"{CONFIG_FILE}: key 'sources.chargebee.basic_auth': required"]
    messages = config_errors("chargebee: {preset: chargebee, basic_auth: {username: cb}}")
    assert messages == [f"{CONFIG_FILE}: key 'sources.chargebee.basic_auth.password': required"]
