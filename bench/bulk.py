"""Bulk delivery: leads per second at one rate limit, with `voxys.bulk` off and on.

    python -m bench bulk [--count 20000] [--unknown-count 5000] [--rate 10]
                         [--latency 0.02] [--patch-seconds 20] [--mixed-seconds 20]
                         [--scenarios patch,bulk,bulk_1pct_unknown,mixed_keep,mixed_drop]

The real worker (store, client, pacer, batches) runs in this process against a fake
Voxys in a process of its own that answers after `--latency` seconds and stamps every
arrival. Each scenario starts from `--count` pending transitions for as many distinct
leads, due at once, on a fresh SQLite store:

- `patch`: bulk off (the baseline, measured in the same run). At 10 requests/s it
  would take ~2,000 s to drain 20,000 leads, so it runs `--patch-seconds` and its rate
  is the leads delivered over that time;
- `bulk`: bulk on (min_batch 10, max_batch 100), no notes: drained to the end;
- `bulk_1pct_unknown`: `--unknown-count` transitions (fewer: each unknown lead costs
  ~6 probes and 2-3 PATCHes, so this one is slower) with 1% of the leads unknown to
  Voxys, the 404 policy set to 2 attempts 1 s apart: drained until every known lead is
  delivered and every unknown one dead;
- `mixed_keep`: half the transitions carry notes (`notes: keep`: those are PATCHed),
  for `--mixed-seconds`; `mixed_drop`: the same with `notes: drop`, drained.

`--scenarios` runs some of them, in this order (`patch` always: it is the baseline).

Printed per scenario: leads delivered, seconds, leads/s, requests sent (by kind), the
leads of every bulk request (probes included), the most requests in any 1 s window at
Voxys, CPU seconds of this process per 1,000 leads, and the ratio to the PATCH-only
rate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bridge import logs
from bridge.bundle import load_bundle
from bridge.delivery import Deliverer
from bridge.fakevoxys import FakeVoxys, max_in_window
from bridge.lease import take_free
from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition
from bridge.runtime import Runtime
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite.lease import SqliteLease
from bridge.voxys import VoxysClient

TOKEN = "bench-token"  # noqa: S105 - a throwaway token for a local fake
ACCOUNT = 1
CONFIG = """
storage: {{url: "sqlite:///{db}"}}
voxys:
  base_url: "{url}"
  api_token: "{token}"
  account_id: 1
  rate_limit: {{requests: {rate}, per_seconds: 1}}
  max_in_flight: 16
  retry:
    not_found: {{attempts: 2, backoff: 1s}}
  bulk: {bulk}
logging: {{format: json, level: warning}}
sources: {{}}
"""


SCENARIOS = ("patch", "bulk", "bulk_1pct_unknown", "mixed_keep", "mixed_drop")


def fake_process(conn: Connection, latency: float, unknown: list[int]) -> None:
    """A fake Voxys in its own process, as the real one is remote: arrivals are timed there."""

    async def serve() -> None:
        fake = FakeVoxys(tokens=TOKEN)
        fake.latency = latency
        fake.unknown_leads = {(ACCOUNT, lead) for lead in unknown}
        conn.send(await fake.start())
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
        calls = [(c.at, len((c.body or {}).get("lead_ids") or [0])) for c in fake.calls]
        conn.send(calls)
        await fake.stop()

    asyncio.run(serve())


def settled(runtime: Runtime, state: str) -> float:
    """Transitions the worker settled in `state` so far (its metrics counter)."""
    found = runtime.metrics.registry.get_sample_value(
        "bridge_transitions_settled_total", {"state": state}
    )
    return found or 0.0


def item(n: int, notes: bool) -> tuple[Event, Evaluation]:
    event = Event(source="bench", event_id=f"e{n}", occurred_at=n, received_at=n, payload={})
    transition = Transition(
        rule="bench",
        account_id=ACCOUNT,
        lead_id=n + 1,
        status=LeadStatus.WON,
        notes=f"order {n}" if notes else None,
    )
    return event, Evaluation(Outcome.MATCHED, (transition,), (), ("bench",))


async def scenario(
    name: str,
    *,
    count: int,
    rate: int,
    latency: float,
    bulk: dict[str, Any],
    seconds: float | None = None,
    unknown_every: int | None = None,
    notes_every: int | None = None,
) -> dict[str, Any]:
    """Run one scenario: until drained (every lead delivered or dead), or for `seconds`."""
    unknown = [n + 1 for n in range(count) if unknown_every and n % unknown_every == 7]
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(
        target=fake_process, args=(child, latency, unknown)
    )
    process.start()
    url = parent.recv()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "bridge.yaml").write_text(
            CONFIG.format(
                db=workdir / "b.db", url=url, token=TOKEN, rate=rate, bulk=json.dumps(bulk)
            )
        )
        bundle = load_bundle(workdir / "bridge.yaml")
        store = SqliteStore(workdir / "b.db")
        await store.open()
        for start in range(0, count, 1000):
            chunk = range(start, min(count, start + 1000))
            notes = [bool(notes_every) and n % notes_every == 0 for n in chunk]
            await store.ingest([item(n, k) for n, k in zip(chunk, notes, strict=True)], time.time())
        runtime = Runtime(bundle=bundle, store=store)
        client = VoxysClient(bundle.config.voxys)
        await client.start()
        deliverer = Deliverer(runtime, client, await take_free(SqliteLease(store)))
        cpu, started = time.process_time(), time.perf_counter()
        task = asyncio.create_task(deliverer.run())
        while True:  # watched on the worker's own counters: no store reads meanwhile
            await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - started
            if settled(runtime, "delivered") + settled(runtime, "dead") >= count:
                break
            if seconds is not None and elapsed >= seconds:
                break
        cpu = time.process_time() - cpu
        states = (await store.stats(time.time())).transitions
        await deliverer.stop(5.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        parent.send("stop")
        calls: list[tuple[float, int]] = parent.recv()
        process.join()
        await client.close()
        await store.close()
    calls = [c for c in calls if c[0] > 0]
    delivered = int(settled(runtime, "delivered"))  # by the end of the measured time
    return {
        "scenario": name,
        "leads_delivered": delivered,
        "dead": states["dead"],
        "unknown_leads": len(unknown),
        "seconds": round(elapsed, 1),
        "leads_per_s": round(delivered / elapsed, 1),
        "requests": len(calls),
        "bulk_requests": sum(1 for _, n in calls if n > 1),
        "leads_in_bulk": sum(n for _, n in calls if n > 1),
        "max_in_any_1s": max_in_window([at for at, _ in calls], 1.0),
        "cpu_ms_per_1000_leads": round(cpu / max(1, delivered) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench bulk")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--unknown-count", type=int, default=5_000)
    parser.add_argument("--rate", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.02)
    parser.add_argument("--patch-seconds", type=float, default=20.0)
    parser.add_argument("--mixed-seconds", type=float, default=20.0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    chosen = {"patch", *args.scenarios.split(",")}
    if unknown := chosen - set(SCENARIOS):
        parser.error(f"--scenarios: no scenario {', '.join(sorted(unknown))}")
    logs.configure(level="warning", fmt="json", secrets=[TOKEN])
    common = {"count": args.count, "rate": args.rate, "latency": args.latency}
    on = {"enabled": True, "min_batch": 10, "max_batch": 100}
    runs = [
        ("patch", {"bulk": {"enabled": False}, "seconds": args.patch_seconds}),
        ("bulk", {"bulk": on}),
        ("bulk_1pct_unknown", {"bulk": on, "unknown_every": 100, "count": args.unknown_count}),
        ("mixed_keep", {"bulk": on, "notes_every": 2, "seconds": args.mixed_seconds}),
        ("mixed_drop", {"bulk": {**on, "notes": "drop"}, "notes_every": 2}),
    ]
    results: list[dict[str, Any]] = []
    for name, options in [run for run in runs if run[0] in chosen]:
        result = asyncio.run(scenario(name, **{**common, **options}))
        result["vs_patch"] = (
            round(result["leads_per_s"] / results[0]["leads_per_s"], 1) if (results) else 1.0
        )
        results.append(result)
        print(json.dumps(result), flush=True)
    keys = list(results[0])
    print(" | ".join(keys))
    for result in results:
        print(" | ".join(str(result[k]) for k in keys))


if __name__ == "__main__":
    main()
