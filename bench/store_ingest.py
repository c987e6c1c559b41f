"""Ingest throughput of the SQLite store: events/s, commits and latency at 1 and 64 callers.

Each caller stores one ~1.5 KB event with one transition per call, as a webhook request
does, and waits for its commit before the next. Not a test; run it on a quiet machine:

    python bench/store_ingest.py [--events 20000] [--synchronous full,normal] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition
from bridge.store.sqlite import SqliteStore

PAYLOAD = {
    "id": "evt_0",
    "object": "event",
    "type": "checkout.session.completed",
    "created": 1_700_000_000,
    "livemode": False,
    "data": {
        "object": {
            "id": "cs_test_" + "a" * 58,
            "amount_total": 1999,
            "currency": "eur",
            "customer_details": {"email": "someone@example.com", "name": "Some One"},
            "metadata": {"voxys_lead_id": "42", "note": "x" * 900},
            "payment_status": "paid",
        }
    },
}


def item(n: int) -> tuple[Event, Evaluation]:
    event = Event(
        source="stripe",
        event_id=f"evt_{n}",
        occurred_at=1_700_000_000.0 + n,
        received_at=time.time(),
        payload={**PAYLOAD, "id": f"evt_{n}"},
        headers={"content-type": "application/json", "user-agent": "Stripe/1.0"},
    )
    transition = Transition("stripe-paid", 7, n % 5000, LeadStatus.WON, "Paid 1999")
    return event, Evaluation(Outcome.MATCHED, (transition,), matched_rules=("stripe-paid",))


async def run(path: Path, synchronous: str, callers: int, events: int) -> str:
    store = SqliteStore(path, synchronous=synchronous)
    await store.open()
    latencies: list[float] = []
    counter = iter(range(events))

    async def caller() -> None:
        for n in counter:
            one = [item(n)]
            started = time.perf_counter()
            await store.ingest(one, time.time())
            latencies.append(time.perf_counter() - started)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(callers)))
        elapsed = time.perf_counter() - started
        commits = store.commits
    finally:
        await store.close()
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return (
        f"synchronous={synchronous:<6} callers={callers:<3} {events / elapsed:>8,.0f} events/s"
        f"  commits={commits:<6} events/commit={events / commits:5.1f}"
        f"  p50={statistics.median(latencies) * 1000:.2f} ms  p99={p99 * 1000:.2f} ms"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--callers", default="1,64", help="comma-separated concurrencies")
    parser.add_argument("--synchronous", default="full,normal", help="full, normal or both")
    parser.add_argument("--dir", help="where the database goes (default: a temporary dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for synchronous in args.synchronous.upper().split(","):
            for callers in map(int, args.callers.split(",")):
                path = Path(tmp) / f"bench-{synchronous}-{callers}.db"
                print(await run(path, synchronous, callers, args.events), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
