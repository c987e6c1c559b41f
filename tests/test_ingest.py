"""POST /webhooks/{source}: every request is refused precisely or stored before its 2xx."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.bundle import load_bundle
from bridge.models import Outcome
from bridge.runtime import RUNTIME, Runtime
from bridge.store import open_store
from bridge.store.base import StoredEvent
from tests.conftest import PIPEDRIVE_PASSWORD, WriteConfig, stripe_event, stripe_headers


@pytest.fixture
async def client(write_config: WriteConfig, aiohttp_client, tmp_path: Path) -> TestClient:
    bundle = load_bundle(write_config(max_body=4096))
    runtime = Runtime(bundle=bundle, store=open_store(bundle.config.storage.url))
    return await aiohttp_client(create_app(runtime))


async def stored_events(client: TestClient) -> list[StoredEvent]:
    return await client.app[RUNTIME].store.events_for_replay(since=0.0)


async def test_a_signed_stripe_event_is_stored_and_answered_200(client: TestClient) -> None:
    body = stripe_event("evt_ok", lead_id=42)
    resp = await client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 200
    assert await resp.json() == {"ok": True, "events": 1, "duplicates": 0}
    [stored] = await stored_events(client)
    assert stored.event.event_id == "evt_ok"
    assert stored.outcome is Outcome.MATCHED
    [entry] = await client.app[RUNTIME].store.ledger(7, 42)
    assert (entry.status, entry.notes, entry.rule) == ("won", "Paid 1999", "stripe-paid")


async def test_a_redelivered_event_is_answered_200_and_stored_once(client: TestClient) -> None:
    body = stripe_event("evt_dup")
    for _ in range(3):
        resp = await client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
        assert resp.status == 200
    assert (await resp.json())["duplicates"] == 1
    assert len(await stored_events(client)) == 1


async def test_an_unknown_source_is_404(client: TestClient) -> None:
    resp = await client.post(
        "/webhooks/nope", data=b"{}", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 404


async def test_a_wrong_signature_is_401_and_stores_nothing(client: TestClient) -> None:
    body = stripe_event()
    resp = await client.post(
        "/webhooks/stripe", data=body, headers=stripe_headers(body, secret="whsec_other")
    )
    assert resp.status == 401
    assert await stored_events(client) == []


async def test_a_body_over_the_limit_is_413(client: TestClient) -> None:
    body = b'{"pad": "' + b"x" * 5000 + b'"}'
    resp = await client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 413


async def test_a_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1000

    resp = await client.post(
        "/webhooks/stripe", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413


async def test_a_compressed_body_that_inflates_past_the_limit_is_413(client: TestClient) -> None:
    body = gzip.compress(b'{"pad": "' + b"x" * 20_000 + b'"}')  # ~100 bytes on the wire
    assert len(body) < 4096
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    resp = await client.post("/webhooks/stripe", data=body, headers=headers)
    assert resp.status == 413
    assert await stored_events(client) == []


async def test_a_body_that_arrives_in_pieces_is_read_whole(client: TestClient) -> None:
    body = stripe_event("evt_pieces", lead_id=3)

    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 50):
            yield body[start : start + 50]

    resp = await client.post("/webhooks/stripe", data=pieces(), headers=stripe_headers(body))
    assert resp.status == 200
    [stored] = await stored_events(client)
    assert stored.event.event_id == "evt_pieces"


def basic(password: str = PIPEDRIVE_PASSWORD) -> str:
    return "Basic " + base64.b64encode(f"voxys:{password}".encode()).decode()


async def test_malformed_json_from_an_authenticated_sender_is_400(client: TestClient) -> None:
    resp = await client.post(
        "/webhooks/pipedrive",
        data=b"{not json",
        headers={"Authorization": basic(), "Content-Type": "application/json"},
    )
    assert resp.status == 400


@pytest.mark.parametrize("number", [b"NaN", b"-Infinity", b"1e400"])
async def test_a_number_json_cannot_carry_is_400_and_stores_nothing(
    client: TestClient, number: bytes
) -> None:
    # RFC 8259 has no NaN or Infinity, and 1e400 decodes to an infinity JSON cannot write.
    body = stripe_event("evt_nan").replace(b'"created": ', b'"x": ' + number + b', "created": ')
    resp = await client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 400
    assert (await resp.json())["error"] == "malformed JSON"
    assert await stored_events(client) == []


async def test_an_empty_body_is_400(client: TestClient) -> None:
    resp = await client.post("/webhooks/pipedrive", data=b"", headers={"Authorization": basic()})
    assert resp.status == 400


async def test_an_unsupported_content_type_is_415(client: TestClient) -> None:
    resp = await client.post(
        "/webhooks/pipedrive",
        data=b"<xml/>",
        headers={"Authorization": basic(), "Content-Type": "application/xml"},
    )
    assert resp.status == 415


async def test_a_wrong_basic_auth_password_is_401(client: TestClient) -> None:
    resp = await client.post(
        "/webhooks/pipedrive",
        data=b"{}",
        headers={"Authorization": basic("nope"), "Content-Type": "application/json"},
    )
    assert resp.status == 401


async def test_an_event_no_rule_matches_is_stored_as_ignored(client: TestClient) -> None:
    event = json.loads(stripe_event("evt_other"))
    event["type"] = "customer.created"
    body = json.dumps(event).encode()
    resp = await client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 200
    [stored] = await stored_events(client)
    assert stored.outcome is Outcome.IGNORED


async def test_an_invalid_lead_id_makes_the_event_unmapped_and_queues_nothing(
    client: TestClient,
) -> None:
    body = stripe_event("evt_bad_lead", lead_id="../42")
    resp = await client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 200
    [stored] = await stored_events(client)
    assert stored.outcome is Outcome.UNMAPPED
    assert stored.rule == "stripe-paid"


async def test_health_and_readiness_answer(client: TestClient) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["sources"] == ["pipedrive", "stripe"]
