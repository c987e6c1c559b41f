"""claim_due latency of the SQLite store with a large backlog of pending transitions.

Fills the store with `--pending` transitions spread over `--leads` leads (plus one lead
holding `--hot` of them), then times rounds of claim_due(limit) + mark_delivered, as the
delivery worker runs them. Not a test:

    python bench/store_claim.py [--pending 100000] [--leads 10000] [--hot 20000] [--limit 16]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bridge.lease import take_free
from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite.lease import SqliteLease

BATCH = 2000


def item(n: int, lead: int) -> tuple[Event, Evaluation]:
    event = Event("bench", f"evt_{n}", float(n), float(n), {"n": n, "pad": "x" * 200}, {})
    transition = Transition("rule", 1, lead, LeadStatus.WON if n % 2 else LeadStatus.LOST)
    return event, Evaluation(Outcome.MATCHED, (transition,), matched_rules=("rule",))


async def fill(store: SqliteStore, pending: int, leads: int, hot: int) -> float:
    started = time.perf_counter()
    for start in range(0, pending, BATCH):
        end = min(start + BATCH, pending)
        # The first `hot` transitions all belong to lead 0: one lead with a deep queue.
        batch = [item(n, 0 if n < hot else 1 + n % leads) for n in range(start, end)]
        await store.ingest(batch, now=1.0)
    return time.perf_counter() - started


async def run(path: Path, args: argparse.Namespace, coalesce: bool) -> None:
    store = SqliteStore(path, synchronous="NORMAL")
    await store.open()
    epoch = (await take_free(SqliteLease(store))).epoch
    try:
        filled = await fill(store, args.pending, args.leads, args.hot)
        timings: list[float] = []
        settled = 0
        for _ in range(args.rounds):
            started = time.perf_counter()
            claim = await store.claim_due(now=2.0, limit=args.limit, coalesce=coalesce, epoch=epoch)
            timings.append(time.perf_counter() - started)
            settled += len(claim.superseded) + len(claim.stale)
            for t in claim.claimed:
                await store.mark_delivered(t.id, now=2.0, http_status=200, epoch=epoch)
        started = time.perf_counter()
        stats = await store.stats(now=3.0)
        stats_ms = (time.perf_counter() - started) * 1000
    finally:
        await store.close()
    timings.sort()
    print(
        f"coalesce={coalesce!s:<5} pending={args.pending:,} leads={args.leads:,} hot={args.hot:,}"
        f" fill={args.pending / filled:,.0f} events/s\n"
        f"  claim_due(limit={args.limit}) x{args.rounds}: first={timings[0] * 1000:.2f} ms"
        f" p50={statistics.median(timings) * 1000:.2f} ms"
        f" p99={timings[int(len(timings) * 0.99) - 1] * 1000:.2f} ms"
        f" max={timings[-1] * 1000:.2f} ms (superseded+stale settled: {settled:,})\n"
        f"  stats: {stats_ms:.1f} ms, pending left {stats.transitions['pending']:,}",
        flush=True,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--hot", type=int, default=20_000)
    parser.add_argument("--limit", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--dir", help="where the database goes (default: a temporary dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for coalesce in (False, True):
            await run(Path(tmp) / f"claim-{coalesce}.db", args, coalesce)


if __name__ == "__main__":
    asyncio.run(main())
