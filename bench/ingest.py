"""Ingest: the bridge as users run it beside a bare aiohttp app, alternately, under wrk.

The bridge is the real console script (`voxys-bridge serve`) on a fresh SQLite store per
run, with info-level JSON logs and a 50 req/s Voxys rate limit, so delivery to a fake
Voxys (in this process) runs alongside. wrk replays unique, correctly signed Stripe
events (one per request) and HubSpot batches of 50, prepared before each run so the
signatures are fresh. The baseline is a bare aiohttp app (same Python, one process,
`web.run_app`) that reads the body and answers 200, fed the same requests.

    python -m bench ingest [--duration 10] [--concurrency 1,16,64] [--runs 3]
                           [--workers 1[,2]] [--against REV[,REV...]]

The headline figure is CPU µs per accepted webhook: the server's user+system time
over the run (all its threads and worker processes, from /proc) divided by its 2xx
answers, for the bridge and for the bare app. It moves far less than req/s when other
work shares the cores. `--against REV` also runs the bridge as of git revision REV
(its `bridge/` exported to a temporary directory and put first on PYTHONPATH), in
turn with this tree's, so that before and after meet the same noise (a comma list
runs several revisions: one lever after another); `--workers 1,2`
runs each build with each `server.workers` value, in turn, likewise.

Prints a table (medians over runs) and a JSON document. After each bridge run the
server is stopped gracefully and the SQLite file is counted: events stored must equal
the 2xx answers (times 50 for HubSpot) up to the requests still in flight when wrk
stopped (at most one per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.cpu import CpuSample
from bridge.fakevoxys import FakeVoxys

ROOT = Path(__file__).resolve().parent.parent
LUA = Path(__file__).resolve().parent / "wrk" / "replay.lua"
TOKEN = "bench-token"  # noqa: S105 - throwaway secrets for local processes
STRIPE_SECRET = "whsec_bench0123456789abcdef"  # noqa: S105
HUBSPOT_SECRET = "bench-hubspot-client-secret"  # noqa: S105
BATCH = 50  # HubSpot events per request

CONFIG = """
server: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{port}",
          shutdown_timeout: 5s}}
storage: {{url: "sqlite:///{db}"}}
voxys:
  base_url: "{voxys}"
  api_token: "{token}"
  account_id: 1
  rate_limit: {{requests: 50, per_seconds: 1}}
logging: {{format: json, level: info}}
sources:
  stripe: {{preset: stripe, secret: "{stripe}"}}
  hubspot: {{preset: hubspot, secret: "{hubspot}"}}
rules:
  - name: stripe-checkout-won
    source: stripe
    when: event.type == 'checkout.session.completed'
    lead_id: "{{{{ event.data.object.metadata.voxys_lead_id }}}}"
    status: won
  - name: hubspot-deal-won
    source: hubspot
    when:
      - event.subscriptionType == 'deal.propertyChange'
      - event.propertyValue == 'closedwon'
    lead_id: "{{{{ event.objectId }}}}"
    status: won
"""

STRIPE_EVENT: dict[str, Any] = {
    "id": "evt_",
    "object": "event",
    "api_version": "2024-06-20",
    "created": 1724419200,
    "data": {
        "object": {
            "id": "cs_live_",
            "object": "checkout.session",
            "amount_subtotal": 4900,
            "amount_total": 4900,
            "client_reference_id": None,
            "created": 1724419105,
            "currency": "eur",
            "customer": "cus_QhT8vR2mXk1aZb",
            "customer_details": {"email": "ada@example.com", "name": "Ada Lovelace"},
            "expires_at": 1724505505,
            "invoice": None,
            "livemode": True,
            "metadata": {"voxys_lead_id": "0"},
            "mode": "payment",
            "payment_intent": "pi_3PqR7pLkdIwHu7ix1Xy2Zw3V",
            "payment_status": "paid",
            "status": "complete",
            "subscription": None,
            "success_url": "https://shop.example.com/thanks",
            "url": None,
        }
    },
    "livemode": True,
    "pending_webhooks": 1,
    "request": {"id": None, "idempotency_key": None},
    "type": "checkout.session.completed",
}


def stripe_bodies(count: int) -> list[bytes]:
    """`count` checkout.session.completed events with unique ids (~840 bytes each)."""
    template = json.dumps(STRIPE_EVENT)
    template = template.replace('"evt_"', '"evt_bench{n:010d}"')
    template = template.replace('"cs_live_"', '"cs_live_bench{n:010d}"')
    template = template.replace('"voxys_lead_id": "0"', '"voxys_lead_id": "{lead}"')
    template = template.replace("{", "{{").replace("}", "}}")
    for field in ("n:010d", "lead"):
        template = template.replace("{{" + field + "}}", "{" + field + "}")
    return [template.format(n=n, lead=n % 100_000 + 1).encode() for n in range(count)]


def hubspot_bodies(count: int) -> list[bytes]:
    """`count` batches of 50 deal.propertyChange events, every event unique."""
    bodies = []
    for b in range(count):
        batch = [
            {
                "eventId": b * BATCH + i + 1,
                "subscriptionId": 2881778,
                "portalId": 62515,
                "appId": 1160452,
                "occurredAt": 1724419200123 + i,
                "subscriptionType": "deal.propertyChange",
                "attemptNumber": 0,
                "objectId": (b * BATCH + i) % 100_000 + 1,
                "propertyName": "dealstage",
                "propertyValue": "closedwon",
                "changeSource": "CRM_UI",
                "sourceId": "userId:5155006",
            }
            for i in range(BATCH)
        ]
        bodies.append(json.dumps(batch).encode())
    return bodies


def sign_stripe(body: bytes, now: float) -> list[str]:
    ts = str(int(now))
    digest = hmac.new(STRIPE_SECRET.encode(), ts.encode() + b"." + body, hashlib.sha256)
    return ["Stripe-Signature", f"t={ts},v1={digest.hexdigest()}"]


def sign_hubspot(body: bytes, now: float, public_url: str) -> list[str]:
    ts = str(int(now * 1000))
    message = f"POST{public_url}/webhooks/hubspot".encode() + body + ts.encode()
    digest = hmac.new(HUBSPOT_SECRET.encode(), message, hashlib.sha256).digest()
    return [
        "X-HubSpot-Signature-v3",
        base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp",
        ts,
    ]


def write_requests(path: Path, source: str, bodies: list[bytes], public_url: str) -> None:
    """Sign every body now and write one request per line for bench/wrk/replay.lua."""
    now = time.time()
    with path.open("wb") as out:
        for body in bodies:
            if source == "stripe":
                headers = sign_stripe(body, now)
            else:
                headers = sign_hubspot(body, now, public_url)
            fields = ["Content-Type", "application/json", *headers]
            out.write("\t".join(fields).encode() + b"\t" + body + b"\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def console_script() -> str:
    """The installed `voxys-bridge` next to this Python, else the one on PATH."""
    beside = Path(sys.executable).parent / "voxys-bridge"
    found = str(beside) if beside.exists() else shutil.which("voxys-bridge")
    if found is None:
        raise SystemExit("voxys-bridge is not installed (pip install -e .)")
    return found


class Process:
    """A server subprocess: started, waited for on a URL, stopped with SIGTERM."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log = log
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    async def start(self, ready_url: str, timeout: float = 15.0) -> float:
        """Start; return seconds until `ready_url` answers 200."""
        started = time.monotonic()
        with self.log.open("ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self.argv, cwd=ROOT, env=self.env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - started < timeout:
                if self.proc.returncode is not None:
                    raise RuntimeError(f"{self.argv[0]} exited; see {self.log}")
                try:
                    async with session.get(ready_url) as resp:
                        if resp.status == 200:
                            return time.monotonic() - started
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.02)
        raise RuntimeError(f"{ready_url} not ready after {timeout} s")

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc is None:
            return 0
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), 15.0)
        except TimeoutError:
            self.proc.kill()
            code = await self.proc.wait()
        self.proc = None
        return code


async def wrk(url: str, path: str, requests: Path, concurrency: int, duration: int) -> dict:
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{duration}s", "--timeout", "5s"]
    argv += ["-s", str(LUA), url, "--", str(requests), path]
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await proc.communicate()
    for line in output.decode().splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"wrk failed: {output.decode()[-2000:]}")


async def measured(
    pid: int, url: str, path: str, requests: Path, concurrency: int, duration: int
) -> tuple[dict[str, Any], CpuSample, tuple[float, float]]:
    """wrk against the server `pid`: its result, the server's CPU over the run, the load."""
    load_before, cpu_before = os.getloadavg()[0], CpuSample.take(pid)
    raw = await wrk(url, path, requests, concurrency, duration)
    cpu = CpuSample.take(pid) - cpu_before
    return raw, cpu, (load_before, os.getloadavg()[0])


def summarise(
    raw: dict[str, Any],
    per_request: int,
    cpu: CpuSample | None = None,
    load: tuple[float, float] | None = None,
) -> dict[str, Any]:
    seconds = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["status_errors"]
    socket_errors = sum(raw[k] for k in ("connect_errors", "read_errors", "write_errors"))
    result = {
        "requests": raw["requests"],
        "ok": ok,
        "rps": raw["requests"] / seconds,
        "events_per_s": ok * per_request / seconds,
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "non_2xx": raw["status_errors"],
        "socket_errors": socket_errors + raw["timeouts"],
    }
    if cpu is not None:
        # CPU per 2xx answer: what one accepted webhook costs, whatever the machine's load.
        per_ok = 1e6 / max(ok, 1)
        result["cpu_us"] = cpu.total * per_ok
        result["cpu_main_us"] = cpu.main * per_ok
        result["cpu_other_us"] = cpu.other * per_ok
        result["cores_used"] = cpu.total / seconds
    if load is not None:
        result["load_1m"] = list(load)
    return result


@dataclass(frozen=True)
class Build:
    """Which bridge code runs: this tree (`source=None`) or an exported revision."""

    label: str
    source: Path | None = None
    workers: int = 1

    def env(self) -> dict[str, str] | None:
        if self.source is None:
            return None
        return {**os.environ, "PYTHONPATH": str(self.source)}


def export(rev: str, into: Path) -> Build:
    """`bridge/` as of git revision `rev`, unpacked under `into`."""
    into.mkdir(exist_ok=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "bridge"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return Build(label=rev, source=into)


def count_events(db: Path, source: str) -> int:
    with sqlite3.connect(db) as conn:
        (n,) = conn.execute("SELECT count(*) FROM events WHERE source = ?", (source,)).fetchone()
    return int(n)


@dataclass
class Bench:
    workdir: Path
    voxys: str  # the fake Voxys's base URL
    bare: str  # the baseline server's base URL
    bare_pid: int
    bridge_cmd: str

    async def bridge(
        self,
        build: Build,
        source: str,
        bodies: list[bytes],
        concurrency: int,
        duration: int,
        run: int,
    ) -> dict:
        port = free_port()
        rundir = self.workdir / f"bridge-{source}-c{concurrency}-{run}"
        rundir.mkdir()
        config = rundir / "bridge.yaml"
        db = rundir / "bridge.db"
        text = CONFIG.format(
            port=port,
            db=db,
            voxys=self.voxys,
            token=TOKEN,
            stripe=STRIPE_SECRET,
            hubspot=HUBSPOT_SECRET,
        )
        config.write_text(
            text.replace(
                "shutdown_timeout: 5s}", f"shutdown_timeout: 5s, workers: {build.workers}}}"
            )
        )
        url = f"http://127.0.0.1:{port}"
        requests = self.workdir / "requests.tsv"
        write_requests(requests, source, bodies, url)
        argv = [self.bridge_cmd, "serve", "--config", str(config)]
        server = Process(argv, rundir / "log", env=build.env())
        await server.start(url + "/readyz")
        per = BATCH if source == "hubspot" else 1
        raw, cpu, load = await measured(
            server.pid, url, f"/webhooks/{source}", requests, concurrency, duration
        )
        await server.stop()
        result = summarise(raw, per, cpu, load)
        stored = count_events(db, source)
        result["stored"] = stored
        result["unique_prepared"] = len(bodies) * per
        # wrk stops with up to one request per connection in flight; the bridge may have
        # stored those events without wrk counting the answer.
        extra = stored - result["ok"] * per
        result["stored_minus_2xx_events"] = extra
        result["stored_matches_2xx"] = 0 <= extra <= concurrency * per
        result["wrapped"] = result["requests"] > len(bodies)
        shutil.rmtree(rundir)
        return result

    async def baseline(self, source: str, concurrency: int, duration: int) -> dict:
        """The same requests (as last signed) against the bare app, which stays up: idle, it
        does no work, unlike an idle bridge with a delivery backlog."""
        requests = self.workdir / "requests.tsv"
        path = f"/webhooks/{source}"
        raw, cpu, load = await measured(
            self.bare_pid, self.bare, path, requests, concurrency, duration
        )
        return summarise(raw, BATCH if source == "hubspot" else 1, cpu, load)


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def aggregate(
    build: str,
    source: str,
    concurrency: int,
    bridge: list[dict],
    bare: list[dict],
    first: list[dict] | None = None,
) -> dict:
    out: dict[str, Any] = {
        "build": build,
        "source": source,
        "concurrency": concurrency,
        "runs": len(bridge),
    }
    for name, rows in (("bridge", bridge), ("baseline", bare)):
        out[name] = {
            "rps": round(median(rows, "rps")),
            "events_per_s": round(median(rows, "events_per_s")),
            "p50_ms": round(median(rows, "p50_ms"), 2),
            "p99_ms": round(median(rows, "p99_ms"), 2),
            "non_2xx": sum(r["non_2xx"] for r in rows),
            "socket_errors": sum(r["socket_errors"] for r in rows),
            "cpu_us": round(median(rows, "cpu_us")),
            "cpu_main_us": round(median(rows, "cpu_main_us")),
            "cpu_other_us": round(median(rows, "cpu_other_us")),
            "cores_used": round(median(rows, "cores_used"), 2),
        }
    out["ratio"] = round(out["bridge"]["rps"] / out["baseline"]["rps"], 3)
    out["cpu_ratio"] = round(out["bridge"]["cpu_us"] / out["baseline"]["cpu_us"], 2)
    loads = [x for r in bridge + bare for x in r["load_1m"]]
    out["load_1m"] = [round(min(loads), 1), round(max(loads), 1)]
    out["stored_matches_2xx"] = all(r["stored_matches_2xx"] for r in bridge)
    out["wrapped"] = any(r["wrapped"] for r in bridge)
    if first is not None and first is not bridge:
        # Run n of this build against run n of the first (this tree): neighbours in time
        # share the machine's load, so their difference is steadier than either figure.
        diffs = sorted(b["cpu_us"] - f["cpu_us"] for b, f in zip(bridge, first, strict=True))
        out["cpu_us_minus_first"] = {
            "median": round(statistics.median(diffs)),
            "quartiles": [round(q) for q in statistics.quantiles(diffs, n=4)]
            if len(diffs) > 1
            else [round(diffs[0])] * 3,
        }
    return out


def table(rows: list[dict]) -> str:
    head = (
        f"{'build':<12}{'source':<8}{'c':>4} | {'CPU µs/req':>10}{'main+other':>12}"
        f"{'req/s':>7}{'ev/s':>8}"
        f"{'p50':>7}{'p99':>7}{'err':>4} | {'CPU µs/req':>10}{'req/s':>7}{'p50':>6}{'p99':>6}"
        f"{'err':>4} | {'ratio':>6}{'CPU×':>6} {'load':>9}  stored=2xx"
    )
    lines = [
        f"{'':<24} | {'bridge':<56} | {'bare aiohttp':<33} |",
        head,
        "-" * len(head),
    ]
    for r in rows:
        b, a = r["bridge"], r["baseline"]
        split = f"{b['cpu_main_us']}+{b['cpu_other_us']}"
        lines.append(
            f"{r['build'][:11]:<12}{r['source']:<8}{r['concurrency']:>4} | "
            f"{b['cpu_us']:>10,}{split:>12}{b['rps']:>7,}"
            f"{b['events_per_s']:>8,}{b['p50_ms']:>7.2f}{b['p99_ms']:>7.2f}"
            f"{b['non_2xx'] + b['socket_errors']:>4} | {a['cpu_us']:>10,}{a['rps']:>7,}"
            f"{a['p50_ms']:>6.2f}{a['p99_ms']:>6.2f}{a['non_2xx'] + a['socket_errors']:>4} | "
            f"{r['ratio']:>6.3f}{r['cpu_ratio']:>6.1f} {r['load_1m'][0]:>4}-{r['load_1m'][1]:<4} "
            f"{'yes' if r['stored_matches_2xx'] else 'NO'}{' (wrapped)' if r['wrapped'] else ''}"
        )
    for r in rows:
        if "cpu_us_minus_first" in r:
            d = r["cpu_us_minus_first"]
            lines.append(
                f"{r['build']} {r['source']} c={r['concurrency']}: CPU µs/req minus "
                f"{rows[0]['build']}'s, run by run: median {d['median']:+}, "
                f"quartiles {d['quartiles'][0]:+} / {d['quartiles'][2]:+}"
            )
    lines.append(
        "CPU µs/req: server process user+system time over the run ÷ 2xx answers (main = "
        "event-loop thread, other = every other thread); ratio = bridge req/s ÷ bare req/s; "
        "CPU× = bridge CPU ÷ bare CPU per request; load = 1-min load average over the runs; "
        "latency in ms; medians of runs; err = non-2xx + socket errors (sum of runs)"
    )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    fake = FakeVoxys(tokens=TOKEN)
    voxys = await fake.start()
    stripe = stripe_bodies(args.duration * args.max_rate)
    # A batch is ~50 events of work for the bridge: a tenth as many requests is plenty.
    hubspot = hubspot_bodies(max(1, args.hubspot_duration * args.max_rate // 10))
    plan = [("stripe", c, args.runs, args.duration, stripe) for c in concurrencies]
    if args.hubspot_runs:
        hub = ("hubspot", args.hubspot_concurrency, args.hubspot_runs, args.hubspot_duration)
        plan.append((*hub, hubspot))
    summary, runs = [], []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        port = free_port()
        bare_url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "bench.ingest", "bare", "--port", str(port)]
        bare = Process(argv, Path(tmp) / "bare.log")
        await bare.start(bare_url + "/")
        bench = Bench(Path(tmp), voxys, bare_url, bare.pid, console_script())
        trees = [Build("this")]
        for n, rev in enumerate(filter(None, (args.against or "").split(","))):
            trees.append(export(rev, Path(tmp) / f"against-{n}"))
        workers = [int(w) for w in args.workers.split(",")]
        builds = [
            replace(
                tree, label=tree.label if len(workers) == 1 else f"{tree.label} w{w}", workers=w
            )
            for tree in trees
            for w in workers
        ]
        for source, c, count, duration, bodies in plan:
            bridge_rows: dict[str, list[dict]] = {b.label: [] for b in builds}
            bare_rows: list[dict] = []
            for n in range(count):
                done = []
                # Every other round in reverse, so that no build always goes first.
                for build in builds if n % 2 == 0 else builds[::-1]:
                    row = await bench.bridge(build, source, bodies, c, duration, n)
                    bridge_rows[build.label].append(row)
                    done.append((f"bridge@{build.label}", row))
                bare_rows.append(await bench.baseline(source, c, duration))
                for target, row in (*done, ("baseline", bare_rows[-1])):
                    runs.append({"target": target, "source": source, "concurrency": c, **row})
                    print(
                        f"  {source} c={c} run {n + 1}/{count} {target[:16]:<16} "
                        f"{row['cpu_us']:>6,.0f} CPU µs/req {row['rps']:>8,.0f} req/s  "
                        f"p99 {row['p99_ms']:.2f} ms  load {row['load_1m'][0]:.1f}",
                        file=sys.stderr,
                        flush=True,
                    )
            first = bridge_rows[builds[0].label]
            for build in builds:
                rows = bridge_rows[build.label]
                summary.append(aggregate(build.label, source, c, rows, bare_rows, first))
        await bare.stop()
    patches = len(fake.calls)
    await fake.stop()
    return {
        "scenario": "ingest",
        "machine": machine(),
        "settings": {
            "duration_s": args.duration,
            "runs": args.runs,
            "workers": args.workers,
            "against": args.against,
            "hubspot": f"c={args.hubspot_concurrency}, {args.hubspot_duration} s, "
            f"{args.hubspot_runs} run(s), {BATCH} events per request",
            "load_average_1m_before_after": [load_before[0], os.getloadavg()[0]],
            "wrk": "1 thread, --timeout 5s",
            "bridge": "voxys-bridge serve, SQLite, JSON logs at info, Voxys limit 50 req/s",
            "stripe_body_bytes": len(stripe[0]),
            "hubspot_body_bytes": len(hubspot[0]),
        },
        "patches_received_by_fake": patches,
        "summary": summary,
        "runs": [
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in runs
        ],
    }


def bare_main(port: int) -> None:
    """The baseline: read the body, answer 200. Same process model as `serve`."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    async def ready(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    app.router.add_get("/", ready)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench ingest")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run")
    parser.add_argument("--concurrency", default="1,16,64", help="comma list")
    parser.add_argument("--runs", type=int, default=3, help="bridge/baseline pairs per level")
    parser.add_argument("--hubspot-concurrency", type=int, default=16)
    parser.add_argument("--hubspot-runs", type=int, default=1, help="0 skips HubSpot")
    parser.add_argument("--hubspot-duration", type=int, default=5, help="seconds per run")
    parser.add_argument(
        "--max-rate",
        type=int,
        default=10000,
        help="unique requests prepared per second of run (beyond it wrk repeats them)",
    )
    parser.add_argument("--workers", default="1", help="the bridge's server.workers (comma list)")
    parser.add_argument(
        "--against", metavar="REV", help="also run the bridge as of git REV (comma list)"
    )
    parser.add_argument("--json-out", type=Path, help="also write the JSON document here")
    sub = parser.add_subparsers(dest="command")
    bare = sub.add_parser("bare", help="run the baseline server only")
    bare.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "bare":
        bare_main(args.port)
        return
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    result = asyncio.run(run(args))
    print(table(result["summary"]))
    document = json.dumps(result)
    print(document)
    if args.json_out:
        args.json_out.write_text(document + "\n")


if __name__ == "__main__":
    main()
