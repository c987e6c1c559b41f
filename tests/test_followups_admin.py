"""Follow-ups for operators (issue 18): /admin, `followups list|cancel`, `explain`, stats and
metrics show what is scheduled, what fired and what was cancelled, and why."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from bridge import admin_cli
from bridge.app import create_app
from bridge.bundle import Bundle, load_bundle
from bridge.lease import take_free
from bridge.models import Evaluation, Event, FollowUp, LeadStatus, Outcome, Transition
from bridge.runtime import RUNTIME, Runtime
from bridge.store import open_store
from bridge.store.base import Store
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite.lease import SqliteLease

TOKEN = "adm-secret-77f0-9c3e"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z
DAY = 86400.0


@pytest.fixture
def bundle(tmp_path: Path) -> Bundle:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        "voxys: {api_token: t, account_id: 7}\n"
        f"admin: {{token: {TOKEN}}}\n"
        f'storage: {{url: "sqlite:///{tmp_path / "b.db"}"}}\n'
        "sources: {stripe: {preset: stripe, secret: whsec_test_8d2f4a6c1e9b7035}}\n"
    )
    return load_bundle(path)


def failed(event_id: str, lead_id: int, due_in: float = 7 * DAY) -> tuple[Event, Evaluation]:
    """A payment-failed event (5 s ago): snoozed now, lost `due_in` after it unless ..."""
    occurred = NOW - 5
    event = Event("stripe", event_id, occurred, NOW, {"id": event_id})
    follow_up = FollowUp(LeadStatus.LOST, "still unpaid", occurred + due_in)
    transition = Transition("dunning", 7, lead_id, LeadStatus.SNOOZED, None, follow_up)
    return event, Evaluation(Outcome.MATCHED, (transition,), matched_rules=("dunning",))


async def seed(store: Store) -> None:
    """Lead 42's follow-up fired (it was due already), lead 43's is scheduled in 7 days."""
    await store.ingest([failed("evt_1", 42, due_in=0), failed("evt_2", 43)], NOW)
    assert isinstance(store, SqliteStore)
    lease = SqliteLease(store)
    term = await take_free(lease)  # as the deliverer would, then handed back
    await store.fire_followups(NOW, 100, epoch=term.epoch)
    await lease.release(term.holder, term.epoch)


@pytest.fixture
async def client(bundle: Bundle, aiohttp_client: Any) -> TestClient:
    runtime = Runtime(bundle=bundle, store=open_store(bundle.config.storage.url), clock=lambda: NOW)
    client = await aiohttp_client(create_app(runtime))
    await seed(runtime.store)
    return client


# --- HTTP ------------------------------------------------------------------------------


async def test_the_admin_api_lists_scheduled_follow_ups_by_default_and_any_state_on_request(
    client: TestClient,
) -> None:
    scheduled = await (await client.get("/admin/followups", headers=AUTH)).json()
    every = await (await client.get("/admin/followups?state=all", headers=AUTH)).json()
    one_lead = await (
        await client.get("/admin/followups?state=all&account_id=7&lead_id=42", headers=AUTH)
    ).json()

    assert [(f["lead_id"], f["state"]) for f in scheduled] == [(43, "scheduled")]
    assert scheduled[0]["due_iso"] == "2024-05-08T11:59:55.000Z"
    assert [(f["lead_id"], f["state"]) for f in every] == [(42, "fired"), (43, "scheduled")]
    assert [f["lead_id"] for f in one_lead] == [42]
    assert one_lead[0]["transition_id"] == 3


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("state=later", "state must be scheduled, fired, cancelled or all"),
        ("account_id=7", "account_id and lead_id must both be integers"),
        ("account_id=7&lead_id=x", "account_id and lead_id must both be integers"),
    ],
)
async def test_a_bad_listing_query_is_400_saying_what_is_wrong(
    client: TestClient, query: str, error: str
) -> None:
    resp = await client.get(f"/admin/followups?{query}", headers=AUTH)

    assert resp.status == 400
    assert (await resp.json())["error"] == error


async def test_cancelling_says_which_were_cancelled_and_which_could_not_be(
    client: TestClient,
) -> None:
    resp = await client.post("/admin/followups/cancel", json={"ids": [2, 1, 99]}, headers=AUTH)

    body = await resp.json()
    assert resp.status == 200
    assert body["ok"] is False  # one had fired already, one does not exist
    assert [(f["id"], f["state"], f["cause"]) for f in body["cancelled"]] == [
        (2, "cancelled", "cancelled by an operator")
    ]
    assert [(f["id"], f["state"]) for f in body["not_cancelled"]] == [(1, "fired")]
    assert body["unknown"] == [99]


async def test_cancelling_every_follow_up_of_a_lead(client: TestClient) -> None:
    resp = await client.post(
        "/admin/followups/cancel", json={"account_id": 7, "lead_id": 43}, headers=AUTH
    )

    assert (await resp.json())["ok"] is True
    assert await (await client.get("/admin/followups", headers=AUTH)).json() == []


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"ids": []},
        {"ids": [1], "account_id": 7, "lead_id": 1},
        {"account_id": 7},
        {"ids": ["1"]},
    ],
)
async def test_a_bad_cancel_body_is_400_and_cancels_nothing(
    client: TestClient, body: dict[str, Any]
) -> None:
    resp = await client.post("/admin/followups/cancel", json=body, headers=AUTH)

    assert resp.status == 400
    assert len(await (await client.get("/admin/followups", headers=AUTH)).json()) == 1


async def test_the_lead_ledger_shows_each_transitions_follow_up_and_the_one_it_fired(
    client: TestClient,
) -> None:
    fired = await (await client.get("/admin/leads/7/42", headers=AUTH)).json()
    waiting = await (await client.get("/admin/leads/7/43", headers=AUTH)).json()

    assert [(e["status"], e["origin"]) for e in fired] == [
        ("lost", "followup"),
        ("snoozed", "event"),
    ]
    assert fired[0]["follow_up"] == fired[1]["follow_up"]
    assert fired[0]["follow_up"]["state"] == "fired"
    [main] = waiting
    assert (main["follow_up"]["state"], main["follow_up"]["due_iso"]) == (
        "scheduled",
        "2024-05-08T11:59:55.000Z",
    )


async def test_stats_and_metrics_count_follow_ups_per_state(client: TestClient) -> None:
    stats = await (await client.get("/admin/stats", headers=AUTH)).json()
    metrics = await (await client.get("/metrics")).text()

    assert stats["followups"] == {"scheduled": 1, "fired": 1, "cancelled": 0}
    assert stats["next_followup_iso"] == "2024-05-08T11:59:55.000Z"
    assert 'bridge_followups{state="scheduled"} 1.0' in metrics
    assert 'bridge_followups{state="fired"} 1.0' in metrics
    assert "bridge_followups_overdue_seconds 0.0" in metrics


async def test_the_overdue_gauge_says_how_long_a_due_follow_up_waits(
    client: TestClient,
) -> None:
    runtime = client.app[RUNTIME]
    runtime.clock = lambda: NOW + 7 * DAY + 55  # nobody fires: 60 s overdue

    metrics = await (await client.get("/metrics")).text()

    assert "bridge_followups_overdue_seconds 60.0" in metrics


# --- commands on the store ---------------------------------------------------------------


def run_cli(bundle: Bundle, command: str, **args: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = admin_cli.cli_main(command, argparse.Namespace(**args), bundle, out, err)
    return code, out.getvalue(), err.getvalue()


def seeded(bundle: Bundle, work: Callable[[Store], Any] = seed) -> None:
    async def run() -> None:
        store = open_store(bundle.config.storage.url)
        await store.open()
        try:
            await work(store)
        finally:
            await store.close()

    asyncio.run(run())


def test_followups_list_prints_when_each_is_due(bundle: Bundle) -> None:
    seeded(bundle)

    code, out, _ = run_cli(bundle, "followups", action="list", lead=None, state="all", json=False)

    assert code == 0
    header, fired, scheduled = out.splitlines()
    assert header.split()[:4] == ["id", "due", "lead", "status"]
    assert fired.split()[:6] == ["1", "2024-05-01", "11:59:55Z", "7/42", "lost", "fired"]
    assert "as transition 3" in fired
    assert scheduled.split()[:4] == ["2", "2024-05-08", "11:59:55Z", "due"]  # now is later
    assert scheduled.split()[-6:] == ["7/43", "lost", "scheduled", "dunning", "stripe/evt_2", "-"]
    code, out, _ = run_cli(
        bundle, "followups", action="list", lead="43", state="scheduled", json=True
    )
    assert [f["id"] for f in json.loads(out)] == [2]


def test_followups_cancel_exits_1_naming_one_that_had_fired(bundle: Bundle) -> None:
    seeded(bundle)

    code, out, _ = run_cli(bundle, "followups", action="cancel", id=[1, 2], lead=None, json=False)

    assert code == 1
    assert out.splitlines() == [
        "cancelled follow-up 2 (lost due 2024-05-08 11:59:55Z)",
        "follow-up 1 was not cancelled: it is fired (fired 2024-05-01 12:00:00Z as transition 3)",
    ]
    code, out, _ = run_cli(bundle, "followups", action="cancel", id=None, lead="7/43", json=False)
    assert (code, out) == (0, "no scheduled follow-ups for lead 7/43\n")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"id": None, "lead": None}, "followups cancel wants --id N (repeatable) or --lead"),
        ({"id": [1], "lead": "7/42"}, "followups cancel takes --id or --lead, not both"),
        ({"id": None, "lead": "7/x"}, "--lead wants ACCOUNT/LEAD or LEAD as integers"),
    ],
)
def test_followups_cancel_refuses_an_unclear_choice(
    bundle: Bundle, args: dict[str, Any], error: str
) -> None:
    code, _, err = run_cli(bundle, "followups", action="cancel", json=False, **args)

    assert code == 2
    assert error in err


def test_explain_ends_with_the_leads_follow_ups(bundle: Bundle) -> None:
    seeded(bundle)

    code, out, _ = run_cli(bundle, "explain", lead="7/42", json=False)

    assert code == 0
    lines = out.splitlines()
    assert "dunning (follow-up 1)" in lines[1]  # the transition it fired, newest first
    assert lines[3:5] == ["", "follow-ups"]
    assert lines[6].split()[:5] == ["1", "2024-05-01", "11:59:55Z", "lost", "fired"]


def test_stats_text_counts_follow_ups(bundle: Bundle) -> None:
    seeded(bundle)

    code, out, _ = run_cli(bundle, "stats", json=False)

    assert code == 0
    rows = [line.rsplit(maxsplit=1) for line in out.splitlines()]
    assert ["follow-ups scheduled", "1"] in rows
    assert ["follow-ups fired", "1"] in rows
    assert ["next follow-up", "2024-05-08T11:59:55.000Z"] in rows
