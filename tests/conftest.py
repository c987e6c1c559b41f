"""Shared fixtures: a config directory written per test, Stripe signing, free ports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe

STRIPE_SECRET = "whsec_test_4f9c2b7e1d6a0b3c"
PIPEDRIVE_PASSWORD = "pd-pass-8c1e"
VOXYS_TOKEN = "voxys-token-77aa"

# A test session started in the background of a non-interactive shell (`cmd &`) inherits
# SIGINT ignored, and so would every console script it starts: `serve`, `demo` and
# `sandbox` would then never stop on SIGINT, nor when their output's reader goes (they
# raise SIGINT then). Tests start them as a terminal would.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

BASE_CONFIG = """
server: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{port}", max_body_bytes: {max_body}}}
storage: {{url: "sqlite:///{db}"}}
voxys:
  base_url: "{voxys_url}"
  api_token: "${{TEST_VOXYS_TOKEN}}"
  account_id: 7
  rate_limit: {{requests: 1000, per_seconds: 1}}
  retry: {{backoff: {{initial: 50ms, max: 200ms}}}}
logging: {{format: json, level: info}}
sources:
  stripe: {{preset: stripe, secret: "${{TEST_STRIPE_SECRET}}"}}
  pipedrive: {{preset: pipedrive, basic_auth: {{username: voxys, password: "${{TEST_PIPEDRIVE_PASSWORD}}"}}}}
rules:
  - name: stripe-paid
    source: stripe
    when: event.type == 'checkout.session.completed'
    lead_id: "{{{{ event.data.object.metadata.voxys_lead_id }}}}"
    status: won
    notes: "Paid {{{{ event.data.object.amount_total }}}}"
"""


class StoredWork:
    """A `runtime.NewWork` that records how many transitions each store call queued."""

    def __init__(self) -> None:
        self.counts: list[int] = []

    def stored(self, transitions: int) -> None:
        self.counts.append(transitions)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def secrets_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", VOXYS_TOKEN)
    monkeypatch.setenv("TEST_STRIPE_SECRET", STRIPE_SECRET)
    monkeypatch.setenv("TEST_PIPEDRIVE_PASSWORD", PIPEDRIVE_PASSWORD)


WriteConfig = Callable[..., Path]


@pytest.fixture
def write_config(tmp_path: Path, secrets_env: None) -> WriteConfig:
    """Write a bridge.yaml for this test; keyword arguments fill BASE_CONFIG's blanks."""

    def write(**overrides: Any) -> Path:
        values: dict[str, Any] = {
            "port": 0,
            "db": tmp_path / "bridge.db",
            "voxys_url": "http://127.0.0.1:9",
            "max_body": 65536,
        }
        values.update(overrides)
        path = tmp_path / "bridge.yaml"
        path.write_text(BASE_CONFIG.format(**values))
        return path

    return write


def stripe_event(event_id: str = "evt_1", lead_id: Any = 42, created: int | None = None) -> bytes:
    event = {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "created": created if created is not None else int(time.time()),
        "livemode": False,
        "data": {
            "object": {
                "amount_total": 1999,
                "currency": "eur",
                "payment_status": "paid",
                "metadata": {"voxys_lead_id": str(lead_id)},
            }
        },
    }
    return json.dumps(event).encode()


def stripe_headers(
    body: bytes, secret: str = STRIPE_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    """Signed the way Stripe signs, computed by Stripe's own library."""
    t = int(time.time()) if timestamp is None else timestamp
    signature = stripe.WebhookSignature._compute_signature(f"{t}.{body.decode()}", secret)
    return {"Stripe-Signature": f"t={t},v1={signature}", "Content-Type": "application/json"}


PG_DSN = os.environ.get("VOXYS_BRIDGE_TEST_POSTGRES_DSN")
needs_postgres = pytest.mark.skipif(
    not PG_DSN, reason="set VOXYS_BRIDGE_TEST_POSTGRES_DSN to run against PostgreSQL"
)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A schema of its own for one test, dropped afterwards."""
    assert PG_DSN is not None
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name

    async def drop() -> None:
        import asyncpg

        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        finally:
            await conn.close()

    asyncio.run(drop())
