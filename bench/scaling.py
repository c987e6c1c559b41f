"""Ingest with 1, 2 and 4 server processes, on SQLite and on PostgreSQL, beside the bare app.

    python -m bench scaling [--workers 1,2,4] [--duration 5] [--postgres DSN]

Each variant runs the real `voxys-bridge serve` with `server.workers: N` (N processes
sharing the port with SO_REUSEPORT, as replicas behind a balancer would share the
load) on a fresh store, and wrk posts unique signed Stripe events at concurrency 16.
The bare aiohttp app runs once per variant, right after it, for the ratio. On one
2-core machine the processes share the cores with wrk: this measures what more
processes buy *here*, not what replicas on their own machines would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.ingest import (
    CONFIG,
    HUBSPOT_SECRET,
    STRIPE_SECRET,
    TOKEN,
    Process,
    console_script,
    free_port,
    stripe_bodies,
    summarise,
    write_requests,
    wrk,
)
from bridge.fakevoxys import FakeVoxys

CONCURRENCY = 16


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


async def variant(
    tmp: Path, voxys: str, storage: str, workers: int, duration: int, bodies: list[bytes]
) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = CONFIG.format(
        port=port,
        db=tmp / "unused.db",
        voxys=voxys,
        token=TOKEN,
        stripe=STRIPE_SECRET,
        hubspot=HUBSPOT_SECRET,
    )
    config = config.replace(f'"sqlite:///{tmp / "unused.db"}"', f'"{storage}"')
    config = config.replace("shutdown_timeout: 5s}", f"shutdown_timeout: 5s, workers: {workers}}}")
    path = tmp / f"bridge-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(config)
    requests = tmp / "requests.txt"
    write_requests(requests, "stripe", bodies, url)
    server = Process([console_script(), "serve", "--config", str(path)], tmp / "serve.log")
    await server.start(url + "/healthz")
    raw = await wrk(url, "/webhooks/stripe", requests, CONCURRENCY, duration)
    await server.stop()
    return summarise(raw, 1)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    fake = FakeVoxys(tokens=TOKEN)
    voxys = await fake.start()
    bodies = stripe_bodies(args.duration * 8000)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp_name:
        tmp = Path(tmp_name)
        bare_port = free_port()
        bare_url = f"http://127.0.0.1:{bare_port}"
        bare = Process(
            [sys.executable, "-m", "bench.ingest", "bare", "--port", str(bare_port)],
            tmp / "bare.log",
        )
        await bare.start(bare_url + "/")
        backends = [("sqlite", None)] + ([("postgresql", args.postgres)] if args.postgres else [])
        for backend, dsn in backends:
            for workers in [int(w) for w in args.workers.split(",")]:
                schema = f"bench_{uuid.uuid4().hex[:10]}"
                storage = (
                    f"sqlite:///{tmp / f'{backend}-{workers}.db'}"
                    if dsn is None
                    else f"{dsn}?schema={schema}"
                )
                bridge = await variant(tmp, voxys, storage, workers, args.duration, bodies)
                write_requests(tmp / "requests.txt", "stripe", bodies, bare_url)
                base = summarise(
                    await wrk(bare_url, "/", tmp / "requests.txt", CONCURRENCY, args.duration),
                    1,
                )
                if dsn is not None:
                    await drop_schema(dsn, schema)
                row = {
                    "backend": backend,
                    "workers": workers,
                    "bridge_rps": round(bridge["rps"]),
                    "bridge_p99_ms": round(bridge["p99_ms"], 2),
                    "errors": bridge["non_2xx"] + bridge["socket_errors"],
                    "bare_rps": round(base["rps"]),
                    "ratio": round(bridge["rps"] / base["rps"], 3),
                }
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        await bare.stop()
    await fake.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench scaling")
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--postgres", help="a PostgreSQL DSN to measure that backend too")
    rows = asyncio.run(run(parser.parse_args(argv)))
    print(
        f"{'backend':<11} {'workers':>7} {'req/s':>8} {'p99 ms':>8} {'err':>4} "
        f"{'bare req/s':>10} {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['backend']:<11} {r['workers']:>7} {r['bridge_rps']:>8,} {r['bridge_p99_ms']:>8} "
            f"{r['errors']:>4} {r['bare_rps']:>10,} {r['ratio']:>6}"
        )
    print(json.dumps({"scenario": "scaling", "concurrency": CONCURRENCY, "rows": rows}))


if __name__ == "__main__":
    main()
