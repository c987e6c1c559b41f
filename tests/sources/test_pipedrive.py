"""Pipedrive: basic auth, and the ids and times of v1 and v2 webhooks."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from bridge.errors import BadRequest
from bridge.sources.pipedrive import PipedriveSource

from .conftest import CONFIG_FILE, build_one, config_errors, make_request, refused, rejected, sample

USERNAME = "voxys"
PASSWORD = "pd-9a7c:e3f1-b2d4"  # RFC 7617: a password may contain colons
NOW = 1_724_419_300.0
V1 = sample("pipedrive", "v1_updated_deal.json")
V2 = sample("pipedrive", "v2_change_deal.json")


def basic(username: str = USERNAME, password: str = PASSWORD, scheme: str = "Basic") -> str:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return f"{scheme} {token}"


def source() -> PipedriveSource:
    built = build_one(
        {"preset": "pipedrive", "basic_auth": {"username": USERNAME, "password": PASSWORD}}
    )
    assert isinstance(built, PipedriveSource)
    return built


def test_the_configured_credentials_are_accepted() -> None:
    source().verify(make_request(V2, {"Authorization": basic()}), NOW)


def test_the_scheme_name_is_case_insensitive() -> None:
    source().verify(make_request(V2, {"Authorization": basic(scheme="basic")}), NOW)


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (USERNAME, "wrong"),
        ("intruder", PASSWORD),
        (USERNAME, PASSWORD + "x"),
        (USERNAME, PASSWORD[:-1]),
        (USERNAME.upper(), PASSWORD),
        ("", ""),
    ],
)
def test_other_credentials_are_refused(username: str, password: str) -> None:
    request = make_request(V2, {"Authorization": basic(username, password)})
    assert refused(source(), request, NOW, PASSWORD) == "invalid credentials"


def test_a_request_without_credentials_is_refused() -> None:
    assert refused(source(), make_request(V2), NOW) == "missing Authorization header"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("Bearer abc.def", "Authorization header is not Basic"),
        (basic(scheme="Digest"), "Authorization header is not Basic"),
        ("Basic", "malformed Authorization header"),
        ("Basic %%%not-base64%%%", "malformed Authorization header"),
        ("Basic " + base64.b64encode(b"no-colon-here").decode(), "malformed Authorization header"),
        ("Basic " + base64.b64encode(b"\xff\xfe:\x00").decode(), "invalid credentials"),
    ],
)
def test_a_garbled_authorization_header_is_refused(header: str, reason: str) -> None:
    request = make_request(V2, {"Authorization": header})
    assert refused(source(), request, NOW, PASSWORD) == reason


def test_a_v2_event_is_identified_by_meta_id_and_timed_by_meta_timestamp() -> None:
    [event] = source().parse(make_request(V2, {"Authorization": basic()}), received_at=NOW)
    assert event.event_id == "5bd5e1a4-3a5f-4d2f-9f6e-2c8a6a0e7d11"
    assert event.occurred_at == pytest.approx(1724419200.512)
    assert event.payload == json.loads(V2)
    assert "authorization" not in event.headers


def test_a_v2_event_with_numeric_meta_fields_is_read() -> None:
    payload = json.loads(V2)
    payload["meta"].update(id=1, timestamp=1727447128)
    [event] = source().split(make_request(json.dumps(payload).encode()), received_at=NOW)
    assert (event.event_id, event.occurred_at) == ("1", 1727447128.0)


def test_a_v1_event_is_identified_by_a_hash_of_its_payload() -> None:
    [event] = source().parse(make_request(V1), received_at=NOW)
    payload = json.loads(V1)
    del payload["retry"]
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    assert event.event_id == hashlib.sha256(canonical).hexdigest()
    assert event.occurred_at == 1724419200.0


def test_a_v1_redelivery_gets_the_same_id_though_its_retry_counter_rose() -> None:
    payload = json.loads(V1)
    payload["retry"] = 3
    again = json.dumps(payload, indent=2).encode()  # and serialised differently
    [first] = source().parse(make_request(V1), received_at=NOW)
    [second] = source().parse(make_request(again), received_at=NOW + 60)
    assert first.event_id == second.event_id


def test_two_different_v1_changes_get_different_ids() -> None:
    payload = json.loads(V1)
    payload["current"]["status"] = "lost"
    [first] = source().parse(make_request(V1), received_at=NOW)
    [second] = source().parse(make_request(json.dumps(payload).encode()), received_at=NOW)
    assert first.event_id != second.event_id


def test_a_v1_event_without_a_time_is_timed_at_receipt() -> None:
    body = json.dumps({"event": "deleted.person", "previous": {"id": 5}}).encode()
    [event] = source().parse(make_request(body), received_at=NOW)
    assert event.occurred_at == NOW


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ([1, 2], "Pipedrive webhook is not a JSON object"),
        ({"meta": {"version": "2.0"}, "data": {}}, "Pipedrive v2 event without meta.id"),
        ({"meta": {"version": "2.0", "id": ""}}, "Pipedrive v2 event without meta.id"),
        ({"hello": "world"}, "not a Pipedrive webhook (neither v2 meta.version nor v1 fields)"),
        ({"meta": "2.0"}, "not a Pipedrive webhook (neither v2 meta.version nor v1 fields)"),
    ],
)
def test_a_body_that_is_not_a_pipedrive_webhook_is_a_bad_request(
    payload: object, reason: str
) -> None:
    request = make_request(json.dumps(payload).encode())
    assert rejected(BadRequest, source(), request) == reason


def test_the_issue_yaml_shape_builds_and_its_repr_hides_the_password() -> None:
    yaml_text = f"{{preset: pipedrive, basic_auth: {{username: voxys, password: '{PASSWORD}'}}}}"
    built = build_one(yaml_text)
    assert isinstance(built, PipedriveSource)
    assert PASSWORD not in repr(built.settings)


def test_unknown_keys_and_missing_credentials_are_reported_with_file_and_key() -> None:
    messages = config_errors(
        """
        a: {preset: pipedrive}
        b: {preset: pipedrive, basic_auth: {username: voxys}, secret: x}
        c: {preset: pipedrive, basic_auth: {user: voxys, password: p}}
        """
    )
    assert f"{CONFIG_FILE}: key 'sources.a.basic_auth': required" in messages
    assert f"{CONFIG_FILE}: key 'sources.b.basic_auth.password': required" in messages
    assert any("key 'sources.b.secret'" in m and "unknown key" in m for m in messages)
    assert any("key 'sources.c.basic_auth.user'" in m and "unknown key" in m for m in messages)
    assert f"{CONFIG_FILE}: key 'sources.c.basic_auth.username': required" in messages
