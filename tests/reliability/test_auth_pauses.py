"""One refused account must not stop every account: the real server against a fake Voxys
that refuses the token for some accounts (403) or for all of them (401)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.fakevoxys import FakeVoxys
from tests.conftest import free_port, stripe_event, stripe_headers
from tests.reliability.conftest import (
    ADMIN_TOKEN,
    STRIPE_SECRET,
    VOXYS_TOKEN,
    ServerProcess,
    bridge_config,
    write_yaml,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(60)]

PROBE_S = 1.0  # voxys.retry.auth_probe.initial (30 s in production)

# Each event names its account: the rule routes it there.
ROUTED_RULE = {
    "name": "stripe-paid",
    "source": "stripe",
    "when": "event.type == 'checkout.session.completed'",
    "account_id": "{{ event.data.object.metadata.account }}",
    "lead_id": "{{ event.data.object.metadata.voxys_lead_id }}",
    "status": "won",
}


class Bridge:
    """The real server, a fake Voxys in this test's loop, and ways to post and look."""

    def __init__(self, server: ServerProcess, fake: FakeVoxys) -> None:
        self.server = server
        self.fake = fake
        self.n = 0

    async def post(self, account: int, lead: int) -> None:
        self.n += 1
        event = json.loads(stripe_event(f"evt_auth_{self.n}", lead_id=lead))
        event["data"]["object"]["metadata"]["account"] = str(account)
        body = json.dumps(event).encode()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{self.server.url}/webhooks/stripe",
                data=body,
                headers=stripe_headers(body, secret=STRIPE_SECRET),
            ) as resp,
        ):
            assert resp.status == 200

    def delivered(self, account: int) -> set[int]:
        return {
            c.lead_id
            for c in self.fake.calls
            if c.account_id == account and c.status == 200 and c.lead_id is not None
        }

    async def admin(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{self.server.url}/admin/{path}",
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as resp,
        ):
            assert resp.status == 200
            return await resp.json()

    async def until(self, condition: Callable[[], bool], timeout: float) -> float:
        """Poll until `condition()`; the seconds it took (fails past `timeout`)."""
        started = time.monotonic()
        while not condition():
            assert time.monotonic() - started < timeout, self.server.tail()
            await asyncio.sleep(0.02)
        return time.monotonic() - started

    def logged(self, event: str) -> list[dict[str, Any]]:
        lines = [
            json.loads(line) for line in self.server.output().splitlines() if line.startswith("{")
        ]
        return [line for line in lines if line.get("event") == event]


@pytest.fixture
async def bridge(tmp_path: Path, rlb_env: dict[str, str]) -> AsyncIterator[Callable[..., Any]]:
    made: list[Bridge] = []

    async def make(max_age: str = "1h") -> Bridge:
        fake = FakeVoxys(tokens=VOXYS_TOKEN)
        await fake.start()
        port = free_port()
        config = bridge_config(port=port, db=tmp_path / "bridge.db", voxys_url=fake.base_url)
        config["rules"] = [ROUTED_RULE]
        config["voxys"]["retry"].update(
            {"max_age": max_age, "auth_probe": {"initial": f"{PROBE_S}s", "max": f"{2 * PROBE_S}s"}}
        )
        server = ServerProcess(
            write_yaml(tmp_path / "bridge.yaml", config), port, tmp_path / "server.log", rlb_env
        )
        server.start()
        await server.wait_healthy()
        made.append(b := Bridge(server, fake))
        return b

    yield make
    for b in made:
        b.server.stop()
        await b.fake.stop()


async def test_a_refused_account_pauses_alone_while_other_accounts_are_delivered_at_once(
    bridge: Callable[..., Any],
) -> None:
    b: Bridge = await bridge()
    b.fake.refused_accounts.add(8)
    await b.post(account=8, lead=100)
    await b.until(lambda: any(c.account_id == 8 for c in b.fake.calls), 5)

    posted = time.monotonic()
    for lead in (1, 2, 3):
        await b.post(account=7, lead=lead)
    took = await b.until(lambda: b.delivered(7) == {1, 2, 3}, 10)

    assert time.monotonic() - posted < 2.0, took  # not held up by account 8's pause
    stats = await b.admin("stats")
    assert [p["account_id"] for p in stats["paused"]["accounts"]] == [8]
    assert stats["paused"]["token_wide"] is False  # account 7 is accepted: not the token
    failed = b.logged("voxys.auth_failed")
    assert [(f["account_id"], f["http_status"]) for f in failed] == [(8, 403)]


async def test_a_transition_waiting_on_a_refused_account_is_dead_lettered_past_max_age(
    bridge: Callable[..., Any],
) -> None:
    b: Bridge = await bridge(max_age="3s")
    b.fake.refused_accounts.add(8)
    await b.post(account=8, lead=100)

    async def dead() -> list[Any]:
        return list(await b.admin("dead-letters"))

    started = time.monotonic()
    letters: list[Any] = []
    while not letters:
        assert time.monotonic() - started < 15, b.server.tail()
        letters = await dead()
        await asyncio.sleep(0.1)
    [letter] = letters
    assert (letter["account_id"], letter["lead_id"], letter["http_status"]) == (8, 100, 403)
    assert letter["reason"].startswith("token refused for account 8")
    assert time.monotonic() - started >= 2.5  # not before max_age
    assert not b.delivered(8)


async def test_a_revoked_token_pauses_every_account_and_recovers_when_accepted_again(
    bridge: Callable[..., Any],
) -> None:
    b: Bridge = await bridge()
    b.fake.revoke(VOXYS_TOKEN)
    await b.post(account=7, lead=1)
    await b.post(account=8, lead=2)
    await b.until(lambda: any(f["token_wide"] for f in b.logged("voxys.auth_failed")), 10)
    assert (await b.admin("stats"))["paused_tokens"] == 1

    b.fake.restore(VOXYS_TOKEN)
    await b.until(lambda: b.delivered(7) == {1} and b.delivered(8) == {2}, 4 * PROBE_S + 5)
    recovered = b.logged("voxys.auth_recovered")
    assert any(r["token_wide"] for r in recovered)
    assert (await b.admin("stats"))["paused"] == {"token_wide": False, "accounts": []}


async def test_an_account_whose_access_returns_is_delivered_at_its_next_probe(
    bridge: Callable[..., Any],
) -> None:
    b: Bridge = await bridge()
    b.fake.refused_accounts.add(8)
    for lead in (100, 101, 102):
        await b.post(account=8, lead=lead)
    await b.until(lambda: bool(b.logged("voxys.auth_failed")), 5)

    b.fake.refused_accounts.discard(8)
    took = await b.until(lambda: b.delivered(8) == {100, 101, 102}, 4 * PROBE_S + 5)

    assert took <= 2 * PROBE_S + 1.5  # the next probe, then the rest at once
    [recovered] = b.logged("voxys.auth_recovered")
    assert recovered["account_id"] == 8
