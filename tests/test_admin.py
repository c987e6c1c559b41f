"""Operating it: /admin (token-guarded) and the dead-letters | replay | explain | stats commands."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

import bridge
from bridge import admin_cli
from bridge.app import create_app
from bridge.bundle import Bundle, load_bundle
from bridge.lease import take_free
from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition, Unmapped
from bridge.runtime import RUNTIME, Runtime
from bridge.store import open_store
from bridge.store.base import Store
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite.lease import SqliteLease
from tests.conftest import StoredWork

TOKEN = "adm-secret-5b1d-7e2c"
NOW = 1_714_564_800.0  # 2024-05-01T12:00:00Z
AUTH = {"Authorization": f"Bearer {TOKEN}"}

BROKEN_RULE = "metadata.lead"  # the key the provider does not send: every event is unmapped
FIXED_RULE = "metadata.voxys_lead_id"


def config_text(db: Path, *, token: str | None = TOKEN, lead_key: str = FIXED_RULE) -> str:
    admin_line = f"admin: {{token: {token}}}\n" if token else ""
    return (
        "voxys: {api_token: t, account_id: 7}\n"
        + admin_line
        + f'storage: {{url: "sqlite:///{db}"}}\n'
        + "sources: {stripe: {preset: stripe, secret: whsec_test_4f9c2b7e1d6a0b3c}}\n"
        + "rules:\n"
        + "  - name: stripe-paid\n"
        + "    source: stripe\n"
        + "    when: event.type == 'checkout.session.completed'\n"
        + f'    lead_id: "{{{{ event.data.object.{lead_key} }}}}"\n'
        + "    status: won\n"
    )


MakeBundle = Callable[..., Bundle]


@pytest.fixture
def make_bundle(tmp_path: Path) -> MakeBundle:
    def make(**options: Any) -> Bundle:
        path = tmp_path / "bridge.yaml"
        path.write_text(config_text(tmp_path / "b.db", **options))
        return load_bundle(path)

    return make


@pytest.fixture
async def client(make_bundle: MakeBundle, aiohttp_client: Any) -> TestClient:
    bundle = make_bundle()
    runtime = Runtime(
        bundle=bundle,
        store=open_store(bundle.config.storage.url),
        clock=lambda: NOW,
        new_work=StoredWork(),
    )
    return await aiohttp_client(create_app(runtime))


def runtime_of(client: TestClient) -> Runtime:
    return client.app[RUNTIME]


def stored_work(client: TestClient) -> list[int]:
    """The transitions each store call told delivery about, in order."""
    new_work = runtime_of(client).new_work
    assert isinstance(new_work, StoredWork)
    return new_work.counts


def stripe_event(event_id: str, lead_id: int = 42, received_at: float = NOW - 60) -> Event:
    payload = {
        "id": event_id,
        "type": "checkout.session.completed",
        "data": {"object": {"metadata": {"voxys_lead_id": str(lead_id)}}},
    }
    return Event("stripe", event_id, received_at - 5, received_at, payload)


def matched(event: Event, lead_id: int = 42) -> Evaluation:
    transition = Transition("stripe-paid", 7, lead_id, LeadStatus.WON)
    return Evaluation(Outcome.MATCHED, (transition,), matched_rules=("stripe-paid",))


def unmapped() -> Evaluation:
    return Evaluation(Outcome.UNMAPPED, unmapped=(Unmapped("stripe-paid", "lead_id is empty"),))


async def seed_dead(store: Store, *event_ids: str) -> list[int]:
    """Given events for leads 7/42, 7/43, ... whose transitions Voxys refused for good (422)."""
    leads = range(42, 42 + len(event_ids))
    events = [stripe_event(e, lead) for e, lead in zip(event_ids, leads, strict=True)]
    items = [(e, matched(e, lead)) for e, lead in zip(events, leads, strict=True)]
    await store.ingest(items, NOW - 50)
    assert isinstance(store, SqliteStore)
    lease = SqliteLease(store)
    term = await take_free(lease)  # as the deliverer, then handed back
    claim = await store.claim_due(NOW - 40, 100, coalesce=False, epoch=term.epoch)
    ids = []
    for queued in claim.claimed:
        await store.mark_dead(
            queued.id, NOW - 30, reason="Voxys answered 422", http_status=422, epoch=term.epoch
        )
        ids.append(queued.id)
    await lease.release(term.holder, term.epoch)
    return ids


# --- the token ------------------------------------------------------------------------


async def test_without_an_admin_token_the_admin_routes_do_not_exist(
    make_bundle: MakeBundle, aiohttp_client: Any
) -> None:
    bundle = make_bundle(token=None)
    runtime = Runtime(bundle=bundle, store=open_store(bundle.config.storage.url))
    client = await aiohttp_client(create_app(runtime))
    for path in ("/admin/stats", "/admin/dead-letters"):
        resp = await client.get(path, headers=AUTH)
        assert resp.status == 404


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer adm"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer ☃"},
    ],
    ids=["missing", "longer", "shorter", "other-scheme", "no-scheme", "non-ascii"],
)
async def test_a_request_without_the_right_bearer_token_is_401_and_never_echoes_it(
    client: TestClient, headers: dict[str, str]
) -> None:
    await seed_dead(runtime_of(client).store, "evt_1")
    for method, path in [("GET", "/admin/dead-letters"), ("POST", "/admin/dead-letters/retry")]:
        resp = await client.request(method, path, headers=headers, json={})
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        text = await resp.text()
        assert json.loads(text) == {"ok": False, "error": "missing or wrong admin token"}
        assert "adm-secret" not in text
    # and nothing was re-queued
    assert len(await runtime_of(client).store.dead_letters()) == 1


# --- dead letters ---------------------------------------------------------------------


async def test_dead_letters_list_each_with_lead_reason_attempts_and_times(
    client: TestClient,
) -> None:
    [dead_id] = await seed_dead(runtime_of(client).store, "evt_1")
    resp = await client.get("/admin/dead-letters", headers=AUTH)
    assert resp.status == 200
    [event] = await runtime_of(client).store.list_events()
    assert await resp.json() == [
        {
            "id": dead_id,
            "event_pk": event.pk,
            "source": "stripe",
            "rule": "stripe-paid",
            "event_id": "evt_1",
            "account_id": 7,
            "lead_id": 42,
            "status": "won",
            "reason": "Voxys answered 422",
            "http_status": 422,
            "attempts": 1,
            "first_attempt_at": NOW - 30,
            "first_attempt_iso": "2024-05-01T11:59:30.000Z",
            "last_attempt_at": NOW - 30,
            "last_attempt_iso": "2024-05-01T11:59:30.000Z",
        }
    ]


async def test_retry_with_an_empty_object_requeues_every_dead_letter_and_wakes_delivery(
    client: TestClient,
) -> None:
    runtime = runtime_of(client)
    woken = stored_work(client)
    await seed_dead(runtime.store, "evt_1", "evt_2", "evt_3")
    resp = await client.post("/admin/dead-letters/retry", json={}, headers=AUTH)
    assert resp.status == 200
    assert await resp.json() == {"ok": True, "queued": 3}
    assert woken == [3]
    assert await runtime.store.dead_letters() == []
    assert (await runtime.store.stats(NOW)).transitions["pending"] == 3


async def test_retry_with_ids_requeues_only_those(client: TestClient) -> None:
    store = runtime_of(client).store
    first, _second = await seed_dead(store, "evt_1", "evt_2")
    resp = await client.post("/admin/dead-letters/retry", json={"ids": [first, 999]}, headers=AUTH)
    assert await resp.json() == {"ok": True, "queued": 1}
    assert [e.event_id for e in await store.dead_letters()] == ["evt_2"]


async def test_retry_when_nothing_is_dead_queues_nothing_and_wakes_nobody(
    client: TestClient,
) -> None:
    woken = stored_work(client)
    resp = await client.post("/admin/dead-letters/retry", json={}, headers=AUTH)
    assert await resp.json() == {"ok": True, "queued": 0}
    assert woken == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "the body must be a JSON object, e.g. {}"),
        (b"{ids: [1]}", "body: not valid JSON (key must be a string at line 1 column 2)"),
        (b"[1, 2]", "body: must be a JSON object"),
        (b'{"ids": "1"}', "ids: must be a list"),
        (b'{"ids": ["1"]}', "ids.0: not an integer"),
        (b'{"ids": []}', "ids: cannot be empty"),
        (b'{"id": [1]}', "id: unknown key"),
    ],
    ids=["empty", "not-json", "array", "ids-string", "ids-of-strings", "ids-empty", "typo"],
)
async def test_a_bad_retry_body_is_400_with_a_precise_message_and_retries_nothing(
    client: TestClient, body: bytes, message: str
) -> None:
    await seed_dead(runtime_of(client).store, "evt_1")
    resp = await client.post(
        "/admin/dead-letters/retry",
        data=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert resp.status == 400
    answer = await resp.json()
    assert answer["ok"] is False
    assert answer["error"].startswith(message)
    assert len(await runtime_of(client).store.dead_letters()) == 1


# --- replay ---------------------------------------------------------------------------


async def test_replay_after_fixing_a_rule_queues_the_unmapped_event_and_wakes_delivery(
    client: TestClient, make_bundle: MakeBundle
) -> None:
    runtime = runtime_of(client)
    woken = stored_work(client)
    # Given an event the broken rule could not map
    broken = make_bundle(lead_key=BROKEN_RULE)
    event = stripe_event("evt_early", lead_id=42)
    evaluation = broken.rules.evaluate(event)
    assert evaluation.outcome is Outcome.UNMAPPED
    await runtime.store.ingest([(event, evaluation)], NOW - 60)
    # When the rule is fixed (a reload swaps the bundle) and the unmapped events replayed
    runtime.bundle = make_bundle(lead_key=FIXED_RULE)
    resp = await client.post(
        "/admin/events/replay",
        json={"outcome": "unmapped", "since": "2024-05-01T11:00:00Z"},
        headers=AUTH,
    )
    # Then it is matched now and its transition is queued
    assert resp.status == 200
    assert await resp.json() == {
        "ok": True,
        "events": 1,
        "outcomes": {"matched": 1, "ignored": 0, "unmapped": 0},
        "transitions": 1,
        "skipped_matched": 0,
        "truncated": False,
        "followups": {"scheduled": 0, "cancelled": 0},
    }
    assert woken == [1]
    [entry] = await runtime.store.ledger(7, 42)
    assert (entry.state, entry.status, entry.event_id) == ("pending", "won", "evt_early")
    [stored] = await runtime.store.events_for_replay(ids=[1])
    assert stored.outcome is Outcome.MATCHED


async def test_replay_by_outcome_takes_only_events_received_since(client: TestClient) -> None:
    store = runtime_of(client).store
    old, new = stripe_event("evt_old", received_at=NOW - 7200), stripe_event("evt_new")
    await store.ingest([(old, unmapped()), (new, unmapped())], NOW - 60)
    resp = await client.post(
        "/admin/events/replay",
        json={"outcome": "unmapped", "since": "2024-05-01T11:00:00"},  # no offset: UTC
        headers=AUTH,
    )
    assert (await resp.json())["transitions"] == 1
    assert [e.event_id for e in await store.ledger(7, 42)] == ["evt_new"]


async def test_replay_by_ids_skips_matched_events_so_nothing_is_queued_twice(
    client: TestClient,
) -> None:
    store = runtime_of(client).store
    done, lost = stripe_event("evt_done", lead_id=1), stripe_event("evt_lost", lead_id=2)
    await store.ingest([(done, matched(done, 1)), (lost, unmapped())], NOW - 60)
    resp = await client.post("/admin/events/replay", json={"ids": [1, 2]}, headers=AUTH)
    answer = await resp.json()
    assert (answer["events"], answer["skipped_matched"], answer["transitions"]) == (1, 1, 1)
    assert len(await store.ledger(7, 1)) == 1
    assert len(await store.ledger(7, 2)) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "body: give ids, or an outcome (and optionally since)"),
        ({"since": "2024-05-01T00:00:00Z"}, "body: give ids, or an outcome (and optionally since)"),
        (
            {"ids": [1], "outcome": "unmapped", "since": "2024-05-01T00:00:00Z"},
            "body: give either ids or an outcome, not both",
        ),
        (
            {"outcome": "matched", "since": "2024-05-01T00:00:00Z"},
            "outcome: must be one of unmapped or ignored",
        ),
        ({"outcome": "unmapped", "since": "yesterday"}, "since: not an ISO 8601 date and time"),
        ({"ids": [1], "dry_run": True}, "dry_run: unknown key"),
    ],
    ids=["empty", "since-alone", "both", "matched", "since-words", "extra"],
)
async def test_a_bad_replay_body_is_400_with_a_precise_message(
    client: TestClient, body: dict[str, Any], message: str
) -> None:
    resp = await client.post("/admin/events/replay", json=body, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"].startswith(message)


# --- stored events ----------------------------------------------------------------------


async def test_events_are_listed_newest_first_with_the_ids_replay_takes(
    client: TestClient,
) -> None:
    store = runtime_of(client).store
    done, lost = stripe_event("evt_done", lead_id=1), stripe_event("evt_lost", lead_id=2)
    await store.ingest([(done, matched(done, 1))], NOW - 60)
    await store.ingest([(lost, unmapped())], NOW - 30)
    resp = await client.get("/admin/events", params={"outcome": "unmapped"}, headers=AUTH)
    [listed] = await resp.json()
    assert (listed["event_id"], listed["outcome"], listed["source"]) == (
        "evt_lost",
        "unmapped",
        "stripe",
    )
    assert "payload" not in listed and "headers" not in listed
    resp = await client.post(
        "/admin/events/replay", json={"ids": [listed["event_pk"]]}, headers=AUTH
    )
    assert (await resp.json())["transitions"] == 1
    resp = await client.get("/admin/events", params={"limit": "1"}, headers=AUTH)
    assert [e["event_id"] for e in await resp.json()] == ["evt_lost"]
    resp = await client.get("/admin/events", params={"limit": "0", "colour": "red"}, headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"] == "limit: must be at least 1; colour: unknown key"


# --- a lead's ledger and stats --------------------------------------------------------


async def test_a_leads_ledger_is_answered_newest_first(client: TestClient) -> None:
    store = runtime_of(client).store
    await seed_dead(store, "evt_1")
    later = stripe_event("evt_2", received_at=NOW - 10)
    await store.ingest([(later, matched(later))], NOW - 10)
    resp = await client.get("/admin/leads/7/42", headers=AUTH)
    assert resp.status == 200
    ledger = await resp.json()
    assert [(e["event_id"], e["state"]) for e in ledger] == [
        ("evt_2", "pending"),
        ("evt_1", "dead"),
    ]
    assert ledger[1]["reason"] == "Voxys answered 422"
    assert ledger[1]["last_attempt_iso"] == "2024-05-01T11:59:30.000Z"
    assert await (await client.get("/admin/leads/7/43", headers=AUTH)).json() == []


async def test_a_lead_path_with_non_integer_ids_is_400(client: TestClient) -> None:
    resp = await client.get("/admin/leads/7/abc", headers=AUTH)
    assert resp.status == 400
    assert (await resp.json())["error"] == "account_id and lead_id must be integers"


async def test_stats_count_states_outcomes_retrying_and_the_oldest_pending_age(
    client: TestClient,
) -> None:
    store = runtime_of(client).store
    await seed_dead(store, "evt_1")
    pending = stripe_event("evt_2", lead_id=5)
    lost = stripe_event("evt_3")
    await store.ingest([(pending, matched(pending, 5)), (lost, unmapped())], NOW - 100)
    resp = await client.get("/admin/stats", headers=AUTH)
    assert resp.status == 200
    body = await resp.json()
    assert body["transitions"]["dead"] == 1
    assert body["transitions"]["pending"] == 1
    assert body["events"] == {"matched": 2, "ignored": 0, "unmapped": 1}
    assert body["retrying"] == 0
    assert body["oldest_pending_age_s"] == 100.0
    assert body["paused_tokens"] == 0


# --- the CLI on a stopped store -------------------------------------------------------


def seeded(bundle: Bundle, work: Callable[[Store], Any]) -> None:
    """Run `work` on the configured store, then close it: the server is not running."""

    async def run() -> None:
        store = open_store(bundle.config.storage.url)
        await store.open()
        try:
            await work(store)
        finally:
            await store.close()

    asyncio.run(run())


def run_cli(command: str, bundle: Bundle, **args: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = admin_cli.cli_main(command, argparse.Namespace(**args), bundle, out, err)
    return code, out.getvalue(), err.getvalue()


def test_cli_lists_and_retries_dead_letters_while_the_server_is_down(
    make_bundle: MakeBundle,
) -> None:
    bundle = make_bundle()
    seeded(bundle, lambda store: seed_dead(store, "evt_1", "evt_2"))
    code, out, _ = run_cli("dead-letters", bundle, action="list", json=False)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["id", "event", "lead", "status"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["2", "2", "7/43"],
        ["1", "1", "7/42"],
    ]  # newest first; the transition's id (for retry) and its event's (for replay)
    assert lines[1].endswith("422   2024-05-01 11:59:30Z  Voxys answered 422")
    code, out, _ = run_cli("dead-letters", bundle, action="retry", id=[1], json=False)
    assert (code, out) == (0, "re-queued 1 dead letter(s)\n")
    code, out, _ = run_cli("dead-letters", bundle, action="list", json=True)
    assert [d["event_id"] for d in json.loads(out)] == ["evt_2"]


def test_cli_replay_of_unmapped_events_since_a_time_queues_their_transitions(
    make_bundle: MakeBundle,
) -> None:
    bundle = make_bundle()
    event = stripe_event("evt_1")

    async def seed(store: Store) -> None:
        await store.ingest([(event, unmapped())], NOW - 60)

    seeded(bundle, seed)
    code, out, _ = run_cli(
        "replay", bundle, id=None, outcome="unmapped", since="2024-05-01T11:00:00Z", json=False
    )
    assert code == 0
    assert out.splitlines() == [
        "replayed 1 event(s): matched 1, ignored 0, unmapped 0",
        "queued 1 transition(s)",
    ]
    code, out, _ = run_cli("explain", bundle, lead="7/42", json=True)
    assert [(e["event_id"], e["state"]) for e in json.loads(out)] == [("evt_1", "pending")]


def test_cli_replay_with_a_bad_since_is_a_usage_error(make_bundle: MakeBundle) -> None:
    bundle = make_bundle()
    code, out, err = run_cli(
        "replay", bundle, id=None, outcome="unmapped", since="last tuesday", json=False
    )
    assert (code, out) == (2, "")
    assert err.startswith("error: since: not an ISO 8601 date and time")


def test_cli_explain_prints_a_readable_ledger(make_bundle: MakeBundle) -> None:
    bundle = make_bundle()
    seeded(bundle, lambda store: seed_dead(store, "evt_1"))
    code, out, _ = run_cli("explain", bundle, lead="42", json=False)  # account from config
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == [
        "time",
        "id",
        "event",
        "status",
        "state",
        "rule",
        "source/event_id",
        "attempts",
        "reason",
    ]
    assert row.split() == [
        "2024-05-01",
        "11:58:55Z",
        "1",
        "1",
        "won",
        "dead",
        "stripe-paid",
        "stripe/evt_1",
        "1",
        "Voxys",
        "answered",
        "422",
    ]
    code, out, err = run_cli("explain", bundle, lead="7/x", json=False)
    assert code == 2
    assert "ACCOUNT/LEAD" in err


def test_cli_stats_counts_what_the_store_holds(make_bundle: MakeBundle) -> None:
    bundle = make_bundle()
    seeded(bundle, lambda store: seed_dead(store, "evt_1"))
    code, out, _ = run_cli("stats", bundle, json=True)
    assert code == 0
    body = json.loads(out)
    assert body["transitions"]["dead"] == 1
    assert body["events"]["matched"] == 1
    code, out, _ = run_cli("stats", bundle, json=False)
    assert "transitions dead" in out


@pytest.mark.slow
def test_the_console_script_prints_stats_as_json(make_bundle: MakeBundle, tmp_path: Path) -> None:
    bundle = make_bundle()
    seeded(bundle, lambda store: seed_dead(store, "evt_1"))
    root = Path(bridge.__file__).parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "stats", "--json", "-c", str(tmp_path / "bridge.yaml")],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["transitions"]["dead"] == 1
