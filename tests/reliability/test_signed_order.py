"""Only signed data decides order and identity, on the real server.

A lead ends in the state of its newest event, so whoever can date an event in the
future can freeze a lead. Two ways in: a provider whose time and id travel in headers
its signature does not cover (Shopify), and any provider whose clock, or body, says
"later than now". The real `voxys-bridge serve` runs against the fake Voxys; each test
ends with the state a genuine later event set, or fails waiting for it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.fakevoxys import FakeVoxys
from tests.reliability.conftest import (
    STRIPE_RULE,
    VOXYS_TOKEN,
    ServerProcess,
    stripe_signed_bytes,
    write_yaml,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(90)]

SHOPIFY_SECRET = "rlbShopifySec-6a2f9c0e4b"
LEAD_ID = "{{ event.note_attributes | selectattr('name', 'equalto', 'voxys_lead_id') "
LEAD_ID += "| map(attribute='value') | first }}"
SHOPIFY_RULES = [
    {
        "name": "shopify-paid",
        "source": "shop",
        "when": ["event.financial_status == 'paid'", "not event.cancelled_at"],
        "lead_id": LEAD_ID,
        "status": "won",
    },
    {
        "name": "shopify-cancelled",
        "source": "shop",
        "when": "event.cancelled_at",
        "lead_id": LEAD_ID,
        "status": "lost",
    },
]
STRIPE_LOST_RULE = {
    "name": "stripe-payment-failed",
    "source": "stripe",
    "when": "event.type == 'invoice.payment_failed'",
    "lead_id": "{{ event.data.object.metadata.voxys_lead_id }}",
    "status": "lost",
}


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def order(lead_id: int, updated_at: float, cancelled: bool = False) -> bytes:
    """A Shopify order (the body is the resource), as orders/paid or orders/cancelled send it."""
    return json.dumps(
        {
            "id": 820982911946154508,
            "name": "#1001",
            "financial_status": "voided" if cancelled else "paid",
            "cancelled_at": iso(updated_at) if cancelled else None,
            "created_at": iso(updated_at - 600),
            "updated_at": iso(updated_at),
            "note_attributes": [{"name": "voxys_lead_id", "value": str(lead_id)}],
        }
    ).encode()


def shopify_headers(body: bytes, topic: str, event_id: str, triggered_at: str) -> dict[str, str]:
    """What Shopify sends: base64 HMAC-SHA256 of the body only, and unsigned metadata."""
    digest = hmac.new(SHOPIFY_SECRET.encode(), body, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-Shopify-Hmac-Sha256": base64.b64encode(digest).decode(),
        "X-Shopify-Topic": topic,
        "X-Shopify-Event-Id": event_id,
        "X-Shopify-Triggered-At": triggered_at,
        "X-Shopify-Shop-Domain": "example.myshopify.com",
    }


def stripe_event(event_id: str, event_type: str, lead_id: int, created: float) -> bytes:
    obj = {"amount_total": 1999, "metadata": {"voxys_lead_id": str(lead_id)}}
    event = {"id": event_id, "type": event_type, "created": int(created), "data": {"object": obj}}
    return json.dumps(event).encode()


async def until(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
    return result


async def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


def statuses(fake: FakeVoxys, lead_id: int) -> list[str]:
    return [c.body["status"] for c in fake.calls if c.lead_id == lead_id and c.body]


def logged(server: ServerProcess, event: str) -> list[dict[str, Any]]:
    lines = [line for line in server.output().splitlines() if f'"{event}"' in line]
    return [json.loads(line) for line in lines]


async def serving(server_factory: Any, fake: FakeVoxys) -> ServerProcess:
    server: ServerProcess = server_factory(fake.base_url)
    config = yaml.safe_load(server.config.read_text())
    config["sources"]["shop"] = {"preset": "shopify", "secret": SHOPIFY_SECRET}
    config["rules"] = [STRIPE_RULE, STRIPE_LOST_RULE, *SHOPIFY_RULES]
    write_yaml(server.config, config)
    server.start()
    await server.wait_healthy()
    return server


async def test_a_replayed_shopify_request_with_new_id_and_time_headers_neither_counts_nor_freezes(
    server_factory: Any,
) -> None:
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    await fake.start()
    server = await serving(server_factory, fake)
    url = f"{server.url}/webhooks/shop"
    try:
        now = time.time()
        paid = order(41, updated_at=now - 60)
        captured = shopify_headers(paid, "orders/paid", "evt-genuine-1", iso(now - 59))
        assert (await post(url, paid, captured))[0] == 200
        await until(lambda: statuses(fake, 41) == ["won"])
        # Replayed by someone who captured it: a new event id, a trigger time in 2099.
        forged = {**captured, "X-Shopify-Event-Id": "evt-forged-2"}
        forged["X-Shopify-Triggered-At"] = "2099-01-01T00:00:00Z"
        status, answer = await post(url, paid, forged)
        # A genuine later event still decides the lead ...
        cancelled = order(41, updated_at=time.time() - 1, cancelled=True)
        headers = shopify_headers(cancelled, "orders/cancelled", "evt-genuine-3", iso(now))
        assert (await post(url, cancelled, headers))[0] == 200
        await until(lambda: statuses(fake, 41)[-1:] == ["lost"])
        assert fake.leads[(7, 41)]["status"] == "lost"
        assert not logged(server, "transition.stale")
        # ... and the replay was a duplicate: nothing was stored, nothing sent for it.
        assert (status, answer["events"], answer["duplicates"]) == (200, 0, 1)
        assert statuses(fake, 41) == ["won", "lost"]
    finally:
        server.stop()
        await fake.stop()


async def test_an_event_dated_in_the_future_is_ordered_by_its_arrival(
    server_factory: Any,
) -> None:
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    await fake.start()
    server = await serving(server_factory, fake)
    url = f"{server.url}/webhooks/stripe"
    try:
        # Signed, fresh, but claiming to have happened an hour from now.
        ahead = stripe_event("evt_ahead", "checkout.session.completed", 51, time.time() + 3600)
        assert (await post(url, ahead, stripe_signed_bytes(ahead)))[0] == 200
        await until(lambda: statuses(fake, 51) == ["won"])
        # The next genuine event of the lead, happening now, is newer than that claim.
        failed = stripe_event("evt_failed", "invoice.payment_failed", 51, time.time())
        assert (await post(url, failed, stripe_signed_bytes(failed)))[0] == 200
        await until(lambda: statuses(fake, 51) == ["won", "lost"])
        assert fake.leads[(7, 51)]["status"] == "lost"
        # The webhook's one log line says the claim was not believed, and by how much.
        [line] = [e for e in logged(server, "webhook.received") if e.get("clamped")]
        assert line["clamped"] == 1
        assert 3590 <= line["clamped_ahead_s"] <= 3600
    finally:
        server.stop()
        await fake.stop()
