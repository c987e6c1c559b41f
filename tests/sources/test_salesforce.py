"""Salesforce Outbound Messages: organization and token checks, safe XML, SOAP ack and faults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from defusedxml.ElementTree import fromstring

from bridge.app import create_app
from bridge.bundle import load_bundle
from bridge.errors import BadRequest, UnsupportedMediaType
from bridge.models import Outcome
from bridge.runtime import RUNTIME, Runtime
from bridge.sources.base import WebhookRequest
from bridge.sources.salesforce import ACK, SalesforceSource
from bridge.store import open_store

from .conftest import CONFIG_FILE, build_one, config_errors, make_request, refused, rejected, sample

ORG_18 = "00D000000000001EAA"
ORG_15 = ORG_18[:15]
TOKEN = "sf-url-token-6e1f0c9b2a7d"
T = 1_724_419_200.0
BODY = sample("salesforce", "opportunity-notifications.xml")
SESSION_ID = "00D000000000001!AQ0AQLiveSessionCredentialDoNotLeak.7Hq2Vx9Lm4Rt8Wz"
ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = ROOT / "examples" / "salesforce"
SOAP = "{http://schemas.xmlsoap.org/soap/envelope/}"
OUTBOUND = "{http://soap.sforce.com/2005/09/outbound}"
XML = "text/xml"

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body>
<notifications xmlns="http://soap.sforce.com/2005/09/outbound">
<OrganizationId>00D000000000001EAA</OrganizationId><Notification><Id>&lol3;</Id>
<sObject/></Notification></notifications></soapenv:Body></soapenv:Envelope>"""
EXTERNAL_ENTITY = BODY.replace(
    b"<soapenv:Envelope",
    b'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n<soapenv:Envelope',
).replace(b"<sf:Name>Acme - 40 seats</sf:Name>", b"<sf:Name>&xxe;</sf:Name>")


def source(orgs: list[str] | None = None, token: str | None = TOKEN) -> SalesforceSource:
    entry: dict[str, object] = {"preset": "salesforce", "organization_ids": orgs or [ORG_18]}
    if token is not None:
        entry["token"] = token
    built = build_one(entry)
    assert isinstance(built, SalesforceSource)
    return built


def posted(body: bytes = BODY, query: str = f"token={TOKEN}", ctype: str = XML) -> WebhookRequest:
    headers = {"Content-Type": f"{ctype}; charset=utf-8", "SOAPAction": '""'}
    return make_request(body, headers, query_string=query, content_type=ctype)


def with_org(org: str) -> bytes:
    return BODY.replace(ORG_18.encode(), org.encode())


# Verification


def test_a_message_from_a_configured_organization_with_the_token_is_accepted() -> None:
    source().verify(posted(), T)


@pytest.mark.parametrize("configured", [ORG_18, ORG_15])
def test_a_15_or_18_character_organization_id_matches_either_form_sent(configured: str) -> None:
    source([configured]).verify(posted(with_org(ORG_18)), T)
    source([configured]).verify(posted(with_org(ORG_15)), T)


def test_any_of_several_configured_organizations_is_accepted() -> None:
    source(["00D5g000004SANDBOX", ORG_18]).verify(posted(), T)


def test_a_message_from_another_organization_is_refused() -> None:
    request = posted(with_org("00D000000000002EAA"))
    assert refused(source(), request, T, TOKEN) == "organization not allowed"


def test_organization_ids_are_compared_case_sensitively() -> None:
    # 15-character ids are case-sensitive: 00d... is a different organization.
    request = posted(with_org(ORG_18.lower()))
    assert refused(source(), request, T, TOKEN) == "organization not allowed"


def test_a_message_without_the_configured_token_is_refused() -> None:
    assert refused(source(), posted(query=""), T, TOKEN) == "missing token query parameter"


def test_a_message_with_a_wrong_token_is_refused() -> None:
    request = posted(query="token=sf-url-token-guessed-0000")
    assert refused(source(), request, T, TOKEN) == "invalid token"


def test_the_token_is_checked_before_the_body_is_parsed() -> None:
    # An outsider without the token learns nothing about our XML handling.
    assert refused(source(), posted(b"<not-xml", query=""), T) == "missing token query parameter"


def test_without_a_configured_token_the_query_is_not_checked_but_a_warning_is_given() -> None:
    open_source = source(token=None)
    open_source.verify(posted(query=""), T)
    assert "does not sign" in open_source.startup_warnings()[0]
    assert source().startup_warnings() == []


def test_a_sender_adds_the_token_to_the_query() -> None:
    assert source().signed_query("a=1") == f"a=1&token={TOKEN}"
    assert source(token=None).signed_query("a=1") == "a=1"
    headers = source().sign(BODY, now=T, path="/webhooks/test")
    assert TOKEN not in json.dumps(headers)
    request = make_request(BODY, headers, query_string=source().signed_query(), content_type=XML)
    source().verify(request, T)


# Parsing


def test_each_notification_is_one_event_with_the_sobject_fields_by_name() -> None:
    won, lost = source().parse(posted(), received_at=T)
    assert won.event_id == "04l5g00000LqT1mAAF"
    assert won.payload == {
        "Id": "04l5g00000LqT1mAAF",
        "OrganizationId": ORG_18,
        "ActionId": "04k5g000000kF3aAAE",
        "sObject": {
            "type": "Opportunity",
            "Id": "0065g00000XyZ12AAB",
            "Amount": "12000.0",
            "IsClosed": "true",
            "IsWon": "true",
            "LastModifiedDate": "2024-08-23T13:20:00.000Z",
            "Name": "Acme - 40 seats",
            "StageName": "Closed Won",
            "Voxys_Lead_Id__c": "4711",
        },
    }
    assert (lost.event_id, lost.payload["sObject"]["IsWon"]) == ("04l5g00000LqT1nAAF", "false")
    assert lost.payload["sObject"]["Name"] == "Globex & Co - pilot"


def test_a_nil_field_is_null() -> None:
    _, lost = source().parse(posted(), received_at=T)
    assert lost.payload["sObject"]["Amount"] is None


def test_the_session_id_is_in_no_event() -> None:
    # SessionId is a live API session of the sending user: a credential.
    for event in source().parse(posted(), received_at=T):
        assert SESSION_ID not in json.dumps(event.payload) + json.dumps(dict(event.headers))
        assert "SessionId" not in json.dumps(event.payload)


def test_occurred_at_is_the_last_modified_date_or_else_the_receive_time() -> None:
    won, lost = source().split(posted(), received_at=T)
    assert (won.occurred_at, lost.occurred_at) == (T, T + 90)
    body = BODY.replace(b"LastModifiedDate>", b"CloseDate>")
    assert {e.occurred_at for e in source().parse(posted(body), received_at=5.0)} == {5.0}


def notifications(count: int) -> bytes:
    start, end = BODY.index(b"   <Notification>"), BODY.index(b"  </notifications>")
    one = BODY[start : BODY.index(b"   <Notification>", start + 1)]
    many = b"".join(one.replace(b"LqT1mAAF", b"%08dF" % i) for i in range(count))
    return BODY[:start] + many + BODY[end:]


def test_a_full_message_of_100_notifications_is_100_events() -> None:
    events = source().parse(posted(notifications(100)), received_at=T)
    assert len({e.event_id for e in events}) == 100


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty body"),
        (b"<soapenv:Envelope", "malformed XML"),
        (b"<a/>", "not a Salesforce outbound message"),
        (BODY.replace(b"soapenv:Body", b"soapenv:Header"), "not a Salesforce outbound message"),
        (
            BODY.replace(b"http://soap.sforce.com/2005/09/outbound", b"urn:other"),
            "not a Salesforce outbound message",
        ),
        (BODY.replace(ORG_18.encode(), b""), "outbound message without OrganizationId"),
        (notifications(0), "outbound message without notifications"),
        (notifications(101), "more than 100 notifications"),
        (BODY.replace(b"<Id>04l5g00000LqT1mAAF</Id>", b""), "notification without Id or sObject"),
        (BILLION_LAUGHS, "XML with a DTD or entities is refused"),
        (EXTERNAL_ENTITY, "XML with a DTD or entities is refused"),
    ],
    ids=[
        "empty",
        "truncated",
        "other-xml",
        "no-body",
        "other-namespace",
        "no-org",
        "no-notification",
        "101-notifications",
        "no-notification-id",
        "billion-laughs",
        "external-entity",
    ],
)
def test_a_body_that_is_not_an_outbound_message_is_a_bad_request(body: bytes, reason: str) -> None:
    assert rejected(BadRequest, source(token=None), posted(body)) == reason
    with pytest.raises(BadRequest):
        source(token=None).verify(posted(body), T)


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", ""])
def test_a_body_of_another_media_type_is_refused(ctype: str) -> None:
    rejected(UnsupportedMediaType, source(), posted(ctype=ctype))


@pytest.mark.parametrize("ctype", ["text/xml", "application/xml", "application/soap+xml"])
def test_xml_media_types_are_read(ctype: str) -> None:
    assert len(source().parse(posted(ctype=ctype), received_at=T)) == 2


# Configuration


def test_the_issue_yaml_shape_builds_and_its_repr_hides_the_token() -> None:
    built = build_one(f'{{preset: salesforce, organization_ids: ["{ORG_18}"], token: {TOKEN}}}')
    assert isinstance(built, SalesforceSource)
    assert TOKEN not in repr(built.settings) + str(built.settings)


@pytest.mark.parametrize("orgs", [[], ["00D12345"], ["00D000000000001EAA!"], [ORG_18 + "X"]])
def test_a_bad_organization_id_list_is_a_config_error(orgs: list[str]) -> None:
    [message] = config_errors({"sf": {"preset": "salesforce", "organization_ids": orgs}})
    assert message.startswith(f"{CONFIG_FILE}: key 'sources.sf.organization_ids")


def test_organization_ids_are_required() -> None:
    [message] = config_errors({"sf": {"preset": "salesforce"}})
    assert "key 'sources.sf.organization_ids': required" in message


# Over HTTP: stored, then acknowledged


CONFIG = """
server: {{host: 127.0.0.1, port: 0, public_url: "http://127.0.0.1", max_body_bytes: 262144}}
storage: {{url: "sqlite:///{db}"}}
voxys: {{base_url: "http://127.0.0.1:9", api_token: "voxys-test-token", account_id: 7}}
logging: {{format: json, level: warning}}
sources:
  salesforce: {{preset: salesforce, organization_ids: ["{org}"], token: "{token}"}}
rules:
  - include: {rules}
"""


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client) -> TestClient:
    config = tmp_path / "bridge.yaml"
    config.write_text(
        CONFIG.format(
            db=tmp_path / "bridge.db", org=ORG_15, token=TOKEN, rules=EXAMPLES / "rules.yaml"
        )
    )
    bundle = load_bundle(config)
    runtime = Runtime(bundle=bundle, store=open_store(bundle.config.storage.url), clock=lambda: T)
    return await aiohttp_client(create_app(runtime))


async def post(
    client: TestClient, body: bytes, query: str = f"?token={TOKEN}"
) -> tuple[int, str, bytes]:
    resp = await client.post(
        f"/webhooks/salesforce{query}",
        data=body,
        headers={"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'},
    )
    return resp.status, resp.content_type, await resp.read()


def acked(answer: bytes) -> bool:
    root = fromstring(answer)
    ack = root.find(f"{SOAP}Body/{OUTBOUND}notificationsResponse/{OUTBOUND}Ack")
    return ack is not None and ack.text == "true"


def fault(answer: bytes) -> str:
    root = fromstring(answer)
    found = root.find(f"{SOAP}Body/{SOAP}Fault/faultstring")
    assert found is not None and found.text is not None
    return found.text


async def test_a_message_is_stored_then_answered_with_a_soap_ack(client: TestClient) -> None:
    status, ctype, answer = await post(client, BODY)
    assert (status, ctype, answer) == (200, "text/xml", ACK)
    assert acked(answer)
    stored = await client.app[RUNTIME].store.events_for_replay(since=0.0)
    assert sorted(s.event.event_id for s in stored) == ["04l5g00000LqT1mAAF", "04l5g00000LqT1nAAF"]
    assert SESSION_ID.encode() not in json.dumps([s.event.payload for s in stored]).encode()


async def test_a_redelivered_message_is_acked_again_and_stored_once(client: TestClient) -> None:
    for _ in range(2):
        status, _, answer = await post(client, BODY)
        assert (status, acked(answer)) == (200, True)
    assert len(await client.app[RUNTIME].store.events_for_replay(since=0.0)) == 2


@pytest.mark.parametrize(
    ("body", "query", "status", "reason"),
    [
        (BODY, "", 401, "missing token query parameter"),
        (with_org("00D000000000002EAA"), f"?token={TOKEN}", 401, "organization not allowed"),
        (BILLION_LAUGHS, f"?token={TOKEN}", 400, "XML with a DTD or entities is refused"),
        (EXTERNAL_ENTITY, f"?token={TOKEN}", 400, "XML with a DTD or entities is refused"),
    ],
    ids=["no-token", "other-org", "billion-laughs", "external-entity"],
)
async def test_a_refused_message_is_a_soap_fault_with_its_status_and_nothing_is_stored(
    client: TestClient, body: bytes, query: str, status: int, reason: str
) -> None:
    got_status, ctype, answer = await post(client, body, query)
    assert (got_status, ctype, fault(answer)) == (status, "text/xml", reason)
    assert not acked(answer)
    assert await client.app[RUNTIME].store.events_for_replay(since=0.0) == []


async def test_a_message_the_store_cannot_take_is_not_acked(client: TestClient) -> None:
    # Salesforce retries every message it gets no Ack for: nothing is lost.
    await client.app[RUNTIME].store.close()
    status, _, answer = await post(client, BODY)
    assert status == 503
    assert b"Ack" not in answer


@pytest.mark.parametrize(
    ("example", "lead", "status", "rule"),
    [
        ("opportunity-won.xml", 4711, "won", "salesforce-opportunity-won"),
        ("opportunity-lost.xml", 4712, "lost", "salesforce-opportunity-lost"),
    ],
)
async def test_the_shipped_examples_move_their_lead_by_the_shipped_rules(
    client: TestClient, example: str, lead: int, status: str, rule: str
) -> None:
    code, _, answer = await post(client, (EXAMPLES / example).read_bytes())
    assert (code, acked(answer)) == (200, True)
    [entry] = await client.app[RUNTIME].store.ledger(7, lead)
    assert (entry.status, entry.rule) == (status, rule)
    assert entry.notes is not None and "Salesforce opportunity 0065g00000XyZ" in entry.notes


async def test_an_opportunity_still_open_changes_no_lead(client: TestClient) -> None:
    code, _, answer = await post(client, (EXAMPLES / "opportunity-open-ignored.xml").read_bytes())
    assert (code, acked(answer)) == (200, True)
    [stored] = await client.app[RUNTIME].store.events_for_replay(since=0.0)
    assert stored.outcome is Outcome.IGNORED
    assert await client.app[RUNTIME].store.ledger(7, 4711) == []
