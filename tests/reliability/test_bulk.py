"""Bulk delivery on real processes: the `voxys-bridge serve` console script against
`voxys-bridge sandbox` in a process of its own, checked from outside (what Voxys saw,
what the store and the logs say).

A backlog forms without any trick: with `max_in_flight: 1` and a sandbox that answers
after a delay, the first event goes out alone as a PATCH at once, and whatever arrives
while it is in flight is due together when it returns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.store import open_store
from tests.conftest import free_port
from tests.reliability.conftest import (
    STRIPE_SECRET,
    VOXYS_TOKEN,
    ServerProcess,
    bridge_config,
    write_yaml,
)
from tests.reliability.fleet import ACCOUNT, STATUS_RULE, Sandbox
from tests.reliability.promises import verdict
from tests.reliability.traffic import status_event, stripe_signed

NOTES_RULE = {**STATUS_RULE, "name": "with-notes", "notes": "order {{ event.id }}"}


class Bench:
    """One sandbox and one bridge; both killed at the end of the test."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.sandbox: Sandbox | None = None
        self.server: ServerProcess | None = None

    def start(
        self,
        *,
        latency: float = 0.3,
        sandbox: Sequence[str] = (),
        rules: Sequence[dict[str, Any]] = (STATUS_RULE,),
        bulk: dict[str, Any] | None = None,
        rate: int = 20,
        not_found: dict[str, Any] | None = None,
    ) -> ServerProcess:
        self.sandbox = Sandbox(self.tmp_path, VOXYS_TOKEN, latency=latency, extra=sandbox)
        port = free_port()
        self.db = self.tmp_path / "bridge.db"
        config = bridge_config(
            port=port, db=self.db, voxys_url=self.sandbox.url, rate=rate, max_in_flight=1
        )
        config["voxys"]["bulk"] = bulk or {"enabled": True, "min_batch": 3, "max_batch": 10}
        config["voxys"]["retry"]["not_found"] = not_found or {"attempts": 1, "backoff": "1s"}
        config["rules"] = list(rules)
        path = write_yaml(self.tmp_path / "bridge.yaml", config)
        self.server = ServerProcess(path, port, self.tmp_path / "server.log", self.env)
        self.server.start()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.sandbox is not None:
            self.sandbox.stop()

    async def post(self, events: Sequence[tuple[str, bytes]]) -> None:
        """Post every event at once; each must be answered 2xx."""
        assert self.server is not None
        async with aiohttp.ClientSession() as session:

            async def one(body: bytes) -> None:
                async with session.post(
                    f"{self.server.url}/webhooks/stripe",  # type: ignore[union-attr]
                    data=body,
                    headers=stripe_signed(body, STRIPE_SECRET),
                ) as resp:
                    assert resp.status == 200, await resp.text()

            await asyncio.gather(*(one(body) for _, body in events))

    async def settled(self, leads: Sequence[int], timeout: float = 30.0) -> dict[str, int]:
        """Wait until nothing is pending or in flight for these leads; states counted."""
        deadline = time.monotonic() + timeout
        while True:
            counts = await self.states(leads)
            if not counts.get("pending") and not counts.get("in_flight"):
                return counts
            assert time.monotonic() < deadline, f"not settled in {timeout} s: {counts}"
            await asyncio.sleep(0.1)

    async def states(self, leads: Sequence[int]) -> dict[str, int]:
        store = open_store(f"sqlite:///{self.db}")
        await store.open()
        try:
            counts: dict[str, int] = {}
            for lead in leads:
                for entry in await store.ledger(ACCOUNT, lead):
                    counts[str(entry.state)] = counts.get(str(entry.state), 0) + 1
            return counts
        finally:
            await store.close()

    def log(self, event: str) -> list[dict[str, Any]]:
        import json

        assert self.server is not None
        lines = [line for line in self.server.output().splitlines() if line.startswith("{")]
        return [doc for doc in map(json.loads, lines) if doc.get("event") == event]

    def requests(self) -> list[dict[str, Any]]:
        assert self.sandbox is not None
        return self.sandbox.requests()


@pytest.fixture
def bench(tmp_path: Path, rlb_env: dict[str, str]) -> Iterator[Bench]:
    made = Bench(tmp_path, rlb_env)
    try:
        yield made
    finally:
        made.stop()


def events(
    leads: Sequence[int], status: str = "won", prefix: str = "evt"
) -> list[tuple[str, bytes]]:
    created = int(time.time()) - 60
    return [status_event(lead, status, created + n, prefix) for n, lead in enumerate(leads)]


def bulk_calls(requests: Sequence[dict[str, Any]]) -> list[list[int]]:
    return [c["body"]["lead_ids"] for c in requests if c["method"] == "POST"]


def patched(requests: Sequence[dict[str, Any]]) -> list[int]:
    return [c["lead_id"] for c in requests if c["method"] == "PATCH"]


async def test_a_lone_event_is_patched_at_once_and_a_backlog_goes_in_batches(bench: Bench) -> None:
    server = bench.start()
    await server.wait_healthy()
    await asyncio.sleep(1.1)  # the pacer's quiet first window: "at once" is measured after it

    posted = time.monotonic()
    await bench.post(events([1]))
    while not bench.requests():
        assert time.monotonic() - posted < 2.0, "the lone event did not go out"
        await asyncio.sleep(0.01)
    [lone] = bench.requests()
    assert (lone["method"], lone["lead_id"]) == ("PATCH", 1)

    leads = list(range(100, 130))
    await bench.post(events(leads))
    counts = await bench.settled([1, *leads])

    assert counts == {"delivered": 31}
    seen = verdict(bench.sandbox.arrivals(), 1.0)  # type: ignore[union-attr]
    assert all(seen.final[lead] == "won" for lead in [1, *leads])
    batches = bulk_calls(bench.requests())
    assert batches and all(3 <= len(b) <= 10 for b in batches)
    assert sum(len(b) for b in batches) >= 20  # most of the backlog went in bulk
    assert len(bench.requests()) <= 12  # 31 leads
    [line] = [d for d in bench.log("bulk.delivered") if d["leads"] == len(batches[0])][:1]
    assert (line["account_id"], line["status"], line["delivered"]) == (
        ACCOUNT,
        "won",
        line["leads"],
    )


@pytest.mark.parametrize(
    ("rule", "notes", "in_bulk"),
    [
        (NOTES_RULE, "keep", False),
        (NOTES_RULE, "drop", True),
        ({**STATUS_RULE, "bulk": False}, "keep", False),
    ],
    ids=["notes-keep", "notes-drop", "rule-bulk-false"],
)
async def test_notes_and_a_rules_bulk_false_decide_what_may_go_in_bulk(
    bench: Bench, rule: dict[str, Any], notes: str, in_bulk: bool
) -> None:
    server = bench.start(
        latency=0.3 if in_bulk else 0.1,  # a backlog only matters where batches may form
        rules=[rule],
        bulk={"enabled": True, "min_batch": 3, "max_batch": 10, "notes": notes},
    )
    await server.wait_healthy()
    leads = list(range(1, 13))

    await bench.post(events(leads))
    counts = await bench.settled(leads)

    assert counts == {"delivered": 12}
    batched = [lead for b in bulk_calls(bench.requests()) for lead in b]
    if not in_bulk:
        assert batched == [] and sorted(patched(bench.requests())) == leads
        return
    assert len(batched) >= 9
    store = open_store(f"sqlite:///{bench.db}")
    await store.open()
    try:
        [entry] = await store.ledger(ACCOUNT, batched[0])
    finally:
        await store.close()
    assert entry.notes_dropped and entry.batch_id is not None and entry.batch_size
    explained = await asyncio.to_thread(explain, bench, batched[0])
    assert f"batch {entry.batch_id} of {entry.batch_size} leads" in explained
    assert "notes not sent" in explained


def explain(bench: Bench, lead: int) -> str:
    import subprocess

    from tests.reliability.conftest import SCRIPT

    assert bench.server is not None
    done = subprocess.run(
        [SCRIPT, "explain", "--config", str(bench.server.config), "--lead", f"{ACCOUNT}/{lead}"],
        env=bench.env,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout


async def test_a_short_count_isolates_each_unknown_lead_for_the_404_policy(bench: Bench) -> None:
    leads = list(range(1, 21))
    unknown = {7, 16}
    known = ",".join(f"{ACCOUNT}/{lead}" for lead in leads if lead not in unknown)
    server = bench.start(
        sandbox=["--seed-leads", known], bulk={"enabled": True, "min_batch": 3, "max_batch": 20}
    )
    await server.wait_healthy()

    await bench.post(events([100 + 0]))  # unknown too: seeded leads only exist
    await bench.post(events(leads))
    counts = await bench.settled([*leads, 100])

    assert counts == {"delivered": 18, "dead": 3}
    store = open_store(f"sqlite:///{bench.db}")
    await store.open()
    try:
        dead = sorted(e.lead_id for e in await store.dead_letters())
    finally:
        await store.close()
    assert dead == [7, 16, 100]
    # Each unknown lead was PATCHed alone before its dead letter: the 404 was its own.
    assert {7, 16} <= set(patched(bench.requests()))
    assert all(len(b) >= 2 for b in bulk_calls(bench.requests()))


@pytest.mark.parametrize("status", [413, 422])
async def test_a_batch_refused_as_too_large_halves_the_batch_for_the_process(
    bench: Bench, status: int
) -> None:
    server = bench.start(
        sandbox=["--bulk-limit", f"5:{status}"],
        bulk={"enabled": True, "min_batch": 2, "max_batch": 20},
    )
    await server.wait_healthy()
    leads = list(range(1, 22))

    await bench.post(events(leads))
    counts = await bench.settled(leads)

    assert counts == {"delivered": 21}
    sizes = [len(b) for b in bulk_calls(bench.requests())]
    refused = [c for c in bench.requests() if c["status"] == status]
    assert refused and all(len(c["body"]["lead_ids"]) > 5 for c in refused)
    shrunk = [line["max_batch"] for line in bench.log("bulk.too_large")]
    assert shrunk == sorted(shrunk, reverse=True) and shrunk[-1] <= 5
    assert sizes[-1] <= 5  # what went out after the last refusal fit


async def test_without_a_bulk_endpoint_the_bridge_falls_back_to_patch_and_says_so_once(
    bench: Bench,
) -> None:
    server = bench.start(latency=0.1, sandbox=["--no-bulk"])
    await server.wait_healthy()
    leads = list(range(1, 16))

    await bench.post(events(leads))
    await bench.settled(leads)
    await bench.post(events(list(range(20, 35)), prefix="more"))
    counts = await bench.settled(list(range(20, 35)))

    assert counts == {"delivered": 15}
    assert len(bench.log("bulk.unavailable")) == 1
    assert len([c for c in bench.requests() if c["method"] == "POST"]) == 1  # the one 404
    assert sorted(patched(bench.requests())) == [*leads, *range(20, 35)]


async def test_of_two_pending_transitions_of_a_lead_only_the_newest_is_sent(bench: Bench) -> None:
    server = bench.start(latency=1.0)
    await server.wait_healthy()
    leads = list(range(1, 16))
    created = int(time.time()) - 60
    older = [status_event(lead, "won", created + lead, "old") for lead in leads]
    newer = [status_event(lead, "lost", created + 100 + lead, "new") for lead in leads]

    await bench.post(events([99]))  # alone: in flight for 1 s while the rest is stored
    await bench.post(older + newer)
    counts = await bench.settled([99, *leads])

    assert counts == {"delivered": 16, "superseded": 15}
    sent = [(a.lead, a.status) for a in bench.sandbox.arrivals()]  # type: ignore[union-attr]
    assert not [s for s in sent if s[1] == "won" and s[0] != 99]
    assert sorted(lead for lead, status in sent if status == "lost") == leads


async def test_a_sigkill_during_a_bulk_request_loses_nothing_and_repeats_at_most_one_batch(
    bench: Bench,
) -> None:
    server = bench.start(latency=1.5, bulk={"enabled": True, "min_batch": 3, "max_batch": 50})
    await server.wait_healthy()
    leads = list(range(1, 41))

    await bench.post(events([99]))  # alone; the backlog is stored while it is in flight
    await bench.post(events(leads))
    deadline = time.monotonic() + 10
    while not bench.requests():  # the lone PATCH answered: the batch leaves right after
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.5)
    server.kill()  # the batch is in flight at the sandbox (1.5 s to answer)
    server.start()
    await server.wait_healthy()
    counts = await bench.settled([99, *leads], timeout=30)

    assert counts == {"delivered": 41}
    seen = verdict(bench.sandbox.arrivals(), 1.0)  # type: ignore[union-attr]
    assert all(seen.final[lead] == "won" for lead in [99, *leads])
    assert 1 <= seen.duplicates <= 40  # the batch in flight, sent again after the restart
    assert bench.log("delivery.recovered")
