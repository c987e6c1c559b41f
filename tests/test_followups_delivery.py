"""Follow-ups end to end in one process, on an injected clock (issue 18).

Signed Stripe webhooks go through the real application (verify, rules, store) and the
real delivery worker sends to a fake Voxys server; the test owns the clock that ingest,
the rules' times and the worker all read, so "7 days later" is an assignment, not a
wait. That the worker passed a time is shown, never slept for: a sentinel follow-up due
just after it must have fired (follow-ups fire earliest first).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient

from bridge.app import create_app
from bridge.bundle import load_bundle
from bridge.delivery import Deliverer, Doorbell
from bridge.fakevoxys import FakeVoxys
from bridge.lease import take_free
from bridge.pauses import AuthPauses
from bridge.runtime import Runtime
from bridge.store import open_store
from bridge.store.base import FollowUpState
from bridge.store.sqlite.lease import SqliteLease
from bridge.store.sqlite.wakeup import UnixDatagram
from bridge.voxys import VoxysClient
from tests.conftest import STRIPE_SECRET, VOXYS_TOKEN, stripe_headers

T0 = 1_724_000_000  # 2024-08-18T16:53:20Z
DAY = 86400
SENTINEL = 9999  # a lead whose follow-up proves the worker passed a time

CONFIG = """
voxys:
  base_url: "{voxys}"
  api_token: "{token}"
  account_id: 7
  rate_limit: {{requests: 1000, per_seconds: 1}}
storage: {{url: "sqlite:///{db}"}}
sources: {{stripe: {{preset: stripe, secret: "{secret}"}}}}
rules:
  - name: payment-failed
    source: stripe
    when: event.type == 'invoice.payment_failed'
    lead_id: "{{{{ event.data.object.metadata.voxys_lead_id }}}}"
    status: snoozed
    notes: "Payment failed; {{{{ event.data.object.attempt_count }}}} attempts"
    follow_up:
      after: 7d
      status: lost
      notes: Still unpaid 7 days after the failed payment
  - name: invoice-paid
    source: stripe
    when: event.type == 'invoice.paid'
    lead_id: "{{{{ event.data.object.metadata.voxys_lead_id }}}}"
    status: won
  - name: collection-paused
    source: stripe
    when: event.type == 'customer.subscription.updated'
    lead_id: "{{{{ event.data.object.metadata.voxys_lead_id }}}}"
    status: snoozed
    follow_up:
      after: "{{{{ event.data.object.pause_collection.resumes_at }}}}"
      status: open
      notes: Collection resumed
"""


class Bridge:
    """The application, the worker and the fake Voxys, all on `clock`."""

    def __init__(self, client: TestClient, runtime: Runtime, fake: FakeVoxys) -> None:
        self.client = client
        self.runtime = runtime
        self.fake = fake
        self.clock = float(T0)
        self.deliverer: Deliverer | None = None
        self.seq = 0

    async def post(self, kind: str, lead: int, *, created: float | None = None, **obj: Any) -> None:
        """A signed Stripe event of `kind` for `lead`, dated `created` (default: now)."""
        self.seq += 1
        body = {
            "id": f"evt_{self.seq}",
            "type": kind,
            "created": int(self.clock if created is None else created),
            "data": {"object": {"metadata": {"voxys_lead_id": str(lead)}, **obj}},
        }
        raw = json.dumps(body).encode()
        headers = stripe_headers(raw, secret=STRIPE_SECRET, timestamp=int(self.clock))
        resp = await self.client.post("/webhooks/stripe", data=raw, headers=headers)
        assert resp.status == 200, await resp.text()

    async def at(self, when: float) -> None:
        """Set the clock and wake the worker (a timer would have)."""
        self.clock = when
        assert self.deliverer is not None
        self.deliverer.wake()

    def statuses(self, lead: int) -> list[str]:
        return [
            c.body["status"] for c in self.fake.calls if c.path.endswith(f"/leads/{lead}/status")
        ]

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        async def poll() -> None:
            while not condition():
                await asyncio.sleep(0.005)

        await asyncio.wait_for(poll(), timeout)

    async def passed(self, when: float) -> None:
        """Show that the worker has fired everything due before `when`: a sentinel due at
        `when` (scheduled now) has fired and been delivered."""
        self.seq += 1
        lead = SENTINEL + self.seq
        await self.post(
            "customer.subscription.updated", lead, pause_collection={"resumes_at": when}
        )
        await self.at(max(self.clock, when))
        await self.until(lambda: self.statuses(lead) == ["snoozed", "open"])


@pytest.fixture
async def bridge(tmp_path: Path, aiohttp_client: Any) -> AsyncIterator[Bridge]:
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    url = await fake.start()
    config = tmp_path / "bridge.yaml"
    config.write_text(
        CONFIG.format(voxys=url, token=VOXYS_TOKEN, db=tmp_path / "b.db", secret=STRIPE_SECRET)
    )
    bundle = load_bundle(config)
    h: Bridge
    # Work stored by the webhooks goes to the deliverer below, as in a server.
    doorbell = Doorbell(UnixDatagram(tmp_path / "b.db"))
    runtime = Runtime(
        bundle=bundle,
        store=open_store(bundle.config.storage.url),
        clock=lambda: h.clock,
        new_work=doorbell,
    )
    client = await aiohttp_client(create_app(runtime))  # opens the store
    h = Bridge(client, runtime, fake)
    voxys = VoxysClient(bundle.config.voxys, rate_limited=False)
    await voxys.start()
    term = await take_free(SqliteLease(runtime.store))  # type: ignore[arg-type]
    h.deliverer = Deliverer(runtime, voxys, term, clock=lambda: h.clock, pauses=AuthPauses())
    doorbell.deliverer = h.deliverer
    task = asyncio.create_task(h.deliverer.run())
    try:
        yield h
    finally:
        await h.deliverer.stop(1.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await voxys.close()
        await fake.stop()


async def test_a_snoozed_lead_is_lost_when_its_follow_up_falls_due_and_not_before(
    bridge: Bridge,
) -> None:
    await bridge.post("invoice.payment_failed", 42, attempt_count=2)
    await bridge.until(lambda: bridge.statuses(42) == ["snoozed"])

    await bridge.passed(T0 + 7 * DAY - 1)  # a second before it is due: nothing
    assert bridge.statuses(42) == ["snoozed"]

    await bridge.at(T0 + 7 * DAY)
    await bridge.until(lambda: bridge.statuses(42) == ["snoozed", "lost"])
    lost = [c for c in bridge.fake.calls if c.body["status"] == "lost"]
    assert lost[0].body == {
        "status": "lost",
        "notes": "Still unpaid 7 days after the failed payment",
    }
    [entry] = await bridge.runtime.store.followups(lead=(7, 42))
    assert entry.state is FollowUpState.FIRED


async def test_a_payment_before_the_due_time_cancels_it_and_the_lead_stays_won(
    bridge: Bridge,
) -> None:
    await bridge.post("invoice.payment_failed", 42, attempt_count=1)
    await bridge.at(T0 + 3 * DAY)
    with structlog.testing.capture_logs() as logs:
        await bridge.post("invoice.paid", 42)

    await bridge.passed(T0 + 8 * DAY)

    assert "lost" not in bridge.statuses(42)
    assert bridge.statuses(42)[-1] == "won"
    [cancelled] = [line for line in logs if line["event"] == "followup.cancelled"]
    assert cancelled["lead_id"] == 42
    assert cancelled["cause"] == "newer event stripe/evt_2 (rule invoice-paid)"


async def test_a_stale_event_arriving_late_does_not_cancel_it(bridge: Bridge) -> None:
    await bridge.post("invoice.payment_failed", 42, attempt_count=1)
    await bridge.until(lambda: bridge.statuses(42) == ["snoozed"])
    # An invoice.paid that happened a day *before* the failure, delivered late.
    await bridge.at(T0 + DAY)
    await bridge.post("invoice.paid", 42, created=T0 - DAY)
    await bridge.passed(T0 + DAY)  # the worker has seen it: stale, not sent

    await bridge.at(T0 + 7 * DAY)
    await bridge.until(lambda: bridge.statuses(42) == ["snoozed", "lost"])
    states = [(e.status, e.state) for e in await bridge.runtime.store.ledger(7, 42)]
    assert ("won", "stale") in states


async def test_a_follow_up_can_fall_due_at_a_time_the_event_names(bridge: Bridge) -> None:
    resumes_at = T0 + 3 * DAY + 1234
    await bridge.post(
        "customer.subscription.updated", 43, pause_collection={"resumes_at": resumes_at}
    )
    await bridge.until(lambda: bridge.statuses(43) == ["snoozed"])

    await bridge.passed(resumes_at - 1)
    assert bridge.statuses(43) == ["snoozed"]
    await bridge.at(resumes_at)
    await bridge.until(lambda: bridge.statuses(43) == ["snoozed", "open"])
    [follow, _main] = await bridge.runtime.store.ledger(7, 43)
    assert (follow.origin, follow.occurred_at) == ("followup", resumes_at)


async def test_a_due_time_already_past_fires_at_once(bridge: Bridge) -> None:
    # A failure ten days old reaches the bridge only now (a redelivery, a replay).
    with structlog.testing.capture_logs() as logs:
        await bridge.post("invoice.payment_failed", 44, created=T0 - 10 * DAY, attempt_count=4)
        await bridge.until(lambda: bridge.statuses(44)[-1:] == ["lost"])

    follow = (await bridge.runtime.store.ledger(7, 44))[0]
    assert (follow.origin, follow.occurred_at) == ("followup", T0 - 3 * DAY)
    [fired] = [line for line in logs if line["event"] == "followup.fired"]
    assert fired["late_s"] == 3 * DAY
    [scheduled] = [line for line in logs if line["event"] == "followup.scheduled"]
    assert scheduled["due_in"] == "0s"


async def test_an_invalid_time_leaves_the_follow_up_unmapped_and_the_transition_goes(
    bridge: Bridge,
) -> None:
    with structlog.testing.capture_logs() as logs:
        await bridge.post("customer.subscription.updated", 45, pause_collection=None)

    await bridge.until(lambda: bridge.statuses(45) == ["snoozed"])
    assert await bridge.runtime.store.followups(lead=(7, 45)) == []
    [unmapped] = [line for line in logs if line["event"] == "event.unmapped"]
    assert unmapped["rule"] == "collection-paused"
    assert unmapped["reason"].startswith("follow_up.after rendered ''")
