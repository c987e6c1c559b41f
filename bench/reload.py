"""Reload: how long webhooks wait for their answer while the config is loaded again.

Starts the real `voxys-bridge serve` with a lookup table from a CSV of N rows (default
1,000,000) and posts signed Stripe webhooks open-loop at a fixed rate (default 200/s),
each timed from the moment it was due, not from when it could be sent (a server that
stops answering delays every request due meanwhile, and they all count). Phases:

- idle: no reload, the baseline;
- csv changed: the CSV is replaced by one with other values, then SIGHUP: the table is
  parsed again;
- rule changed: the rule file is edited (the CSV is not), then SIGHUP.

A phase lasts from the SIGHUP until the server logs the reload's outcome (its `reload_s`);
its figures are over the requests due in that window, plus the server's CPU seconds
(utime + stime from /proc) spent in it.

    python -m bench reload [--rows 1000000] [--rate 200] [--runs 3] [--bridge-src DIR]

`--bridge-src DIR` runs the server with `PYTHONPATH=DIR`: the figures before a change come
from `git archive main bridge | tar -x -C DIR` (the same venv, the old package).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.ingest import (
    STRIPE_SECRET,
    Process,
    console_script,
    free_port,
    machine,
    sign_stripe,
    stripe_bodies,
)
from bridge.fakevoxys import FakeVoxys

TOKEN = "bench-token"  # noqa: S105 - a throwaway token for a local fake
OUTCOMES = ("config.reloaded", "config.restart_required", "config.reload_failed")
CONFIG = """
server: {{host: 127.0.0.1, port: {port}, shutdown_timeout: 5s}}
storage: {{url: "sqlite:///{db}"}}
voxys:
  base_url: "{voxys}"
  api_token: "{token}"
  account_id: 1
  rate_limit: {{requests: 50, per_seconds: 1}}
logging: {{format: json, level: info}}
lookups:
  leads: {{file: leads.csv}}
sources:
  stripe: {{preset: stripe, secret: "{secret}"}}
rules:
  - include: rules.yaml
"""
RULES = """rules:
  - name: {name}
    source: stripe
    when: event.type == 'checkout.session.completed'
    lead_id: "{{{{ lookup('leads', event.id, event.data.object.metadata.voxys_lead_id) }}}}"
    status: won
"""


def write_csv(path: Path, rows: int, salt: str) -> None:
    """A `key,value` table of `rows` rows, written beside `path` and renamed over it."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as out:
        out.write("key,value\n")
        out.writelines(f"evt_bench{i:010d},{i}{salt}\n" for i in range(rows))
    os.replace(tmp, path)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (fields 14 and 15 of /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class LogTail:
    """Reads a growing JSON-lines log from where it last stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def outcomes(self) -> list[dict[str, Any]]:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        complete = data.rfind(b"\n") + 1
        self.offset += complete
        lines = data[:complete].decode(errors="replace").splitlines()
        found = (json.loads(line) for line in lines if "config." in line and line[:1] == "{")
        return [entry for entry in found if entry.get("event") in OUTCOMES]


class Load:
    """Open-loop webhook traffic: request i is due at start + i / rate."""

    def __init__(self, url: str, rate: float) -> None:
        self.url = url
        self.rate = rate
        self.bodies = stripe_bodies(20_000)
        self.sent = 0
        self.results: list[tuple[float, float, int]] = []  # (due, latency s, status)

    async def run(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        start = time.perf_counter()
        tasks: set[asyncio.Task[None]] = set()
        n = 0
        while not stop.is_set():
            due = start + n / self.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(self.post(session, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.gather(*tasks)

    async def post(self, session: aiohttp.ClientSession, due: float) -> None:
        body = self.bodies[self.sent % len(self.bodies)]
        self.sent += 1
        _, header = sign_stripe(body, time.time())
        headers = {"Content-Type": "application/json", "Stripe-Signature": header}
        async with session.post(self.url, data=body, headers=headers) as resp:
            await resp.read()
            self.results.append((due, time.perf_counter() - due, resp.status))


def summary(latencies: list[float]) -> dict[str, Any]:
    ordered = sorted(latencies)
    if not ordered:
        return {"requests": 0}

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {"requests": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": at(1.0)}


class Bench:
    def __init__(self, server: Process, log: LogTail, load: Load, session: aiohttp.ClientSession):
        self.server = server
        self.log = log
        self.load = load
        self.session = session

    @property
    def pid(self) -> int:
        assert self.server.proc is not None
        return self.server.proc.pid

    async def idle(self, seconds: float) -> dict[str, Any]:
        stop = asyncio.Event()
        self.load.results = []
        cpu = cpu_seconds(self.pid)
        traffic = asyncio.create_task(self.load.run(self.session, stop))
        await asyncio.sleep(seconds)
        stop.set()
        await traffic
        return {
            "phase": "idle",
            "seconds": seconds,
            "cpu_s": round(cpu_seconds(self.pid) - cpu, 3),
            **summary([lat for _, lat, _ in self.load.results]),
        }

    async def reload(self, phase: str, change: Any) -> dict[str, Any]:
        """Traffic, then `change()` and SIGHUP, until the outcome is logged, then a little more."""
        stop = asyncio.Event()
        self.load.results = []
        self.log.outcomes()  # skip what came before
        traffic = asyncio.create_task(self.load.run(self.session, stop))
        await asyncio.sleep(0.5)
        change()
        cpu = cpu_seconds(self.pid)
        started = time.perf_counter()
        assert self.server.proc is not None
        self.server.proc.send_signal(signal.SIGHUP)
        while not (outcomes := self.log.outcomes()):
            await asyncio.sleep(0.01)
        ended = time.perf_counter()
        cpu = cpu_seconds(self.pid) - cpu
        await asyncio.sleep(0.3)
        stop.set()
        await traffic
        window = [lat for due, lat, _ in self.load.results if started <= due <= ended]
        return {
            "phase": phase,
            "outcome": outcomes[0]["event"],
            "reload_s": round(ended - started, 3),
            "cpu_s": round(cpu, 3),
            "not_2xx": sum(1 for _, _, status in self.load.results if status != 200),
            **summary(window),
        }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    fake = FakeVoxys(tokens=TOKEN)
    voxys = await fake.start()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
        workdir = Path(tmp)
        csv, rules = workdir / "leads.csv", workdir / "rules.yaml"
        write_csv(csv, args.rows, salt="a")
        rules.write_text(RULES.format(name="paid"))
        port = free_port()
        config = workdir / "bridge.yaml"
        config.write_text(
            CONFIG.format(
                port=port, db=workdir / "bridge.db", voxys=voxys, token=TOKEN, secret=STRIPE_SECRET
            )
        )
        if args.bridge_src:  # inherited by the server process: it imports that package
            os.environ["PYTHONPATH"] = args.bridge_src
        server = Process([console_script(), "serve", "--config", str(config)], workdir / "log")
        url = f"http://127.0.0.1:{port}"
        await server.start(url + "/readyz", timeout=120.0)
        load = Load(url + "/webhooks/stripe", args.rate)
        try:
            async with aiohttp.ClientSession() as session:
                bench = Bench(server, LogTail(workdir / "log"), load, session)
                await bench.idle(1.0)  # warm-up, not reported
                results.append(await bench.idle(3.0))
                for n in range(args.runs):
                    staged = workdir / f"leads-{n}.csv"
                    write_csv(staged, args.rows, salt=f"b{n}")  # before the traffic starts
                    results.append(
                        await bench.reload("csv changed", lambda s=staged: os.replace(s, csv))
                    )
                for n in range(args.runs):
                    text = RULES.format(name=f"paid-{n}")
                    change = lambda t=text: rules.write_text(t)  # noqa: E731
                    results.append(await bench.reload("rule changed", change))
        finally:
            await server.stop()
            await fake.stop()
    return {
        "scenario": "reload",
        "machine": machine(),
        "load_average": os.getloadavg(),
        "rows": args.rows,
        "rate_per_s": args.rate,
        "bridge_src": args.bridge_src or "installed",
        "phases": results,
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"{'phase':<14}{'outcome':<18}{'reload s':>9}{'cpu s':>7}{'req':>6}"
        f"{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
    ]
    for p in result["phases"]:
        lines.append(
            f"{p['phase']:<14}{p.get('outcome', '-'):<18}{p.get('reload_s', '-'):>9}"
            f"{p['cpu_s']:>7}{p['requests']:>6}{p.get('p50_ms', '-'):>8}"
            f"{p.get('p99_ms', '-'):>8}{p.get('max_ms', '-'):>8}"
        )
    by_phase: dict[str, list[float]] = {}
    for p in result["phases"]:
        if "p99_ms" in p:
            by_phase.setdefault(p["phase"], []).append(p["p99_ms"])
    lines.append(
        "median p99: " + ", ".join(f"{k} {statistics.median(v)} ms" for k, v in by_phase.items())
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench reload")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the lookup CSV")
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks per second")
    parser.add_argument("--runs", type=int, default=3, help="reloads of each kind")
    parser.add_argument("--bridge-src", help="a directory holding the bridge package to run")
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    args = parser.parse_args(argv)
    if args.bridge_src:
        args.bridge_src = str(Path(args.bridge_src).resolve())
    result = asyncio.run(run(args))
    print(
        f"rows {result['rows']:,}, {result['rate_per_s']:g} webhooks/s open loop, "
        f"bridge {result['bridge_src']}"
    )
    print(table(result))
    document = json.dumps(result)
    print(document)
    if args.json_out:
        args.json_out.write_text(document + "\n")
