"""Attacks on bulk delivery that broke it once, each kept as a specification: the real
`voxys-bridge serve` against `voxys-bridge sandbox` in a process of its own (the
`Bench` of test_bulk.py), checked from outside.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from tests.reliability.fleet import STATUS_RULE, Fleet
from tests.reliability.test_bulk import Bench, bulk_calls
from tests.reliability.test_handover import fault_mid_stream, sigkill, sigstop

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(90)]

KNOWN, UNKNOWN = 7, 8  # accounts: the sandbox knows the first only
# Each event names its account: the rule routes it there.
ROUTED_RULE = {**STATUS_RULE, "account_id": "{{ event.data.object.metadata.account }}"}


@pytest.fixture
def bench(tmp_path: Path, rlb_env: dict[str, str]) -> Iterator[Bench]:
    made = Bench(tmp_path, rlb_env)
    try:
        yield made
    finally:
        made.stop()


def routed(account: int, leads: Sequence[int], prefix: str) -> list[tuple[str, bytes]]:
    """One `won` event per lead, for `account`."""
    created = int(time.time()) - 60
    out = []
    for n, lead in enumerate(leads):
        event_id = f"{prefix}_{account}_{lead}"
        metadata = {"voxys_lead_id": str(lead), "status": "won", "account": str(account)}
        body = {
            "id": event_id,
            "object": "event",
            "type": "checkout.session.completed",
            "created": created + n,
            "data": {"object": {"metadata": metadata}},
        }
        out.append((event_id, json.dumps(body).encode()))
    return out


async def test_a_404_for_an_unknown_account_keeps_bulk_on_for_the_other_accounts(
    bench: Bench,
) -> None:
    # Given a Voxys that knows account 7 (its seeded leads) and not account 8: Voxys, a
    # Rails JSON API, answers 404 for an unknown account as for an unknown path, on the
    # bulk path too.
    known = list(range(1, 13))
    seeded = ",".join(f"{KNOWN}/{lead}" for lead in [99, *known])
    server = bench.start(sandbox=["--seed-leads", seeded], rules=[ROUTED_RULE])
    await server.wait_healthy()

    # When a batch for account 8 is answered 404 ...
    await bench.post(routed(KNOWN, [99], "lone"))  # alone: in flight while the rest waits
    await bench.post(routed(UNKNOWN, [1, 2, 3, 4, 5], "lost"))
    deadline = time.monotonic() + 10
    while not [c for c in bench.requests() if c["account_id"] == UNKNOWN]:
        assert time.monotonic() < deadline, "account 8's batch did not go out"
        await asyncio.sleep(0.02)
    # ... account 7's backlog still goes in bulk.
    await bench.post(routed(KNOWN, known, "known"))
    counts = await bench.settled(known)

    assert counts == {"delivered": 12}
    sent = [c for c in bench.requests() if c["account_id"] == KNOWN]
    assert sum(len(b) for b in bulk_calls(sent)) >= 9, [c["method"] for c in sent]
    # Account 8's leads met the 404 policy each on its own PATCH.
    unknown = [c for c in bench.requests() if c["account_id"] == UNKNOWN]
    assert {c["lead_id"] for c in unknown if c["method"] == "PATCH"} == {1, 2, 3, 4, 5}
    assert [len(b) for b in bulk_calls(unknown)] == [5]  # asked in bulk once, not again


async def test_the_missing_leads_patched_alone_keep_to_max_in_flight(bench: Bench) -> None:
    # Given max_in_flight 1, a Voxys answering in 0.4 s (well inside the 2 s timeout) and
    # a batch of which half the leads are unknown ...
    leads = list(range(1, 21))
    unknown = set(leads[1::2])
    seeded = ",".join(f"{KNOWN}/{lead}" for lead in [99, *leads] if lead not in unknown)
    server = bench.start(
        latency=0.4,
        sandbox=["--seed-leads", seeded],
        bulk={"enabled": True, "min_batch": 3, "max_batch": 20},
    )
    await server.wait_healthy()

    await bench.post(routed(KNOWN, [99], "lone"))
    await bench.post(routed(KNOWN, leads, "half"))
    counts = await bench.settled([99, *leads], timeout=60)

    # ... every unknown lead meets the 404 policy on its first PATCH, and no request
    # times out waiting for a connection the bridge itself holds: the leads PATCHed
    # alone go one at a time, as max_in_flight says.
    assert counts == {"delivered": 11, "dead": 10}
    timeouts = [d for d in bench.log("transition.retrying") if d.get("error") == "timeout"]
    assert timeouts == []
    patched = [c["lead_id"] for c in bench.requests() if c["method"] == "PATCH"]
    assert unknown <= set(patched)
    assert max(patched.count(lead) for lead in unknown) == 1


# --- the lease changing hands mid-batch (test_handover.py's faults, with bulk on) ----------

BULK = {"enabled": True, "min_batch": 2, "max_batch": 8}


@pytest.mark.parametrize("fault", ["sigkill", "sigstop"])
async def test_a_deliverer_killed_or_frozen_mid_batch_is_replaced_without_two_senders(
    storage: str, fleet: Fleet, fault: str
) -> None:
    # Never more than the rate in a window, every lead in its newest state, every
    # answered event settled, at most max_in_flight batches repeated (fault_mid_stream).
    strike = sigkill if fault == "sigkill" else sigstop(storage, inside_transaction=False)
    await fault_mid_stream(fleet, storage, 2, strike, bulk=BULK)
    assert any(a.bulk for a in fleet.sandboxes[0].arrivals())  # batches did form
