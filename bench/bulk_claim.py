"""What one bulk claim costs the store when the oldest due leads are all PATCH-only.

    python -m bench bulk_claim [--pending 20000] [--requests 10] [--claims 10]
                               [--postgres DSN]

Each store (SQLite; PostgreSQL too with --postgres, in a schema of its own, dropped
after) starts from `--pending` transitions due at once, one per lead, in one of two
layouts:

- `front`: the older half carry notes (`notes: keep`: PATCH-only), the newer half may
  go in bulk: the oldest due leads a claim scans (`bridge.bulk.scan_size`, 5,000 here)
  hold no batch, and the claim looks further (`look_further`) for the newer half;
- `all_notes`: every transition carries notes: the claim looks further and finds none;
- `no_notes`: none does: the scan fills every request with a batch and the claim does
  not look further (what claiming as many leads costs without the extra query).

It then times `--claims` rounds of `claim_requests(requests)` (bulk 10..100), each
followed by an untimed settle of all it claimed as delivered, as the worker would. Each
layout runs twice on its own store: as the code is, and with `look_further` answering 0
(the claim as it was before it looked further: the baseline of the same run).

Printed: milliseconds per claim (median, max), of the extra query alone (median; `-`
when the claim never made it), leads and batches per claim.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import bridge.store.postgres.bulk
import bridge.store.sqlite.bulk
from bridge.lease import take_free
from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition
from bridge.store import open_backend
from bridge.store.base import BulkRules, Settle

T0 = 1_700_000_000.0
RULES = BulkRules(min_batch=10, max_batch=100)
LAYOUTS = ("front", "all_notes", "no_notes")


def item(n: int, notes: bool) -> tuple[Event, Evaluation]:
    event = Event(source="bench", event_id=f"e{n}", occurred_at=T0, received_at=T0, payload={})
    transition = Transition("bench", 1, n + 1, LeadStatus.WON, "order" if notes else None)
    return event, Evaluation(Outcome.MATCHED, (transition,), (), ("bench",))


FURTHER_TIMES: list[float] = []  # seconds of each `further_leads` query, as measured


@contextmanager
def timing_further() -> Iterator[None]:
    """Time each `further_leads` query (the extra query alone) into FURTHER_TIMES."""
    sqlite, postgres = bridge.store.sqlite.bulk, bridge.store.postgres.bulk
    saved = sqlite.further_leads, postgres.further_leads

    def timed_sqlite(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return saved[0](*args, **kwargs)
        finally:
            FURTHER_TIMES.append(time.perf_counter() - started)

    async def timed_postgres(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await saved[1](*args, **kwargs)
        finally:
            FURTHER_TIMES.append(time.perf_counter() - started)

    sqlite.further_leads = timed_sqlite
    postgres.further_leads = timed_postgres
    try:
        yield
    finally:
        sqlite.further_leads, postgres.further_leads = saved


@contextmanager
def scan_only() -> Iterator[None]:
    """Claims as before they looked further: `look_further` answers 0 meanwhile."""
    modules = (bridge.store.sqlite.bulk, bridge.store.postgres.bulk)
    saved = [module.look_further for module in modules]
    for module in modules:
        module.look_further = lambda *_: 0  # type: ignore[assignment]
    try:
        yield
    finally:
        for module, original in zip(modules, saved, strict=True):
            module.look_further = original  # type: ignore[assignment]


async def measure(url: str, layout: str, args: argparse.Namespace) -> dict[str, Any]:
    backend = open_backend(url)
    store = backend.store
    await store.open()
    term = await take_free(backend.lease)
    try:
        for start in range(0, args.pending, 1000):
            chunk = range(start, min(args.pending, start + 1000))
            front = {"front": args.pending // 2, "all_notes": args.pending, "no_notes": 0}[layout]
            await store.ingest([item(n, n < front) for n in chunk], T0)
        times: list[float] = []
        FURTHER_TIMES.clear()
        leads: list[int] = []
        batches: list[int] = []
        for _ in range(args.claims):
            started = time.perf_counter()
            claim = await store.claim_requests(
                T0 + 1, args.requests, bulk=RULES, coalesce=True, epoch=term.epoch
            )
            times.append(time.perf_counter() - started)
            claimed = [*claim.claimed, *(t for batch in claim.batches for t in batch)]
            leads.append(len(claimed))
            batches.append(len(claim.batches))
            settles = [Settle(t.id, "delivered", http_status=200) for t in claimed]
            await store.settle_many(settles, T0 + 1, epoch=term.epoch)
    finally:
        await backend.lease.release(term.holder, term.epoch)
        await backend.lease.close()
        await store.close()
    further = statistics.median(FURTHER_TIMES) * 1000 if FURTHER_TIMES else None
    return {
        "ms_per_claim_median": round(statistics.median(times) * 1000, 1),
        "further_query_ms": "-" if further is None else round(further, 1),
        "ms_per_claim_max": round(max(times) * 1000, 1),
        "leads_per_claim": round(statistics.mean(leads), 1),
        "batches_per_claim": round(statistics.mean(batches), 1),
    }


async def postgres_url(dsn: str, name: str) -> tuple[str, str]:
    schema = f"bench_bulk_claim_{name}_{os.getpid()}"
    return f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}", schema


async def drop(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    backends = ["sqlite", *(["postgresql"] if args.postgres else [])]
    for backend in backends:
        for layout in LAYOUTS:
            for mode in ("looks further", "scan only"):
                name = f"{layout}_{'scan' if mode == 'scan only' else 'further'}"
                with tempfile.TemporaryDirectory() as tmp:
                    schema = None
                    if backend == "sqlite":
                        url = f"sqlite:///{Path(tmp) / 'b.db'}"
                    else:
                        url, schema = await postgres_url(args.postgres, name)
                    try:
                        if mode == "scan only":
                            with scan_only():
                                figures = await measure(url, layout, args)
                        else:
                            with timing_further():
                                figures = await measure(url, layout, args)
                    finally:
                        if schema is not None:
                            await drop(args.postgres, schema)
                result = {"backend": backend, "layout": layout, "claim": mode, **figures}
                print(json.dumps(result), flush=True)
                results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench bulk_claim")
    parser.add_argument("--pending", type=int, default=20_000)
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--claims", type=int, default=10)
    parser.add_argument("--postgres", help="also measure PostgreSQL at this DSN")
    args = parser.parse_args()
    results = asyncio.run(run(args))
    keys = list(results[0])
    print(" | ".join(keys))
    for result in results:
        print(" | ".join(str(result[k]) for k in keys))
    print(json.dumps({"loadavg": os.getloadavg(), "settings": vars(args), "runs": results}))


if __name__ == "__main__":
    main()
