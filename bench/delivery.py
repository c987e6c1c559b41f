"""Delivery: rate-limit accuracy with a backlog, and throughput against an instant fake Voxys.

Runs the real worker (store, client, pacer) in-process against `bridge.fakevoxys` on
loopback. Not a test; results go in docs/benchmarks.md with the command.

    python -m bench.delivery rate [--rate 20] [--seconds 60] [--backlog 2000]
    python -m bench.delivery throughput [--count 5000] [--in-flight 16]

The fake runs in a process of its own, as the real API is remote. `rate` prints the
largest number of PATCHes the fake received in any 1 s window (must never exceed the
limit) and the mean rate achieved. `throughput` prints transitions/s delivered with no
rate limit, beside a baseline measured in the same run: a bare aiohttp client sending
the same PATCHes with the same concurrency (`voxys.max_in_flight`) and no store.
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

import aiohttp

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
CONFIG = """
storage: {{url: "sqlite:///{db}"}}
voxys:
  base_url: "{url}"
  api_token: "{token}"
  account_id: 1
  rate_limit: {{requests: {rate}, per_seconds: 1}}
  max_in_flight: {in_flight}
logging: {{format: json, level: warning}}
sources: {{}}
"""


def item(n: int) -> tuple[Event, Evaluation]:
    event = Event(source="bench", event_id=f"e{n}", occurred_at=n, received_at=n, payload={})
    transition = Transition(rule="bench", account_id=1, lead_id=n + 1, status=LeadStatus.WON)
    return event, Evaluation(Outcome.MATCHED, (transition,), (), ("bench",))


async def setup(
    workdir: Path,
    rate: int,
    backlog: int,
    *,
    limited: bool,
    url: str | None = None,
    in_flight: int = 16,
) -> tuple[Any, ...]:
    fake = FakeVoxys(tokens=TOKEN)
    local_url = await fake.start()
    url = url or local_url
    path = workdir / "bridge.yaml"
    path.write_text(
        CONFIG.format(db=workdir / "b.db", url=url, token=TOKEN, rate=rate, in_flight=in_flight)
    )
    bundle = load_bundle(path)
    store = SqliteStore(workdir / "b.db")
    await store.open()
    for start in range(0, backlog, 1000):
        batch = [item(n) for n in range(start, min(backlog, start + 1000))]
        await store.ingest(batch, time.time())
    runtime = Runtime(bundle=bundle, store=store)
    client = VoxysClient(bundle.config.voxys, rate_limited=limited)
    await client.start()
    term = await take_free(SqliteLease(store))
    return fake, store, client, Deliverer(runtime, client, term)


def fake_process(conn: Connection) -> None:
    """A fake Voxys in its own process, as the real one is remote: arrivals are timed there."""

    async def serve() -> None:
        fake = FakeVoxys(tokens=TOKEN)
        conn.send(await fake.start())
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
        conn.send([c.at for c in fake.calls])
        await fake.stop()

    asyncio.run(serve())


async def rate_accuracy(rate: int, seconds: float, backlog: int) -> dict[str, Any]:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=fake_process, args=(child,))
    process.start()
    url = parent.recv()
    with tempfile.TemporaryDirectory() as tmp:
        local, store, client, deliverer = await setup(
            Path(tmp), rate, backlog, limited=True, url=url
        )
        task = asyncio.create_task(deliverer.run())
        await asyncio.sleep(seconds)
        await deliverer.stop(5.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        parent.send("stop")
        times: list[float] = parent.recv()
        process.join()
        await client.close()
        await store.close()
        await local.stop()
    span = times[-1] - times[0] if len(times) > 1 else 0.0
    mean = (len(times) - 1) / span if span else 0.0
    return {
        "scenario": "rate",
        "limit_per_s": rate,
        "seconds": seconds,
        "backlog": backlog,
        "requests": len(times),
        "max_in_any_1s_window": max_in_window(times, 1.0),
        "mean_rate_per_s": round(mean, 3),
        "mean_vs_limit": round(mean / rate, 4),
    }


async def baseline(url: str, count: int, concurrency: int) -> float:
    """A bare aiohttp client: `count` PATCHes with `concurrency` in flight, no store."""
    queue = iter(range(count))
    async with aiohttp.ClientSession(headers={"api_access_token": TOKEN}) as session:

        async def worker() -> None:
            for n in queue:
                path = f"/api/v1/accounts/1/leads/{n + 1}/status"
                async with session.patch(url + path, json={"status": "won"}) as resp:
                    await resp.read()

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return count / (time.perf_counter() - started)


async def throughput(count: int, in_flight: int) -> dict[str, Any]:
    parent, child = multiprocessing.Pipe()
    process = multiprocessing.get_context("spawn").Process(target=fake_process, args=(child,))
    process.start()
    url = parent.recv()
    with tempfile.TemporaryDirectory() as tmp:
        local, store, client, deliverer = await setup(Path(tmp), 1, count, limited=False, url=url)
        bare = await baseline(url, count, 16)
        started = time.perf_counter()
        task = asyncio.create_task(deliverer.run())
        while (await store.stats(time.time())).transitions["delivered"] < count:
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        await deliverer.stop(5.0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        parent.send("stop")
        parent.recv()
        process.join()
        await client.close()
        await store.close()
        await local.stop()
    bridge = count / elapsed
    return {
        "scenario": "throughput",
        "transitions": count,
        "max_in_flight": in_flight,
        "bridge_per_s": round(bridge),
        "baseline_per_s": round(bare),
        "ratio": round(bridge / bare, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery")
    sub = parser.add_subparsers(dest="scenario", required=True)
    r = sub.add_parser("rate")
    r.add_argument("--rate", type=int, default=20)
    r.add_argument("--seconds", type=float, default=60.0)
    r.add_argument("--backlog", type=int, default=2000)
    t = sub.add_parser("throughput")
    t.add_argument("--count", type=int, default=5000)
    t.add_argument("--in-flight", type=int, default=16, help="voxys.max_in_flight")
    args = parser.parse_args()
    logs.configure(level="warning", fmt="json", secrets=[TOKEN])
    if args.scenario == "rate":
        result = asyncio.run(rate_accuracy(args.rate, args.seconds, args.backlog))
    else:
        result = asyncio.run(throughput(args.count, args.in_flight))
    for key, value in result.items():
        print(f"{key:>22}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
