"""Console: what one overview refresh costs the server, beside /admin/stats and /healthz.

Fills a SQLite store with N events received over the last day or so (90% matched, each
with one settled transition: 95% delivered, 5% dead; the deliverer is idle, as on a
quiet night), starts `voxys-bridge serve` on it
with an admin token, signs in through the form once, and then requests each URL
`--requests` times in a row from one keep-alive client, reading the server process's
CPU time (utime + stime, /proc/<pid>/stat) before and after each series.

    python -m bench console [--events 10000,100000] [--requests 300] [--json-out F]

An overview refresh is one Store call (`stats`: four SELECTs in one read transaction,
each a scan of an index of `events` or `transitions`) plus rendering the page;
/admin/stats makes the same call and answers JSON, /healthz touches nothing: the three
series separate the store's share from the page's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.ingest import Process, console_script, free_port, machine
from bridge.fakevoxys import FakeVoxys
from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition, Unmapped
from bridge.store.sqlite import SqliteStore

TOKEN = "bench-voxys-token"  # noqa: S105 - a throwaway token for a local fake
ADMIN = "bench-admin-token-0f3c9e"  # a throwaway token for a local server
CONFIG = """
server: {{host: 127.0.0.1, port: {port}, shutdown_timeout: 5s}}
storage: {{url: "sqlite:///{db}"}}
admin: {{token: "{admin}"}}
voxys:
  base_url: "{voxys}"
  api_token: "{token}"
  account_id: 1
logging: {{format: json, level: warning}}
sources: {{}}
"""
TICK = os.sysconf("SC_CLK_TCK")


def item(n: int, now: float) -> tuple[Event, Evaluation]:
    """Event n of a store received over the last N seconds: within storage.retention, so
    the server's hourly purge (run at start) keeps it. 90% matched, 7% ignored, 3%
    unmapped."""
    at = now - 100_000 + n * 0.5
    event = Event("bench", f"e{n}", at, at, {"type": "deal.won", "deal": {"id": n}})
    if n % 100 < 7:
        return event, Evaluation(Outcome.IGNORED)
    if n % 100 < 10:
        return event, Evaluation(Outcome.UNMAPPED, unmapped=(Unmapped("bench", "no lead"),))
    transition = Transition(rule="bench", account_id=1, lead_id=n + 1, status=LeadStatus.WON)
    return event, Evaluation(Outcome.MATCHED, (transition,), (), ("bench",))


async def fill(db: Path, events: int) -> float:
    """Store `events` events through the store API, in batches; seconds taken."""
    started = time.perf_counter()
    store = SqliteStore(db)
    await store.open()
    now = time.time()
    for first in range(0, events, 1000):
        batch = [item(n, now) for n in range(first, min(events, first + 1000))]
        await store.ingest(batch, now)
    await store.close()
    return time.perf_counter() - started


def settle(db: Path) -> None:
    """Mark every transition settled, as the deliverer would have left them.

    Done in SQL because delivering N transitions through the fake would take minutes and
    is not what is measured; the columns follow bridge/store/sqlite/schema.py.
    """
    with sqlite3.connect(db) as conn:
        conn.execute(
            "UPDATE transitions SET"
            " state = CASE WHEN id % 20 = 0 THEN 'dead' ELSE 'delivered' END,"
            " attempts = 1, next_attempt_at = NULL, first_attempt_at = created_at,"
            " last_attempt_at = created_at, settled_at = created_at,"
            " http_status = CASE WHEN id % 20 = 0 THEN 422 ELSE 200 END,"
            " reason = CASE WHEN id % 20 = 0 THEN 'HTTP 422: bench' END"
        )
        conn.execute(
            "UPDATE leads SET first_due_at = NULL, last_due_at = NULL,"
            " last_delivered_at = (SELECT max(occurred_at) FROM transitions t"
            " WHERE t.account_id = leads.account_id AND t.lead_id = leads.lead_id)"
        )


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


async def sign_in(session: aiohttp.ClientSession, base: str) -> None:
    form = await (await session.get(f"{base}/admin/ui/sign-in")).text()
    token = re.search(r'name="csrf" value="([^"]+)"', form)
    assert token is not None
    answer = await session.post(
        f"{base}/admin/ui/sign-in", data={"csrf": token.group(1), "token": ADMIN}
    )
    assert answer.status == 200 and "Overview" in await answer.text(), "sign-in failed"


async def series(
    session: aiohttp.ClientSession, url: str, pid: int, count: int, headers: dict[str, str]
) -> dict[str, Any]:
    for _ in range(20):  # warm up
        async with session.get(url, headers=headers) as answer:
            await answer.read()
    latencies = []
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    for _ in range(count):
        sent = time.perf_counter()
        async with session.get(url, headers=headers) as answer:
            body = await answer.read()
            assert answer.status == 200, answer.status
        latencies.append(time.perf_counter() - sent)
    wall = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu
    return {
        "requests": count,
        "bytes": len(body),
        "server_cpu_ms_per_request": round(cpu / count * 1000, 3),
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p95_ms": round(sorted(latencies)[int(count * 0.95) - 1] * 1000, 2),
        "requests_per_s": round(count / wall, 1),
    }


async def measure(events: int, count: int, voxys: str, work: Path) -> dict[str, Any]:
    db = work / f"console-{events}.db"
    filled = await fill(db, events)
    settle(db)
    port = free_port()
    config = work / f"console-{events}.yaml"
    config.write_text(CONFIG.format(port=port, db=db, admin=ADMIN, voxys=voxys, token=TOKEN))
    base = f"http://127.0.0.1:{port}"
    server = Process([console_script(), "serve", "--config", str(config)], work / "serve.log")
    await server.start(f"{base}/readyz")
    assert server.proc is not None
    pid = server.proc.pid
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    try:
        # unsafe: the jar keeps cookies of a server named by IP address (127.0.0.1)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            await sign_in(session, base)
            runs = {
                "overview": await series(session, f"{base}/admin/ui/", pid, count, {}),
                "admin_stats": await series(session, f"{base}/admin/stats", pid, count, bearer),
                "healthz": await series(session, f"{base}/healthz", pid, count, {}),
            }
    finally:
        await server.stop()
    return {"events": events, "fill_s": round(filled, 1), "runs": runs}


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| events in the store | URL | server CPU per request | p50 | p95 | page |",
        "|---|---|---|---|---|---|",
    ]
    for result in results:
        for name, run in result["runs"].items():
            lines.append(
                f"| {result['events']:,} | {name} | {run['server_cpu_ms_per_request']} ms"
                f" | {run['p50_ms']} ms | {run['p95_ms']} ms | {run['bytes']:,} B |"
            )
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fake = FakeVoxys(tokens=TOKEN)
    voxys = await fake.start()
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-console-") as work:
            for events in (int(n) for n in args.events.split(",")):
                results.append(await measure(events, args.requests, voxys, Path(work)))
    finally:
        await fake.stop()
    return {"machine": machine(), "load_1m": os.getloadavg()[0], "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench console", description=__doc__)
    parser.add_argument("--events", default="10000,100000")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--json-out")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(table(report["results"]))
    print(json.dumps(report))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
