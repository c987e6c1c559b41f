"""Where a webhook's CPU goes: py-spy samples of the bridge under wrk, grouped by stage.

    python -m bench profile [--duration 12] [--concurrency 16] [--rate 250] [--against REV,...]

Runs the real `voxys-bridge serve` as `bench ingest` does (SQLite, JSON logs at info,
delivery to a fake Voxys at 50 req/s alongside), posts unique signed Stripe events with
wrk and, after a second of warm-up, samples every thread with py-spy (`--nonblocking`,
so the process is not paused; samples of idle threads are dropped). The same window's
CPU time (from /proc) turns each group's share of a thread's samples into µs per
accepted webhook. Groups, for the event-loop thread:

    HTTP         aiohttp and asyncio: parsing, routing, reading the body, writing answers
    handler      bridge/ingest.py itself (building the request, the bookkeeping)
    verification the source's `verify` (signature header, HMAC)
    parse        the source's `parse` (JSON decoding, the event)
    rules        RuleSet.evaluate and the Jinja2 code it runs
    store        the hand-off to the store: encoding rows, queueing, resolving futures
    logging      structlog, wherever it is called from
    metrics      prometheus_client, wherever it is called from
    delivery     the delivery worker and the Voxys client (background, 50 req/s)
    poll         epoll_wait returning events (system time; py-spy counts it as busy)

and for the other threads, by thread: the SQLite writer split into its COMMIT (the
fsync), the statements of ingest and of delivery, waiting for jobs and its own loop.
py-spy decides "busy" from the thread's state, so a thread in fsync or epoll_wait is
partly counted: read the groups as shares, the /proc totals as the measurement. Needs
py-spy (`pip install py-spy`) and permission to trace (root, or ptrace_scope 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpu import CpuSample
from bench.ingest import (
    CONFIG,
    HUBSPOT_SECRET,
    STRIPE_SECRET,
    TOKEN,
    Build,
    Process,
    console_script,
    export,
    free_port,
    stripe_bodies,
    summarise,
    write_requests,
    wrk,
)
from bridge.fakevoxys import FakeVoxys

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*):(?P<line>\d+)\)$")
WARM_UP_S = 1.0

DELIVERY_FILES = ("bridge/delivery.py", "bridge/voxys.py", "bridge/lease.py", "bridge/wakeup.py")
LOGGING_FILES = ("structlog/", "bridge/logs.py", "/logging/")
METRICS_FILES = ("prometheus_client/", "bridge/metrics.py")
MAIN_GROUPS = (
    "HTTP",
    "handler",
    "verification",
    "parse",
    "rules",
    "store",
    "logging",
    "metrics",
    "delivery",
    "poll (epoll_wait)",
)


@dataclass(frozen=True)
class Frame:
    func: str
    file: str
    line: int

    @classmethod
    def parse(cls, text: str) -> Frame:
        match = FRAME.match(text)
        if match is None:
            return cls(text, "", 0)
        return cls(match["func"], match["file"], int(match["line"]))

    def within(self, parts: tuple[str, ...]) -> bool:
        return any(part in self.file for part in parts)


def main_group(frames: list[Frame]) -> str:
    """The stage a stack of the event-loop thread belongs to (root first)."""
    if any(f.within(LOGGING_FILES) for f in frames):
        return "logging"
    if any(f.within(METRICS_FILES) for f in frames):
        return "metrics"
    if any(f.within(DELIVERY_FILES) for f in frames):
        return "delivery"
    if frames and frames[-1].func.endswith("select") and frames[-1].file.endswith("selectors.py"):
        return "poll (epoll_wait)"
    group = "HTTP"
    for frame in frames:
        if "bridge/sources/" in frame.file:
            if frame.func.endswith(("verify", "parse")):
                return "verification" if frame.func.endswith("verify") else "parse"
            group = "handler"  # acknowledge, reject: building the answer
            continue
        if "bridge/rules/" in frame.file or "jinja2/" in frame.file:
            return "rules"
        if "bridge/store/" in frame.file:
            return "store"
        if frame.file.endswith("bridge/ingest.py"):
            group = "HTTP" if frame.func == "read_body" else "handler"
    return group


def writer_group(frames: list[Frame]) -> str:
    """What the SQLite writer thread was doing."""
    leaf = frames[-1] if frames else Frame("?", "", 0)
    # _run itself does little but BEGIN and COMMIT: as the leaf, it is in one of them.
    if leaf.file.endswith("store/sqlite/threads.py") and leaf.func.endswith("_run"):
        return "writer: COMMIT (fsync) and BEGIN"
    if leaf.file.endswith("store/sqlite/threads.py") and leaf.func.endswith("_main"):
        return "writer: waiting for jobs"
    if any(f.file.endswith("bridge/store/sqlite/store.py") and "_ingest" in f.func for f in frames):
        return "writer: ingest statements"
    if any(f.file.endswith("store/sqlite/queue.py") for f in frames):
        return "writer: delivery statements"
    return "writer: its own loop and hand-back"


def thread_group(thread: str, frames: list[Frame]) -> str:
    if thread == "MainThread":
        return main_group(frames)
    if thread.startswith("sqlite-writer"):
        return writer_group(frames)
    if thread.startswith("sqlite-checkpoint"):
        return "checkpointer"
    if thread.startswith("sqlite-reader"):
        return "reader"
    return "other threads"


def read_raw(path: Path) -> tuple[Counter[str], Counter[str], Counter[str], Counter[str]]:
    """py-spy raw output -> samples per group, main-thread leaves, writer leaves, thread."""
    groups: Counter[str] = Counter()
    main_leaves: Counter[str] = Counter()
    writer_leaves: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        head, *rest = stack.split(";")  # head: "thread (TID): NAME"
        thread = head.partition("): ")[2] or "?"
        frames = [Frame.parse(f) for f in rest]
        groups[thread_group(thread, frames)] += count
        threads["main" if thread == "MainThread" else "other"] += count
        leaf = rest[-1] if rest else "?"
        if thread == "MainThread":
            main_leaves[leaf] += count
        elif thread.startswith("sqlite-writer"):
            writer_leaves[leaf] += count
    return groups, main_leaves, writer_leaves, threads


async def profile(
    build: Build, tmp: Path, voxys: str, args: argparse.Namespace, bodies: list[bytes]
) -> dict[str, Any]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rundir = tmp / f"profile-{build.label}"
    rundir.mkdir()
    config = rundir / "bridge.yaml"
    config.write_text(
        CONFIG.format(
            port=port,
            db=rundir / "bridge.db",
            voxys=voxys,
            token=TOKEN,
            stripe=STRIPE_SECRET,
            hubspot=HUBSPOT_SECRET,
        )
    )
    requests = tmp / "requests.tsv"
    write_requests(requests, "stripe", bodies, url)
    server = Process(
        [console_script(), "serve", "--config", str(config)], rundir / "log", build.env()
    )
    await server.start(url + "/readyz")
    load = wrk(url, "/webhooks/stripe", requests, args.concurrency, args.duration)
    load_task = asyncio.ensure_future(load)
    await asyncio.sleep(WARM_UP_S)
    seconds = args.duration - 2 * WARM_UP_S
    raw = rundir / "py-spy.txt"
    cpu_before = CpuSample.take(server.pid)
    spy = await asyncio.create_subprocess_exec(
        args.py_spy,
        "record",
        "--pid",
        str(server.pid),
        "--duration",
        str(int(seconds)),
        "--rate",
        str(args.rate),
        "--format",
        "raw",
        "--threads",
        *([] if args.blocking else ["--nonblocking"]),
        "--output",
        str(raw),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await spy.wait()
    cpu = CpuSample.take(server.pid) - cpu_before
    result = summarise(await load_task, 1)
    await server.stop()
    if spy.returncode != 0 or not raw.exists():
        raise SystemExit(f"py-spy failed (exit {spy.returncode}); is ptrace allowed?")
    groups, main_leaves, writer_leaves, threads = read_raw(raw)
    if args.raw_out:
        shutil.copy(raw, f"{args.raw_out}.{build.label}")
    # CPU per webhook over the sampled window: the rate during it, as wrk measured overall.
    webhooks = result["rps"] * seconds
    main_us = cpu.main * 1e6 / webhooks
    other_us = cpu.other * 1e6 / webhooks
    shares = {}
    for group, count in groups.items():
        per = main_us / threads["main"] if group in MAIN_GROUPS else other_us / threads["other"]
        shares[group] = {"samples": count, "us": round(count * per, 1)}
    shutil.rmtree(rundir, ignore_errors=True)
    return {
        "build": build.label,
        "rps": round(result["rps"]),
        "p99_ms": round(result["p99_ms"], 2),
        "non_2xx": result["non_2xx"],
        "cpu_main_us": round(main_us),
        "cpu_other_us": round(other_us),
        "groups": shares,
        "main_leaves": main_leaves.most_common(args.top),
        "writer_leaves": writer_leaves.most_common(args.top),
        "load_1m": os.getloadavg()[0],
    }


def report(rows: list[dict[str, Any]]) -> str:
    names = [*MAIN_GROUPS]
    for row in rows:
        names += sorted(g for g in row["groups"] if g not in names)
    head = f"{'group':<40}" + "".join(f"{row['build'][:10]:>12}" for row in rows)
    lines = ["CPU µs per accepted webhook, by group", head, "-" * len(head)]
    for name in names:
        cells = "".join(f"{row['groups'].get(name, {}).get('us', 0.0):>12.1f}" for row in rows)
        lines.append(f"{name:<40}{cells}")
    for label, key in (("event-loop thread", "cpu_main_us"), ("other threads", "cpu_other_us")):
        lines.append(f"{'= ' + label:<40}" + "".join(f"{row[key]:>12}" for row in rows))
    lines.append(f"{'req/s under the profiler':<40}" + "".join(f"{r['rps']:>12,}" for r in rows))
    lines.append(f"{'p99 ms':<40}" + "".join(f"{r['p99_ms']:>12}" for r in rows))
    lines.append(f"{'load (1 min)':<40}" + "".join(f"{r['load_1m']:>12.1f}" for r in rows))
    for row in rows:
        for title, key in (("event-loop", "main_leaves"), ("writer", "writer_leaves")):
            lines.append(f"\ntop {title} leaves ({row['build']}): samples, frame")
            lines += [f"{count:>7}  {leaf}" for leaf, count in row[key]]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    fake = FakeVoxys(tokens=TOKEN)
    voxys = await fake.start()
    bodies = stripe_bodies(args.duration * 8000)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp_name:
            tmp = Path(tmp_name)
            builds = [Build("this")]
            for n, rev in enumerate(filter(None, (args.against or "").split(","))):
                builds.append(export(rev, tmp / f"against-{n}"))
            for build in builds:
                rows.append(await profile(build, tmp, voxys, args, bodies))
    finally:
        await fake.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench profile")
    parser.add_argument("--duration", type=int, default=12, help="seconds of wrk")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument(
        "--against", metavar="REV", help="also profile the bridge as of git REV (comma list)"
    )
    parser.add_argument(
        "--blocking", action="store_true", help="let py-spy pause the process per sample"
    )
    parser.add_argument("--top", type=int, default=15, help="leaf frames listed per thread")
    parser.add_argument("--raw-out", help="keep py-spy's raw stacks as RAW_OUT.<build>")
    default_spy = Path(sys.executable).parent / "py-spy"
    parser.add_argument("--py-spy", default=str(default_spy) if default_spy.exists() else "py-spy")
    args = parser.parse_args(argv)
    if shutil.which(args.py_spy) is None:
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    rows = asyncio.run(run(args))
    print(report(rows))


if __name__ == "__main__":
    main()
