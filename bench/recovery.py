"""Recovery: SIGKILL the real server while it delivers a large backlog, restart, time it.

Fills a SQLite store with N pending transitions (one per lead) through the store API,
starts `voxys-bridge serve` on it against a fake Voxys in this process (50 req/s, as a
user would run it), lets it deliver for a moment, SIGKILLs it, and starts it again.

    python -m bench recovery [--pending 100000] [--deliver-for 2]

Reports for the cold start and the restart: seconds until /readyz answers 200, seconds
until the fake receives the first PATCH (both from the moment the process is spawned;
the process start includes Python's imports), the bridge's RSS once ready, the store's
size on disk, and how many leads were PATCHed twice across the kill (at-least-once).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.ingest import Process, console_script, free_port, machine
from bridge.fakevoxys import FakeVoxys
from bridge.models import Evaluation, Event, LeadStatus, Outcome, Transition
from bridge.store.sqlite import SqliteStore

TOKEN = "bench-token"  # noqa: S105 - a throwaway token for a local fake
CONFIG = """
server: {{host: 127.0.0.1, port: {port}, shutdown_timeout: 5s}}
storage: {{url: "sqlite:///{db}"}}
voxys:
  base_url: "{voxys}"
  api_token: "{token}"
  account_id: 1
  rate_limit: {{requests: {rate}, per_seconds: 1}}
logging: {{format: json, level: info}}
sources: {{}}
"""


def item(n: int) -> tuple[Event, Evaluation]:
    event = Event(source="bench", event_id=f"e{n}", occurred_at=n, received_at=n, payload={})
    transition = Transition(rule="bench", account_id=1, lead_id=n + 1, status=LeadStatus.WON)
    return event, Evaluation(Outcome.MATCHED, (transition,), (), ("bench",))


async def fill(db: Path, pending: int) -> float:
    """Store `pending` events with one pending transition each; seconds taken."""
    started = time.perf_counter()
    store = SqliteStore(db)
    await store.open()
    for start in range(0, pending, 1000):
        batch = [item(n) for n in range(start, min(pending, start + 1000))]
        await store.ingest(batch, time.time())
    await store.close()
    return time.perf_counter() - started


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def disk_mb(db: Path) -> float:
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    return sum(f.stat().st_size for f in files if f.exists()) / 2**20


async def first_patch(fake: FakeVoxys, after: int, timeout: float = 60.0) -> float:
    """The monotonic time of the first call the fake received after index `after`."""
    deadline = time.monotonic() + timeout
    while len(fake.calls) <= after:
        if time.monotonic() > deadline:
            raise RuntimeError(f"no PATCH within {timeout} s")
        await asyncio.sleep(0.005)
    return fake.calls[after].at


async def start(server: Process, fake: FakeVoxys, url: str, db: Path) -> dict[str, Any]:
    """Spawn the server; seconds to ready and to the first PATCH, RSS once ready."""
    seen = len(fake.calls)
    spawned = time.monotonic()  # the fake stamps calls with time.monotonic too
    ready = await server.start(url + "/readyz", timeout=60.0)
    assert server.proc is not None
    rss = rss_mb(server.proc.pid)
    patch_at = await first_patch(fake, seen)
    return {
        "ready_s": round(ready, 3),
        "first_patch_s": round(patch_at - spawned, 3),
        "rss_mb_at_ready": round(rss, 1),
        "store_mb": round(disk_mb(db), 1),
    }


async def run(pending: int, deliver_for: float, rate: int) -> dict[str, Any]:
    fake = FakeVoxys(tokens=TOKEN)
    voxys = await fake.start()
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        workdir = Path(tmp)
        db = workdir / "bridge.db"
        fill_s = await fill(db, pending)
        port = free_port()
        config = workdir / "bridge.yaml"
        config.write_text(CONFIG.format(port=port, db=db, voxys=voxys, token=TOKEN, rate=rate))
        url = f"http://127.0.0.1:{port}"
        argv = [console_script(), "serve", "--config", str(config)]
        server = Process(argv, workdir / "log")
        cold = await start(server, fake, url, db)
        await asyncio.sleep(deliver_for)
        killed_after = len(fake.calls)
        await server.stop(signal.SIGKILL)
        restart = await start(server, fake, url, db)
        await asyncio.sleep(1.0)
        await server.stop()
        await fake.stop()
    per_lead = Counter(call.path for call in fake.calls)
    return {
        "scenario": "recovery",
        "machine": machine(),
        "pending": pending,
        "rate_limit_per_s": rate,
        "fill_s": round(fill_s, 1),
        "cold_start": cold,
        "patches_before_kill": killed_after,
        "restart_after_sigkill": restart,
        "leads_patched_twice": sum(1 for n in per_lead.values() if n > 1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench recovery")
    parser.add_argument("--pending", type=int, default=100_000)
    parser.add_argument("--deliver-for", type=float, default=2.0, help="seconds before SIGKILL")
    parser.add_argument("--rate", type=int, default=50, help="Voxys requests per second")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.pending, args.deliver_for, args.rate))
    rows = [("", "cold start", "restart after SIGKILL")]
    for key, label in (
        ("ready_s", "to /readyz 200 (s)"),
        ("first_patch_s", "to first PATCH (s)"),
        ("rss_mb_at_ready", "RSS at ready (MB)"),
        ("store_mb", "store on disk (MB)"),
    ):
        rows.append(
            (label, str(result["cold_start"][key]), str(result["restart_after_sigkill"][key]))
        )
    print(f"pending {result['pending']:,}, Voxys limit {result['rate_limit_per_s']} req/s")
    for label, cold, restart in rows:
        print(f"  {label:<22}{cold:>12}{restart:>24}")
    print(
        f"  PATCHes before the kill {result['patches_before_kill']}, "
        f"leads PATCHed twice {result['leads_patched_twice']}"
    )
    document = json.dumps(result)
    print(document)
    if args.json_out:
        args.json_out.write_text(document + "\n")


if __name__ == "__main__":
    main()
