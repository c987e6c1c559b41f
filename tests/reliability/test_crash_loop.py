"""Crash loop: SIGKILL the real server again and again under load; nothing acknowledged is lost.

A load generator posts uniquely signed Stripe events (one lead each) and, like Stripe,
posts again whatever was not answered 2xx. The fake Voxys answers slowly, so requests
are in flight at every kill. After the last restart and a drain, every event answered
2xx has been PATCHed to Voxys, duplicate PATCHes are bounded by what could have been
in flight at the kills, and the SQLite file passes `PRAGMA integrity_check`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.fakevoxys import FakeVoxys
from tests.reliability.conftest import SCRIPT, VOXYS_TOKEN, ServerProcess, signed_stripe

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(150)]

CYCLES = 20
SEED = 20240817
MAX_IN_FLIGHT = 8
SENDERS = 4
SEND_PAUSE_S = 0.02  # each sender's pause between events: about 150 events/s in all
LATENCY_S = 0.02


@dataclass
class Load:
    """Signed events posted until acknowledged; what was answered 2xx, and when."""

    url: str
    next_id: int = 1
    pending: list[int] = field(default_factory=list)  # posted but not acknowledged
    acked: set[int] = field(default_factory=set)
    posts: int = 0
    failures: int = 0
    non_2xx: Counter[int] = field(default_factory=Counter)
    stopping: bool = False
    draining: bool = False  # post only what is not yet acknowledged, then return

    async def sender(self, session: aiohttp.ClientSession) -> None:
        while not self.stopping:
            if self.pending:
                n = self.pending.pop(0)
            elif self.draining:
                return
            else:
                n, self.next_id = self.next_id, self.next_id + 1
            body, headers = signed_stripe(f"evt_crash_{n}", lead_id=n)
            self.posts += 1
            try:
                async with session.post(
                    f"{self.url}/webhooks/stripe", data=body, headers=headers
                ) as resp:
                    await resp.read()
                    if 200 <= resp.status < 300:
                        self.acked.add(n)
                        await asyncio.sleep(SEND_PAUSE_S)
                        continue
                    self.non_2xx[resp.status] += 1
            except (aiohttp.ClientError, TimeoutError):
                self.failures += 1
            self.pending.append(n)  # not acknowledged: the sender posts it again later
            await asyncio.sleep(0.01)  # a sender's retry pause while the server is down

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=2)
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            await asyncio.gather(*(self.sender(session) for _ in range(SENDERS)))


def admin_json(command: list[str], config: Path) -> Any:
    result = subprocess.run(
        [SCRIPT, *command, "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


async def drained(fake: FakeVoxys, leads: set[int], db: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = {c.lead_id for c in fake.calls if c.status == 200}
        if leads <= done:
            return
        await asyncio.sleep(0.05)
    missing = leads - {c.lead_id for c in fake.calls if c.status == 200}
    conn = sqlite3.connect(db)
    try:
        states = conn.execute(
            "SELECT state, count(*), min(next_attempt_at), max(attempts),"
            " group_concat(DISTINCT reason) FROM transitions"
            " WHERE lead_id IN (SELECT value FROM json_each(?)) GROUP BY state",
            (json.dumps(sorted(missing)),),
        ).fetchall()
    finally:
        conn.close()
    raise AssertionError(
        f"{len(missing)} acknowledged events never delivered (now {time.time():.3f}): "
        f"{sorted(missing)[:10]}; their transitions: {states}"
    )


async def test_sigkill_loop_loses_no_acknowledged_event_and_keeps_the_database_sound(
    server_factory: Any, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    fake.latency = LATENCY_S
    await fake.start()
    server: ServerProcess = server_factory(
        fake.base_url, max_in_flight=MAX_IN_FLIGHT, level="warning"
    )
    load = Load(server.url)
    started = time.monotonic()
    kills = 0
    kill_points: list[float] = []
    startups: list[float] = []
    generator: asyncio.Task[None] | None = None
    try:
        for _ in range(CYCLES):
            server.start()
            startups.append(await server.wait_healthy())
            if generator is None:
                generator = asyncio.create_task(load.run())
            uptime = rng.uniform(0.05, 1.2)
            kill_points.append(round(uptime, 3))
            await asyncio.sleep(uptime)  # the random moment of the kill
            server.kill()
            kills += 1
        load.stopping = True
        assert generator is not None
        await generator
        # The last restart: post what was never acknowledged, then drain.
        server.start()
        await server.wait_healthy()
        load.stopping, load.draining = False, True
        await load.run()
        drain_started = time.monotonic()
        await drained(fake, load.acked, tmp_path / "bridge.db", timeout=30)
        drain_s = time.monotonic() - drain_started
        assert server.terminate() == 0
    finally:
        server.stop()
        await fake.stop()
    elapsed = time.monotonic() - started

    delivered = Counter(c.lead_id for c in fake.calls if c.status == 200)
    posted = load.next_id - 1
    duplicates = sum(n - 1 for n in delivered.values())
    stats = admin_json(["stats"], server.config)
    dead = admin_json(["dead-letters", "list"], server.config)
    db = sqlite3.connect(tmp_path / "bridge.db")
    try:
        integrity = db.execute("PRAGMA integrity_check").fetchall()
    finally:
        db.close()
    print(
        f"\ncrash loop: {kills} kills, {posted} events acknowledged ({load.posts} posts, "
        f"{load.failures} failed while down, non-2xx {dict(load.non_2xx)}), "
        f"{sum(delivered.values())} PATCHes, {duplicates} duplicates "
        f"(bound {kills * MAX_IN_FLIGHT}), {len(fake.calls)} calls, {elapsed:.1f} s; "
        f"uptimes {kill_points}; start-up {sum(startups):.1f} s in all, "
        f"max {max(startups):.2f} s; final drain {drain_s:.1f} s"
    )

    assert kills == CYCLES
    assert load.pending == []
    assert len(load.acked) == posted > 0
    assert load.acked <= set(delivered)  # every 2xx event reached Voxys
    assert set(delivered) <= load.acked  # nothing invented
    assert duplicates <= kills * MAX_IN_FLIGHT
    assert integrity == [("ok",)]
    assert dead == []
    assert stats["transitions"]["pending"] == stats["transitions"]["in_flight"] == 0
    assert stats["transitions"]["delivered"] == posted
    assert elapsed < 90
