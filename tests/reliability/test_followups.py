"""Follow-ups on real processes (issue 18): the console script, SIGKILL, replicas, the CLI.

Each server is `voxys-bridge serve` with a dunning rule (a failed payment snoozes the
lead and schedules `lost` 2 s later) and an `invoice.paid` rule; Voxys is the fake
server. Times are real here (the point is the process boundary); what the tests wait
for is an observable outcome, and "never fires" is shown by a sentinel follow-up due
after the cancelled one that did fire (follow-ups fire earliest first).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.fakevoxys import FakeVoxys
from tests.conftest import PG_DSN, free_port, needs_postgres
from tests.reliability.conftest import (
    SCRIPT,
    VOXYS_TOKEN,
    ServerProcess,
    bridge_config,
    stripe_signed_bytes,
    write_yaml,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(120)]

AFTER_S = 2
RULES = [
    {
        "name": "dunning",
        "source": "stripe",
        "when": "event.type == 'invoice.payment_failed'",
        "lead_id": "{{ event.data.object.metadata.voxys_lead_id }}",
        "status": "snoozed",
        "follow_up": {"after": f"{AFTER_S}s", "status": "lost", "notes": "still unpaid"},
    },
    {
        "name": "paid",
        "source": "stripe",
        "when": "event.type == 'invoice.paid'",
        "lead_id": "{{ event.data.object.metadata.voxys_lead_id }}",
        "status": "won",
    },
    {  # a follow-up whose delay the event names (the cancel test's waves)
        "name": "paused",
        "source": "stripe",
        "when": "event.type == 'customer.subscription.paused'",
        "lead_id": "{{ event.data.object.metadata.voxys_lead_id }}",
        "status": "snoozed",
        "follow_up": {
            "after": "{{ occurred_at + event.data.object.metadata.delay | float }}",
            "status": "lost",
        },
    },
]


class Servers:
    """Real servers on one store; every one is killed at teardown."""

    def __init__(self, tmp_path: Path, env: dict[str, str], voxys_url: str) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.voxys_url = voxys_url
        self.made: list[ServerProcess] = []

    def make(self, *, storage: str | None = None) -> ServerProcess:
        port = free_port()
        n = len(self.made)
        config = bridge_config(port=port, db=self.tmp_path / "bridge.db", voxys_url=self.voxys_url)
        if storage is not None:
            config["storage"]["url"] = storage
        config["storage"]["lease_ttl"] = "2s"  # a dead holder's lease is free again soon
        config["rules"] = RULES
        path = write_yaml(self.tmp_path / f"bridge{n}.yaml", config)
        server = ServerProcess(path, port, self.tmp_path / f"server{n}.log", self.env)
        self.made.append(server)
        return server

    def stop(self) -> None:
        for server in self.made:
            server.stop()


@pytest.fixture
async def fake() -> Any:
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
def servers(tmp_path: Path, rlb_env: dict[str, str], fake: FakeVoxys) -> Iterator[Servers]:
    made = Servers(tmp_path, rlb_env, fake.base_url)
    yield made
    made.stop()


async def post(
    server: ServerProcess, kind: str, lead: int, event_id: str, created: int, **metadata: Any
) -> None:
    body = json.dumps(
        {
            "id": event_id,
            "type": kind,
            "created": created,
            "data": {"object": {"metadata": {"voxys_lead_id": str(lead), **metadata}}},
        }
    ).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{server.url}/webhooks/stripe", data=body, headers=stripe_signed_bytes(body)
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


def statuses(fake: FakeVoxys, lead: int) -> list[str]:
    return [c.body["status"] for c in fake.calls if c.lead_id == lead and c.status == 200]


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def followup_rows(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(
            "SELECT lead_id, state, cause, transition_id FROM followups ORDER BY id"
        ).fetchall()
    finally:
        conn.close()


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args, "--config", str(server.config)],
        capture_output=True,
        text=True,
        env=server.env,
        timeout=30,
        check=False,
    )


async def test_a_2s_follow_up_fires_once_after_a_sigkill_and_a_restart_in_between(
    servers: Servers, fake: FakeVoxys, tmp_path: Path
) -> None:
    server = servers.make()
    server.start()
    await server.wait_healthy()
    await _next_second()  # `created` is whole seconds: the whole 2 s are ahead
    created = int(time.time())
    due = created + AFTER_S
    due_on_the_fakes_clock = time.monotonic() + (due - time.time())
    await post(server, "invoice.payment_failed", 42, "evt_failed", created)
    await until(lambda: statuses(fake, 42) == ["snoozed"], 10, "the snoozed PATCH")

    assert time.time() < due, "too slow to kill before the follow-up was due"
    server.kill()  # SIGKILL: the follow-up exists only in the store now
    assert followup_rows(tmp_path / "bridge.db") == [(42, "scheduled", None, None)]
    server.start()
    await server.wait_healthy()

    await until(lambda: statuses(fake, 42) == ["snoozed", "lost"], 20, "the lost PATCH")
    [lost] = [c for c in fake.calls if c.body["status"] == "lost"]
    assert lost.body == {"status": "lost", "notes": "still unpaid"}
    assert lost.at >= due_on_the_fakes_clock - 0.05  # never before it was due
    [(lead, state, _, transition_id)] = followup_rows(tmp_path / "bridge.db")
    assert (lead, state) == (42, "fired")
    assert transition_id is not None
    assert server.output().count('"followup.fired"') == 1
    assert server.terminate() == 0
    assert statuses(fake, 42) == ["snoozed", "lost"]  # and nothing more after


async def test_a_follow_up_cancelled_by_a_later_invoice_paid_never_fires(
    servers: Servers, fake: FakeVoxys, tmp_path: Path
) -> None:
    server = servers.make()
    server.start()
    await server.wait_healthy()
    created = int(time.time())
    await post(server, "invoice.payment_failed", 42, "evt_failed", created)
    await post(server, "invoice.paid", 42, "evt_paid", created)  # same second, later: newer
    # The sentinel: the same due time, a later id, so it fires after 42's would have.
    await post(server, "invoice.payment_failed", 43, "evt_sentinel", created)

    await until(lambda: statuses(fake, 43) == ["snoozed", "lost"], 20, "the sentinel firing")

    assert "lost" not in statuses(fake, 42)
    assert statuses(fake, 42)[-1] == "won"
    rows = followup_rows(tmp_path / "bridge.db")
    assert rows[0][:3] == (42, "cancelled", "newer event stripe/evt_paid (rule paid)")
    assert rows[1][:2] == (43, "fired")
    ledger = json.loads(cli(server, "explain", "--lead", "7/42", "--json").stdout)
    assert ledger[0]["follow_up"] is None  # the invoice.paid transition
    assert ledger[1]["follow_up"]["state"] == "cancelled"


async def test_a_cancel_from_the_command_line_while_the_server_fires_takes_each_once(
    servers: Servers, fake: FakeVoxys, tmp_path: Path
) -> None:
    # Three waves of follow-ups, due 2, 5 and 8 s after their events; the command cancels
    # every one of them while the server is firing the waves: each ends fired xor
    # cancelled, and the command says which.
    server = servers.make()
    server.start()
    await server.wait_healthy()
    created = int(time.time())
    leads = list(range(1, 31))
    delays = {lead: (2, 5, 8)[(lead - 1) // 10] for lead in leads}
    await asyncio.gather(
        *(
            post(server, "customer.subscription.paused", n, f"evt_{n}", created, delay=delays[n])
            for n in leads
        )
    )
    await until(lambda: all(statuses(fake, n) for n in leads), 20, "every snoozed PATCH")
    await until(lambda: statuses(fake, 1)[-1:] == ["lost"], 10, "the first wave firing")

    ids = [a for n in range(1, 31) for a in ("--id", str(n))]
    result = cli(server, "followups", "cancel", *ids, "--json")

    report = json.loads(result.stdout)
    cancelled = {f["lead_id"] for f in report["cancelled"]}
    fired = {f["lead_id"] for f in report["not_cancelled"]}
    assert result.returncode == 1  # the first wave, at least, had fired
    assert cancelled | fired == set(leads)
    assert cancelled.isdisjoint(fired)
    assert {f["state"] for f in report["not_cancelled"]} == {"fired"}
    await until(lambda: all(statuses(fake, n)[-1:] == ["lost"] for n in fired), 20, "fired")
    await until(lambda: time.time() > created + 9, 15, "the last wave's due time")
    await until(lambda: server.output().count('"followup.fired"') >= len(fired), 5, "logs")
    assert server.terminate() == 0
    for lead in leads:
        assert statuses(fake, lead) == (["snoozed", "lost"] if lead in fired else ["snoozed"])
    rows = {lead: state for lead, state, *_ in followup_rows(tmp_path / "bridge.db")}
    assert {lead for lead, state in rows.items() if state == "cancelled"} == cancelled
    assert server.output().count('"followup.fired"') == len(fired)
    print(f"\ncancel beside firing: {len(fired)} had fired, {len(cancelled)} cancelled")


def leader_of(servers: list[ServerProcess]) -> ServerProcess:
    for server in servers:
        if server.proc is None or server.proc.poll() is not None:
            continue
        with urllib.request.urlopen(f"{server.url}/metrics", timeout=2) as resp:  # noqa: S310
            if "bridge_delivery_leader 1.0" in resp.read().decode():
                return server
    raise AssertionError("no replica holds the delivery lease")


@needs_postgres
@pytest.mark.postgres
async def test_two_replicas_on_postgresql_fire_each_follow_up_once_across_a_leader_kill(
    servers: Servers, fake: FakeVoxys, pg_schema: str
) -> None:
    storage = f"{PG_DSN}?schema={pg_schema}"
    replicas = [servers.make(storage=storage), servers.make(storage=storage)]
    for replica in replicas:
        replica.start()
    for replica in replicas:
        await replica.wait_healthy()
    await until(lambda: _has_leader(replicas), 10, "a leader")
    created = int(time.time())
    leads = list(range(1, 21))
    delay = 8  # seconds: room to post, see every snoozed PATCH and kill, on a busy machine
    await asyncio.gather(
        *(  # through both replicas
            post(
                replicas[n % 2], "customer.subscription.paused", n, f"evt_{n}", created, delay=delay
            )
            for n in leads
        )
    )
    await until(lambda: all(statuses(fake, n) for n in leads), 10, "every snoozed PATCH")

    leader = leader_of(replicas)
    assert time.time() < created + delay, "too slow to kill before the follow-ups were due"
    leader.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    leader.proc.wait()  # type: ignore[union-attr]
    leader.start()  # and back, so that both run when they fall due
    await leader.wait_healthy()

    await until(lambda: all(statuses(fake, n) == ["snoozed", "lost"] for n in leads), 30, "lost")
    lost = Counter(c.lead_id for c in fake.calls if c.body["status"] == "lost")
    assert lost == Counter(leads)  # once each
    fired = sum(server.output().count('"followup.fired"') for server in replicas)
    assert fired == len(leads)
    rows = await _pg_followups(pg_schema)
    assert rows == {"fired": len(leads)}


async def _next_second() -> None:
    """Wait for the wall clock's next whole second (a boundary, not a hope)."""
    await asyncio.sleep(1 - time.time() % 1)


def _has_leader(replicas: list[ServerProcess]) -> bool:
    try:
        leader_of(replicas)
    except AssertionError:
        return False
    return True


async def _pg_followups(schema: str) -> dict[str, int]:
    import asyncpg

    assert PG_DSN is not None
    conn = await asyncpg.connect(PG_DSN)
    try:
        rows = await conn.fetch(f'SELECT state, count(*) FROM "{schema}".followups GROUP BY state')  # noqa: S608
        fired = await conn.fetchval(
            f"SELECT count(*) FROM \"{schema}\".transitions WHERE origin = 'followup'"  # noqa: S608
        )
    finally:
        await conn.close()
    assert fired == 20  # one transition per follow-up, whoever fired it
    return {row[0]: row[1] for row in rows}
