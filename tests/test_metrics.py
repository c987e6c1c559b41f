"""GET /metrics: Prometheus text with bounded labels and no secrets."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.bundle import load_bundle
from bridge.runtime import Runtime
from bridge.store import open_store
from tests.conftest import STRIPE_SECRET, VOXYS_TOKEN, WriteConfig, stripe_event, stripe_headers


@pytest.fixture
async def client(write_config: WriteConfig, aiohttp_client) -> TestClient:
    bundle = load_bundle(write_config())
    runtime = Runtime(bundle=bundle, store=open_store(bundle.config.storage.url))
    return await aiohttp_client(create_app(runtime))


async def metrics_text(client: TestClient) -> str:
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    return await resp.text()


async def test_received_rejected_and_outcomes_are_counted(client: TestClient) -> None:
    body = stripe_event("evt_m1", lead_id=3)
    resp = await client.post("/webhooks/stripe", data=body, headers=stripe_headers(body))
    assert resp.status == 200
    bad = stripe_headers(body, secret="whsec_wrong")
    assert (await client.post("/webhooks/stripe", data=body, headers=bad)).status == 401
    text = await metrics_text(client)
    assert 'bridge_webhooks_received_total{source="stripe"} 1.0' in text
    assert 'bridge_webhooks_rejected_total{reason="unauthorized",source="stripe"} 1.0' in text
    assert 'bridge_events_total{outcome="matched",source="stripe"} 1.0' in text
    assert 'bridge_transitions{state="pending"} 1.0' in text
    assert "bridge_oldest_pending_age_seconds" in text
    assert 'bridge_build_info{version="' in text


async def test_unknown_sources_share_one_label(client: TestClient) -> None:
    for name in ("a", "b", "c"):
        await client.post(f"/webhooks/{name}", data=b"{}")
    text = await metrics_text(client)
    assert 'bridge_webhooks_rejected_total{reason="unknown_source",source="unknown"} 3.0' in text
    assert 'source="a"' not in text


async def test_no_secret_appears_in_metrics(client: TestClient) -> None:
    text = await metrics_text(client)
    assert STRIPE_SECRET not in text
    assert VOXYS_TOKEN not in text
