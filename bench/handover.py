"""Handover: how long delivery stops when the lease changes hands, and what the lease costs.

    python -m bench handover [--runs 3] [--ttl 6] [--rate 20] [--idle 30] [--postgres DSN]

Real `voxys-bridge serve` replicas on one store and Voxys as `voxys-bridge sandbox --json`
in a process of its own, which logs each request's arrival on the machine's monotonic
clock (the rig of tests/reliability/test_handover.py). Signed webhooks, one new lead
each, arrive at 1.25x the Voxys limit, so that the deliverer always has work; then:

- sigkill     the deliverer is SIGKILLed (SQLite: two processes; PostgreSQL: two replicas)
- sigterm     the deliverer is stopped cleanly (it releases the lease)
- lease-drop  pg_terminate_backend of the deliverer's lease connection (PostgreSQL)
- partition   the deliverer alone loses PostgreSQL (a proxy of the bench's own is cut),
              while it still reaches Voxys

The handover gap is the time from the old holder's last request to arrive at Voxys to the
new holder's first: the last arrival before the successor's `delivery.lease_acquired`
(its log's wall-clock time, put on the monotonic clock by an offset taken at start)
and the first after it. Also: fault -> successor acquired, acquired -> first send (the
quiet window), and the most requests in any 1 s window over the whole run.

Lease cost, idle (no webhooks), for `--idle` seconds with 1, 2 and 3 processes:
PostgreSQL - transactions committed in a throwaway database of the bench's own
(pg_stat_database.xact_commit, minus the bench's own two) and rows updated in its
`lease` table (pg_stat_user_tables.n_tup_upd); SQLite - write() calls and bytes written
per process (/proc/<pid>/io) and CPU seconds (/proc/<pid>/stat) of holder and standbys.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from bench.ingest import machine
from bridge.fakevoxys import max_in_window
from tests.reliability.conftest import ENV, STRIPE_SECRET, VOXYS_TOKEN
from tests.reliability.dbfaults import backends, proxied, terminate
from tests.reliability.fleet import Fleet, Replica, leader, start_all, until
from tests.reliability.traffic import Stream, status_event

Fault = Callable[[Fleet, Replica], Awaitable[None]]
OFFSET = time.time() - time.monotonic()  # wall clock -> monotonic, for log timestamps


def monotonic_of(line: dict[str, Any]) -> float:
    wall = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00")).timestamp()
    return wall - OFFSET


# --- one handover -----------------------------------------------------------------------


async def sigkill(fleet: Fleet, holder: Replica) -> None:
    holder.kill()


async def sigterm(fleet: Fleet, holder: Replica) -> None:
    holder.signal(signal.SIGTERM)


async def lease_drop(fleet: Fleet, holder: Replica) -> None:
    dsn = fleet.env["BENCH_DSN"]
    (pid,) = await backends(dsn, holder.pid, "voxys-bridge-lease")
    await terminate(dsn, [pid])


async def partition(fleet: Fleet, holder: Replica) -> None:
    fleet.proxies[fleet.started.index(holder)].cut()


FAULTS: dict[str, Fault] = {
    "sigkill": sigkill,
    "sigterm": sigterm,
    "lease-drop": lease_drop,
    "partition": partition,
}


async def handover(
    directory: Path, backend: str, fault: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Run one handover; its figures (seconds)."""
    fleet = Fleet(directory, {**os.environ, **ENV}, VOXYS_TOKEN)
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        sandbox = fleet.sandbox()
        if backend == "sqlite":
            urls = [f"sqlite:///{directory / 'bridge.db'}"] * 2
        else:
            fleet.env["BENCH_DSN"] = args.postgres
            port = urlsplit(args.postgres).port or 5432
            urls = [f"{args.postgres}?schema={schema}"] * 2
            if fault == "partition":  # each replica through a proxy of its own
                urls = [
                    f"{proxied(args.postgres, fleet.proxy(port).port)}?schema={schema}"
                    for _ in range(2)
                ]
        replicas = fleet.replicas(
            2, urls, sandbox.url, ttl=args.ttl, rate=args.rate, max_in_flight=4
        )
        await start_all(replicas[:1])
        holder = await leader(replicas[:1])
        await start_all(replicas[1:])
        successor = replicas[1]
        stream = Stream(replicas, STRIPE_SECRET, per_second=args.rate * 1.25)
        count = int(args.rate * 1.25 * (args.ttl + 5))  # posting outlasts the handover
        base = int(time.time()) - 3600
        events = [status_event(n, "won", base + n, prefix="h") for n in range(1, count + 1)]
        posting = asyncio.create_task(stream.post_all(events))
        await until(lambda: len(sandbox.arrivals()) >= args.rate * 2, 60, "steady delivery")
        if fault in ("sigkill", "sigterm"):
            stream.down.add(holder.name)
        struck = time.monotonic()
        await FAULTS[fault](fleet, holder)
        await posting
        await until(
            lambda: sum(a.http == 200 for a in sandbox.arrivals()) >= count, 120, "all delivered"
        )
        return measure(sandbox.arrivals(), holder, successor, struck)
    finally:
        fleet.close()
        if backend == "postgresql":
            await drop_schema(args.postgres, schema)


def measure(
    arrivals: list[Any], holder: Replica, successor: Replica, struck: float
) -> dict[str, Any]:
    times = [a.at for a in arrivals]
    acquired = [monotonic_of(line) for line in successor.lines("delivery.lease_acquired")]
    out: dict[str, Any] = {
        "max_in_1s": max_in_window(times, 1.0),
        # Windows wholly before the fault: one sender, the pacer and the instrument alone.
        "max_in_1s_before": max_in_window([t for t in times if t < struck], 1.0),
        "duplicates": len(arrivals) - len({a.lead for a in arrivals}),  # one event per lead
        "holder_terms": len(holder.lines("delivery.lease_acquired")),
    }
    if not acquired:  # no handover: the holder kept its lease
        after = [t for t in times if t >= struck - 1.0]
        out["handover"] = False
        out["longest_pause_s"] = round(max(b - a for a, b in itertools.pairwise(after)), 3)
        return out
    took = acquired[0]
    before = [t for t in times if t < took]
    first = min(t for t in times if t >= took)
    # Windows that hold a send of either side of the handover: the last second of the
    # old holder and the first of the new.
    around = [t for t in times if before[-1] - 1.0 < t < first + 1.0]
    out.update(
        max_in_1s_around=max_in_window(around, 1.0),
        handover=True,
        gap_s=round(first - before[-1], 3),
        fault_to_acquired_s=round(took - struck, 3),
        acquired_to_first_send_s=round(first - took, 3),
    )
    return out


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


# --- what the lease costs ---------------------------------------------------------------


def proc_io(pid: int) -> dict[str, float]:
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return {"syscw": int(io["syscw"]), "wchar": int(io["wchar"]), "cpu_s": cpu}


async def idle_cost(
    directory: Path, backend: str, processes: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Run `processes` idle replicas for `args.idle` seconds; what the store did meanwhile."""
    fleet = Fleet(directory, {**os.environ, **ENV}, VOXYS_TOKEN)
    database = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        sandbox = fleet.sandbox()
        if backend == "sqlite":
            url = f"sqlite:///{directory / 'idle.db'}"
        else:
            await admin(args.postgres, f"CREATE DATABASE {database}")
            url = with_database(args.postgres, database)
        replicas = fleet.replicas(
            processes, url, sandbox.url, ttl=args.ttl, rate=args.rate, max_in_flight=4
        )
        await start_all(replicas[:1])
        holder = await leader(replicas[:1])
        await start_all(replicas[1:])
        await asyncio.sleep(args.ttl)  # settle: start-up writes (migrations, first purge) done
        before = {r.name: proc_io(r.pid) for r in replicas}
        stats0 = await pg_counts(url) if backend == "postgresql" else None
        await asyncio.sleep(args.idle)  # the measurement window
        stats1 = await pg_counts(url) if backend == "postgresql" else None
        after = {r.name: proc_io(r.pid) for r in replicas}
        per_s = args.idle
        result: dict[str, Any] = {"processes": processes, "seconds": args.idle}
        for role, group in (("holder", [holder]), ("standby", replicas[1:])):
            if not group:
                continue
            deltas = [
                {k: after[r.name][k] - before[r.name][k] for k in before[r.name]} for r in group
            ]
            result[role] = {
                "writes_per_s": round(statistics.mean(d["syscw"] for d in deltas) / per_s, 2),
                "bytes_per_s": round(statistics.mean(d["wchar"] for d in deltas) / per_s),
                "cpu_ms_per_s": round(statistics.mean(d["cpu_s"] for d in deltas) / per_s * 1e3, 2),
            }
        if stats0 is not None and stats1 is not None:
            # The two reads of pg_stat_database are transactions of their own: not counted.
            result["xact_per_s"] = round((stats1[0] - stats0[0] - 2) / per_s, 2)
            result["lease_updates_per_s"] = round((stats1[1] - stats0[1]) / per_s, 2)
        return result
    finally:
        fleet.close()
        if backend == "postgresql":
            await admin(args.postgres, f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


async def pg_counts(url: str) -> tuple[int, int]:
    """(transactions committed in this database, rows updated in its lease table)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        xact = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        updated = await conn.fetchval(
            "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'lease'"
        )
        return int(xact), int(updated or 0)
    finally:
        await conn.close()


async def admin(dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


# --- the report ---------------------------------------------------------------------------


def summary(runs: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in runs if key in r]
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


async def run(args: argparse.Namespace) -> dict[str, Any]:
    plan = [("sqlite", "sigkill"), ("sqlite", "sigterm")]
    if args.postgres:
        plan += [(b, f) for b in ["postgresql"] for f in ("sigkill", "sigterm", "lease-drop")]
        plan += [("postgresql", "partition")]
    results: dict[str, Any] = {"machine": machine(), "ttl_s": args.ttl, "rate": args.rate}
    with tempfile.TemporaryDirectory(prefix="bench-handover-") as tmp:
        handovers = []
        for backend, fault in plan:
            runs = []
            for n in range(args.runs):
                directory = Path(tmp) / f"{backend}-{fault}-{n}"
                directory.mkdir()
                runs.append(await handover(directory, backend, fault, args))
            handovers.append({"backend": backend, "fault": fault, "runs": runs})
            print_handover(backend, fault, runs, args)
        results["handovers"] = handovers
        costs = []
        for backend in ["sqlite"] + (["postgresql"] if args.postgres else []):
            for processes in (1, 2, 3):
                directory = Path(tmp) / f"idle-{backend}-{processes}"
                directory.mkdir()
                cost = await idle_cost(directory, backend, processes, args)
                cost["backend"] = backend
                costs.append(cost)
                print(f"idle {backend} x{processes}: {json.dumps(cost)}", flush=True)
        results["idle"] = costs
    return results


def print_handover(backend: str, fault: str, runs: list[dict[str, Any]], args: Any) -> None:
    handed = [r for r in runs if r["handover"]]
    line = f"{backend:<10} {fault:<10} runs {len(runs)}, handed over {len(handed)}"
    if handed:
        line += (
            f"; gap {summary(handed, 'gap_s')} s, fault->acquired "
            f"{summary(handed, 'fault_to_acquired_s')} s, acquired->first send "
            f"{summary(handed, 'acquired_to_first_send_s')} s"
        )
    kept = [r for r in runs if not r["handover"]]
    if kept:
        line += f"; kept: longest pause {summary(kept, 'longest_pause_s')} s"
    line += f"; max in 1 s {max(r['max_in_1s'] for r in runs)} (limit {args.rate}"
    line += f"; before the fault {max(r['max_in_1s_before'] for r in runs)}"
    if handed:
        line += f"; around the handover {max(r['max_in_1s_around'] for r in handed)}"
    line += ")"
    line += f"; duplicates {max(r['duplicates'] for r in runs)}"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench handover")
    parser.add_argument("--runs", type=int, default=3, help="handovers per fault")
    parser.add_argument("--ttl", type=float, default=6.0, help="storage.lease_ttl, seconds")
    parser.add_argument("--rate", type=int, default=20, help="Voxys requests per second")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of the cost window")
    parser.add_argument("--postgres", help="a PostgreSQL DSN (schemas and a database are made)")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        result = asyncio.run(run(args))
        document = json.dumps(result)
        print(document)
        if args.json_out:
            args.json_out.write_text(document + "\n")


if __name__ == "__main__":
    main()
