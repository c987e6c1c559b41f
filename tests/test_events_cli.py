"""`events list`, and the ids it shows in `explain`, `dead-letters list` and `replay --id`,
through the real console script on a store seeded the way the server fills it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.lease import take_free
from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition, Unmapped
from bridge.store import open_backend
from tests.conftest import WriteConfig, stripe_event

pytestmark = pytest.mark.slow

SCRIPT = str(Path(sys.executable).parent / "voxys-bridge")
T0 = 1_714_564_800.0  # 2024-05-01T12:00:00Z


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [SCRIPT, *args, "--config", str(config)], capture_output=True, text=True, check=False
    )
    assert "Traceback" not in result.stderr
    return result


def event(event_id: str, lead: int, received_at: float, source: str = "stripe") -> Event:
    body = json.loads(stripe_event(event_id, lead_id=lead))
    return Event(source, event_id, received_at, received_at, body, {})


async def seed(url: str) -> None:
    """Given: a delivered, a dead, an ignored and two unmapped events, received in turn."""
    backend = open_backend(url)
    store = backend.store
    await store.open()
    term = await take_free(backend.lease)  # as the deliverer would
    try:
        won = Transition("stripe-paid", 7, 42, LeadStatus.WON, None)
        matched = Evaluation(Outcome.MATCHED, (won,), (), ("stripe-paid",))
        unmapped = Evaluation(
            Outcome.UNMAPPED, (), (Unmapped("stripe-paid", "lead_id is empty"),), ()
        )
        ignored = Evaluation(Outcome.IGNORED)
        await store.ingest([(event("evt_dead", 42, T0), matched)], T0)
        await store.ingest([(event("evt_ignored", 0, T0 + 1), ignored)], T0 + 1)
        await store.ingest([(event("evt_old_unmapped", 0, T0 - 86_400), unmapped)], T0 + 1)
        await store.ingest([(event("evt_unmapped", 0, T0 + 2, "billing"), unmapped)], T0 + 2)
        claim = await store.claim_due(T0 + 3, 10, coalesce=False, epoch=term.epoch)
        await store.mark_dead(
            claim.claimed[0].id,
            T0 + 4,
            reason="Voxys answered 422",
            http_status=422,
            epoch=term.epoch,
        )
        await backend.lease.release(term.holder, term.epoch)
    finally:
        await store.close()


@pytest.fixture
def config(write_config: WriteConfig, tmp_path: Path) -> Path:
    path = write_config()
    asyncio.run(seed(f"sqlite:///{tmp_path / 'bridge.db'}"))
    return path


def test_events_list_shows_each_event_newest_first_with_its_id_outcome_and_why(
    config: Path,
) -> None:
    result = cli(config, "events", "list")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["event", "received", "source/event_id", "outcome", "rule", "reason"]
    assert [row.split()[3] for row in rows] == [
        "billing/evt_unmapped",
        "stripe/evt_ignored",
        "stripe/evt_dead",
        "stripe/evt_old_unmapped",
    ]
    assert rows[0].split()[4:] == ["unmapped", "stripe-paid", "lead_id", "is", "empty"]
    assert rows[1].split()[4:] == ["ignored", "-", "-"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--outcome", "unmapped"], ["evt_unmapped", "evt_old_unmapped"]),
        (["--source", "billing"], ["evt_unmapped"]),
        (["--since", "2024-05-01T12:00:01Z"], ["evt_unmapped", "evt_ignored"]),
        (["--outcome", "unmapped", "--since", "2024-05-01T00:00:00"], ["evt_unmapped"]),
        (["--limit", "2"], ["evt_unmapped", "evt_ignored"]),
    ],
)
def test_events_list_filters_by_outcome_source_and_time_and_stops_at_the_limit(
    config: Path, options: list[str], expected: list[str]
) -> None:
    result = cli(config, "events", "list", "--json", *options)
    assert result.returncode == 0, result.stderr
    assert [e["event_id"] for e in json.loads(result.stdout)] == expected


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--since", "yesterday"], "error: since: not an ISO 8601 date and time"),
        (["--limit", "0"], "error: limit: must be at least 1"),
        (["--outcome", "lost"], "argument --outcome: invalid choice: 'lost'"),
    ],
)
def test_events_list_refuses_bad_options_in_one_line(
    config: Path, options: list[str], message: str
) -> None:
    result = cli(config, "events", "list", *options)
    assert result.returncode == 2
    assert message in result.stderr


def test_the_ids_of_events_list_are_those_of_explain_dead_letters_and_replay(
    config: Path,
) -> None:
    events = json.loads(cli(config, "events", "list", "--json").stdout)
    pk = {e["event_id"]: e["event_pk"] for e in events}
    [dead] = json.loads(cli(config, "dead-letters", "list", "--json").stdout)
    [ledger] = json.loads(cli(config, "explain", "--lead", "7/42", "--json").stdout)
    assert dead["event_pk"] == ledger["event_pk"] == pk["evt_dead"]
    assert dead["id"] == ledger["id"]  # the transition, which `dead-letters retry --id` takes
    table = cli(config, "dead-letters", "list").stdout.splitlines()
    assert table[1].split()[:2] == [str(dead["id"]), str(pk["evt_dead"])]
    replayed = cli(config, "replay", "--id", str(pk["evt_unmapped"]), "--json")
    assert json.loads(replayed.stdout)["events"] == 1


def test_replay_by_outcome_without_since_takes_every_event_with_that_outcome(
    config: Path,
) -> None:
    help_text = cli(config, "replay", "--help").stdout
    assert "all of them, unless --since" in " ".join(help_text.split())
    result = cli(config, "replay", "--outcome", "unmapped", "--json")
    assert result.returncode == 0, result.stderr
    # both unmapped events, the one received a day earlier too: the stripe one is still
    # unmapped by the current rules, the billing one is now ignored (no rule for billing)
    assert json.loads(result.stdout)["outcomes"] == {"matched": 0, "ignored": 1, "unmapped": 1}
