"""Follow-ups: what 100,000 scheduled ones cost, and what they add to ingest.

    python -m bench followups [--count 100000] [--ingest-events 4000] [--runs 3]
                              [--baseline-src DIR] [--postgres DSN]
    python -m bench followups e2e [--concurrency 16] [--duration 10] [--runs 3]
                                  [--baseline-src DIR]

1. Waiting. Two SQLite stores of `count` events with one transition each (delivered, as
   if long ago), one of them with a follow-up per event due 1 to 30 days ahead. Reported
   beside each other: the file size, the RSS of `voxys-bridge serve` on each (at ready
   and after 5 s idle: the worker sleeps until the earliest due time), the time of one
   `claim_due` (each delivery step reads the earliest due follow-up in it), of one
   `fire_followups` when none is due (the index probe) and per follow-up when 1,000 fall
   due at once, and SQLite's plan for those reads. With --postgres, the same reads and the
   table's size on PostgreSQL (a schema of its own, dropped after).
2. Ingest. CPU time per stored event of `SqliteStore.ingest` (one event per call, 16
   callers, group-committed, as the server's webhooks are), each run in a fresh process
   on a copy of a prepared store, scenarios alternating: *empty* (an empty store, rules
   without follow-ups), *none* (a store of `count` events, no follow-up), *waiting* (the
   same with a follow-up scheduled for each; the new events are for other leads),
   *cancelling* (each new event is newer than a scheduled follow-up of its lead and
   cancels it), *scheduling* (the store of *none*; each new event schedules one). With
   --baseline-src DIR (e.g. `git archive fence bridge | tar -x -C DIR`), *empty* also runs
   on that code: what the per-lead lookup costs where no follow-up exists.

3. `e2e [--concurrency 16] [--duration 10] [--runs 3] [--baseline-src DIR]`: the real
   server (`voxys-bridge serve`, SQLite, JSON logs at info, delivering at 50 req/s to a
   fake Voxys) under wrk with unique signed Stripe events (bench/ingest.py's), variants
   alternating: the baseline code, this code, and this code with its rule scheduling a
   follow-up 100 years out for every event (none fires during a run). Reported: the
   server's CPU (user + system, /proc) per accepted webhook, the rate and p99.

CPU is the process's user + system time over the timed part (event loop and writer
thread); the machine is shared, so compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.ingest import Process, console_script, free_port, machine
from bench.recovery import disk_mb, rss_mb

DAY = 86400.0
T0 = 1_800_000_000.0  # the events' time; "now" in the timings below is T0 + 1 h
TOKEN = "bench-token"  # noqa: S105 - a throwaway token for a local fake
CALLERS = 16
SCENARIOS = ("empty", "none", "waiting", "cancelling", "scheduling")
CONFIG = """
server: {{host: 127.0.0.1, port: {port}, shutdown_timeout: 5s}}
storage: {{url: "sqlite:///{db}"}}
voxys:
  base_url: "{voxys}"
  api_token: "{token}"
  account_id: 1
  rate_limit: {{requests: 50, per_seconds: 1}}
logging: {{format: json, level: warning}}
sources: {{}}
"""
PAYLOAD = {
    "id": "evt_0",
    "object": "event",
    "type": "invoice.payment_failed",
    "created": int(T0),
    "data": {
        "object": {
            "id": "in_" + "a" * 24,
            "amount_due": 2900,
            "attempt_count": 2,
            "currency": "eur",
            "customer_email": "someone@example.com",
            "metadata": {"voxys_lead_id": "42", "note": "x" * 900},
            "status": "open",
        }
    },
}


# --- building stores ---------------------------------------------------------------------


def item(n: int, lead: int, *, follow_up: bool, at: float) -> Any:
    """An event for `lead` with one transition, and a follow-up 1-30 days on if asked."""
    from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition

    event = Event("bench", f"e{n}", at, at, {**PAYLOAD, "id": f"e{n}"})
    extra: dict[str, Any] = {}
    if follow_up:
        from bridge.models import FollowUp

        due = at + DAY * (1 + n % 30) + n % 3600
        extra["follow_up"] = FollowUp(LeadStatus.LOST, "still unpaid", due)
    transition = Transition("bench", 1, lead, LeadStatus.SNOOZED, "failed", **extra)
    return event, Evaluation(Outcome.MATCHED, (transition,), (), ("bench",))


async def fill(db: Path, count: int, *, follow_ups: bool) -> float:
    """`count` events (leads 1..count), each transition delivered; seconds taken."""
    from bridge.store.sqlite import SqliteStore

    started = time.perf_counter()
    store = SqliteStore(db)
    await store.open()
    for start in range(0, count, 1000):
        batch = [
            item(n, n + 1, follow_up=follow_ups, at=T0)
            for n in range(start, min(count, start + 1000))
        ]
        await store.ingest(batch, T0)
    await store.close()
    # As if delivered long ago: the server starts idle (a bench shortcut, not an API).
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("UPDATE transitions SET state = 'delivered', next_attempt_at = NULL")
        conn.execute("UPDATE leads SET first_due_at = NULL, last_due_at = NULL")
    conn.execute("VACUUM")
    conn.close()
    return time.perf_counter() - started


async def timed(call: Callable[[], Awaitable[Any]], repeat: int) -> float:
    """Median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def reads(url: str) -> dict[str, Any]:
    """Timings of the reads delivery does, on the store at `url` (its lease is free)."""
    from bridge.lease import take_free
    from bridge.store import open_backend

    backend = open_backend(url)
    await backend.store.open()
    term = await take_free(backend.lease)
    store, epoch, now = backend.store, term.epoch, T0 + 3600
    try:
        claim = await timed(lambda: store.claim_due(now, 16, coalesce=True, epoch=epoch), 200)
        probe = await timed(lambda: store.fire_followups(now, 500, epoch=epoch), 200)
        started = time.perf_counter()
        fired = await store.fire_followups(T0 + 31 * DAY, 1000, epoch=epoch)  # all due
        burst = time.perf_counter() - started
    finally:
        await backend.lease.release(term.holder, term.epoch)
        await backend.lease.close()
        await store.close()
    count = len(fired.fired)
    return {
        "claim_due_ms": round(claim * 1000, 3),
        "fire_none_due_ms": round(probe * 1000, 3),
        "fired": count,
        "fire_per_followup_us": round(burst / count * 1e6, 1) if count else "-",
    }


def lookup_us(db: Path, count: int, calls: int = 20_000) -> float:
    """µs of the follow-up side of storing one webhook's event when nothing is scheduled
    for its lead (`after_stored` of a group of one: the lookup), in a transaction rolled
    back."""
    from bridge.store.sqlite import followups as f

    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN")
        groups = []
        for n in range(calls):
            transition = item(n, count + n + 1, follow_up=False, at=T0)[1].transitions[0]
            groups.append([[(f.EventRef(0, "bench", "x", T0), [transition])]])
        started = time.perf_counter()
        for group in groups:
            f.after_stored(conn, group, [T0])
        elapsed = time.perf_counter() - started
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    return round(elapsed / calls * 1e6, 2)


def plans(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        queries = {
            "earliest due": "SELECT min(due_at) FROM followups WHERE state = 'scheduled'",
            "due now": "SELECT id FROM followups WHERE state = 'scheduled' AND due_at <= 1"
            " ORDER BY due_at, id LIMIT 500",
            "a lead's scheduled": "SELECT id FROM followups WHERE account_id = 1 AND lead_id = 5"
            " AND state = 'scheduled'",
        }
        return {
            name: "; ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}"))
            for name, sql in queries.items()
        }
    finally:
        conn.close()


async def serve_rss(db: Path, workdir: Path, voxys: str) -> dict[str, float]:
    port = free_port()
    config = workdir / f"serve-{db.stem}.yaml"
    config.write_text(CONFIG.format(port=port, db=db, voxys=voxys, token=TOKEN))
    server = Process([console_script(), "serve", "--config", str(config)], workdir / "log")
    await server.start(f"http://127.0.0.1:{port}/readyz", timeout=60.0)
    assert server.proc is not None
    ready = rss_mb(server.proc.pid)
    cpu_before = _cpu_s(server.proc.pid)
    await asyncio.sleep(5.0)
    idle = rss_mb(server.proc.pid)
    cpu_idle = _cpu_s(server.proc.pid) - cpu_before
    await server.stop(signal.SIGTERM)
    return {
        "rss_mb_ready": round(ready, 1),
        "rss_mb_idle": round(idle, 1),
        "cpu_s_idle": round(cpu_idle, 2),
    }


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def waiting(count: int, workdir: Path, postgres: str | None) -> dict[str, Any]:
    from bridge.fakevoxys import FakeVoxys

    stores: dict[str, Any] = {}
    for name, follow_ups in (("without", False), ("with", True)):
        db = workdir / f"{name}.db"
        stores[name] = {"fill_s": round(await fill(db, count, follow_ups=follow_ups), 1)}
        stores[name]["store_mb"] = round(disk_mb(db), 2)
        stores[name]["lookup_us"] = lookup_us(db, count)
        shutil.copy(db, workdir / f"{name}-serve.db")  # the reads below fire 1,000
        stores[name].update(await reads(f"sqlite:///{db}"))
    fake = FakeVoxys(tokens=TOKEN)
    voxys = await fake.start()
    for name in ("without", "with"):
        stores[name].update(await serve_rss(workdir / f"{name}-serve.db", workdir, voxys))
    await fake.stop()
    result: dict[str, Any] = {"sqlite": stores, "plans": plans(workdir / "with.db")}
    if postgres:
        result["postgresql"] = await postgres_costs(postgres, count)
    return result


async def postgres_costs(dsn: str, count: int) -> dict[str, Any]:
    import asyncpg

    from bridge.store.postgres import PostgresStore

    out: dict[str, Any] = {}
    for name, follow_ups in (("without", False), ("with", True)):
        schema = f"bench_followups_{name}_{os.getpid()}"
        url = f"{dsn}{'&' if '?' in dsn else '?'}schema={schema}"
        store = PostgresStore.from_url(url)
        await store.open()
        try:
            for start in range(0, count, 1000):
                batch = [
                    item(n, n + 1, follow_up=follow_ups, at=T0)
                    for n in range(start, min(count, start + 1000))
                ]
                await store.ingest(batch, T0)
        finally:
            await store.close()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f'SET search_path = "{schema}"')
            await conn.execute("UPDATE transitions SET state = 'delivered', next_attempt_at = NULL")
            await conn.execute("UPDATE leads SET first_due_at = NULL, last_due_at = NULL")
            await conn.execute("VACUUM ANALYZE")
            size = await conn.fetchval(
                "SELECT pg_total_relation_size('followups') + pg_total_relation_size('events')"
                " + pg_total_relation_size('transitions') + pg_total_relation_size('leads')"
            )
            followups = await conn.fetchval("SELECT pg_total_relation_size('followups')")
            out[name] = {"tables_mb": round(size / 2**20, 2), "followups_mb": followups / 2**20}
            out[name].update(await reads(url))
        finally:
            await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            await conn.close()
    return out


# --- ingest ------------------------------------------------------------------------------


async def ingest_worker(db: Path, scenario: str, count: int, events: int) -> dict[str, float]:
    """Time `events` single-event ingests from CALLERS callers on the store at `db`."""
    from bridge.store.sqlite import SqliteStore

    if scenario == "cancelling":  # newer than, and on the leads of, the scheduled ones
        items = [item(count + n, n + 1, follow_up=False, at=T0 + 60) for n in range(events)]
    else:  # on leads of their own (the store has `count` events, or none for "empty")
        follow_up = scenario == "scheduling"
        items = [item(count + n, count + n + 1, follow_up=follow_up, at=T0) for n in range(events)]
    store = SqliteStore(db)
    await store.open()
    queue = iter(items)
    cancelled = 0

    async def caller() -> None:
        nonlocal cancelled
        for one in queue:
            result = await store.ingest([one], T0 + 60)
            changes = getattr(result, "followups", None)  # None on code without follow-ups
            cancelled += len(changes.cancelled) if changes is not None else 0

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CALLERS)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await store.close()
    return {"cpu_us": cpu / events * 1e6, "events_per_s": events / wall, "cancelled": cancelled}


def run_worker(src: Path | None, db: Path, scenario: str, count: int, events: int) -> dict:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    argv = [sys.executable, "-m", "bench.followups", "--count", str(count)]
    argv += ["--ingest-events", str(events), "worker", str(db), scenario]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=True)
    return json.loads(done.stdout.splitlines()[-1])


async def ingest(count: int, events: int, runs: int, workdir: Path, baseline: Path | None) -> dict:
    # Each run's store is a copy of one filled here (`count` events, with or without a
    # follow-up each), or starts empty in the worker (so that other code makes its schema).
    templates = {"with": workdir / "t-with.db", "without": workdir / "t-without.db"}
    for name, path in templates.items():
        await fill(path, count, follow_ups=name == "with")
    plan = [(s, None) for s in SCENARIOS]
    if baseline is not None:
        plan.insert(0, ("empty (baseline code)", baseline))
    rows: dict[str, list[dict[str, float]]] = {name: [] for name, _ in plan}
    for run in range(runs):
        for name, src in plan:
            scenario = name.split(" ")[0]
            db = workdir / f"run-{run}-{scenario}.db"
            if scenario in ("waiting", "cancelling"):
                shutil.copy(templates["with"], db)
            elif scenario in ("none", "scheduling"):
                shutil.copy(templates["without"], db)
            rows[name].append(run_worker(src, db, scenario, count, events))
            for path in db.parent.glob(f"{db.name}*"):
                path.unlink()
            print(f"  ingest run {run + 1}/{runs} {name:<22} {rows[name][-1]}", file=sys.stderr)
    return {
        name: {
            "cpu_us_per_event": round(statistics.median(r["cpu_us"] for r in results), 1),
            "events_per_s": round(statistics.median(r["events_per_s"] for r in results)),
            "cancelled_per_run": results[-1]["cancelled"],
            "runs_cpu_us": [round(r["cpu_us"], 1) for r in results],
        }
        for name, results in rows.items()
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-followups-") as tmp:
        workdir = Path(tmp)
        cost = await waiting(args.count, workdir, args.postgres)
        ingest_cost = await ingest(
            args.count, args.ingest_events, args.runs, workdir, args.baseline_src
        )
    return {
        "scenario": "followups",
        "machine": machine(),
        "count": args.count,
        "ingest_events": args.ingest_events,
        "callers": CALLERS,
        "load_average_1m_before_after": [load, os.getloadavg()[0]],
        "waiting": cost,
        "ingest": ingest_cost,
    }


def table(result: dict[str, Any]) -> str:
    s = result["waiting"]["sqlite"]
    lines = [f"{result['count']:,} events, SQLite           without follow-ups   with follow-ups"]
    for key, label in (
        ("store_mb", "store on disk (MB)"),
        ("rss_mb_ready", "server RSS at ready (MB)"),
        ("rss_mb_idle", "server RSS after 5 s (MB)"),
        ("cpu_s_idle", "server CPU in those 5 s (s)"),
        ("lookup_us", "cancel lookup per stored event (µs)"),
        ("claim_due_ms", "claim_due, nothing due (ms)"),
        ("fire_none_due_ms", "fire_followups, none due (ms)"),
        ("fire_per_followup_us", "firing 1,000 due, each (µs)"),
    ):
        lines.append(f"  {label:<30}{s['without'][key]!s:>20}{s['with'][key]!s:>18}")
    for name, plan in result["waiting"]["plans"].items():
        lines.append(f"  plan, {name}: {plan}")
    if "postgresql" in result["waiting"]:
        p = result["waiting"]["postgresql"]
        for key in ("tables_mb", "claim_due_ms", "fire_none_due_ms", "fire_per_followup_us"):
            lines.append(f"  PostgreSQL {key:<24}{p['without'][key]!s:>14}{p['with'][key]!s:>18}")
    lines.append(f"ingest, 1 event per call, {CALLERS} callers    CPU µs/event   events/s")
    for name, row in result["ingest"].items():
        lines.append(f"  {name:<34}{row['cpu_us_per_event']:>10}{row['events_per_s']:>11,}")
    return "\n".join(lines)


E2E_RULE = """
  - name: stripe-checkout-won
    source: stripe
    when: event.type == 'checkout.session.completed'
    lead_id: "{{{{ event.data.object.metadata.voxys_lead_id }}}}"
    status: won
"""
E2E_FOLLOW_UP = "    follow_up: {{after: 36500d, status: lost}}\n"  # never due during a run


async def e2e_run(
    workdir: Path, voxys: str, bodies: list[bytes], variant: str, src: Path | None, args: Any
) -> dict[str, Any]:
    """One server run under wrk: its CPU per accepted webhook, rate and latency."""
    from bench.ingest import STRIPE_SECRET, summarise, write_requests
    from bench.ingest import wrk as run_wrk

    port = free_port()
    rundir = workdir / f"e2e-{variant.replace(' ', '-')}-{time.monotonic_ns()}"
    rundir.mkdir()
    rule = E2E_RULE + (E2E_FOLLOW_UP if variant == "scheduling" else "")
    config = rundir / "bridge.yaml"
    config.write_text(
        CONFIG.replace("level: warning", "level: info")
        .format(port=port, db=rundir / "bridge.db", voxys=voxys, token=TOKEN)
        .replace(
            "sources: {}", f'sources: {{stripe: {{preset: stripe, secret: "{STRIPE_SECRET}"}}}}'
        )
        + "rules:"
        + rule.format()
    )
    url = f"http://127.0.0.1:{port}"
    requests = rundir / "requests.tsv"
    write_requests(requests, "stripe", bodies, url)
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    with (rundir / "log").open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            console_script(), "serve", "--config", str(config), stdout=log, stderr=log, env=env
        )
    try:
        await _ready(url + "/readyz")
        cpu = _cpu_s(proc.pid)
        raw = await run_wrk(url, "/webhooks/stripe", requests, args.concurrency, args.duration)
        cpu = _cpu_s(proc.pid) - cpu
    finally:
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
    shutil.rmtree(rundir)
    row = summarise(raw, 1)
    row["cpu_us_per_webhook"] = cpu / max(1, row["ok"]) * 1e6
    return row


async def _ready(url: str, timeout: float = 30.0) -> None:
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} not ready")


async def e2e(args: argparse.Namespace) -> dict[str, Any]:
    """The real server under wrk: baseline code, this code, this code with a follow-up
    scheduled by every webhook; alternating, `runs` rounds."""
    from bench.ingest import stripe_bodies
    from bridge.fakevoxys import FakeVoxys

    fake = FakeVoxys(tokens=TOKEN)
    voxys = await fake.start()
    bodies = stripe_bodies(args.duration * 8000)
    plan: list[tuple[str, Path | None]] = [("none", None), ("scheduling", None)]
    if args.baseline_src is not None:
        plan.insert(0, ("none (baseline code)", args.baseline_src))
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in plan}
    load = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-followups-e2e-") as tmp:
            for n in range(args.runs):
                for name, src in plan:
                    row = await e2e_run(Path(tmp), voxys, bodies, name.split(" ")[0], src, args)
                    rows[name].append(row)
                    print(
                        f"  e2e run {n + 1}/{args.runs} {name:<22} {row['rps']:>7,.0f} req/s"
                        f"  {row['cpu_us_per_webhook']:6.0f} µs CPU/webhook  p99"
                        f" {row['p99_ms']:.1f} ms",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        await fake.stop()
    return {
        "scenario": "followups e2e",
        "machine": machine(),
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "load_average_1m_before_after": [load, os.getloadavg()[0]],
        "summary": {
            name: {
                "cpu_us_per_webhook": round(statistics.median(r["cpu_us_per_webhook"] for r in rs)),
                "rps": round(statistics.median(r["rps"] for r in rs)),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in rs), 2),
                "non_2xx": sum(r["non_2xx"] for r in rs),
                "runs_cpu_us": [round(r["cpu_us_per_webhook"]) for r in rs],
            }
            for name, rs in rows.items()
        },
    }


def e2e_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench followups e2e")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3, help="rounds of every variant")
    parser.add_argument("--baseline-src", type=Path, help="a tree with another bridge/ package")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    result = asyncio.run(e2e(args))
    print(f"c={args.concurrency}, {args.duration} s runs     CPU µs/webhook   req/s   p99 ms")
    for name, row in result["summary"].items():
        print(
            f"  {name:<26}{row['cpu_us_per_webhook']:>12}{row['rps']:>10,}{row['p99_ms']:>9}"
            f"  (runs: {row['runs_cpu_us']})"
        )
    document = json.dumps(result)
    print(document)
    if args.json_out:
        args.json_out.write_text(document + "\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["e2e"]:
        e2e_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m bench followups")
    parser.add_argument("--count", type=int, default=100_000, help="scheduled follow-ups")
    parser.add_argument("--ingest-events", type=int, default=4000, help="events per ingest run")
    parser.add_argument("--runs", type=int, default=3, help="ingest runs per scenario")
    parser.add_argument("--baseline-src", type=Path, help="a tree with another bridge/ package")
    parser.add_argument("--postgres", help="also measure PostgreSQL at this DSN")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="one ingest run (used by the benchmark itself)")
    worker.add_argument("db", type=Path)
    worker.add_argument("scenario", choices=SCENARIOS)
    args = parser.parse_args(argv)
    if args.command == "worker":
        measured = asyncio.run(
            ingest_worker(args.db, args.scenario, args.count, args.ingest_events)
        )
        print(json.dumps(measured))
        return
    result = asyncio.run(run(args))
    print(table(result))
    document = json.dumps(result)
    print(document)
    if args.json_out:
        args.json_out.write_text(document + "\n")


if __name__ == "__main__":
    main()
