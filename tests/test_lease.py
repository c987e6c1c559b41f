"""The delivery lease: one deliverer among the processes sharing a store, and takeover."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from pathlib import Path

import aiohttp
import pytest

from bridge.fakevoxys import FakeVoxys
from bridge.lease import Term, Timing
from bridge.store import open_backend
from bridge.store.postgres.wakeup import Listening, PostgresNotify
from bridge.store.sqlite.wakeup import UnixDatagram
from tests.conftest import (
    PG_DSN,
    VOXYS_TOKEN,
    WriteConfig,
    free_port,
    needs_postgres,
    stripe_event,
    stripe_headers,
)
from tests.test_cli_serve import start_server

# --- the holder's clock (pure) ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_term_stops_a_margin_before_the_database_can_expire_the_lease() -> None:
    clock, timing = Clock(), Timing(ttl=6.0)
    term = Term.granted("me", 3, timing, sent_at=clock.now, clock=clock)

    clock.now += 6.0 - timing.margin - 0.001
    assert term.valid()
    clock.now += 0.002
    assert not term.valid()  # the database keeps it ours for `margin` more seconds


def test_a_renewal_counts_from_when_it_was_sent_not_from_when_it_was_answered() -> None:
    clock, timing = Clock(), Timing(ttl=6.0)
    term = Term.granted("me", 3, timing, sent_at=clock.now, clock=clock)
    sent_at = clock.now + 2.0
    clock.now += 5.0  # a slow answer

    term.renewed(sent_at)

    assert term.remaining() == pytest.approx(sent_at + 6.0 - timing.margin - clock.now)


def test_an_old_renewal_answered_late_never_shortens_the_term() -> None:
    clock, timing = Clock(), Timing(ttl=6.0)
    term = Term.granted("me", 3, timing, sent_at=clock.now + 4, clock=clock)
    before = term.valid_until

    term.renewed(clock.now)

    assert term.valid_until == before


def test_renewal_comes_three_times_per_ttl_and_a_standby_tries_at_the_expiry() -> None:
    timing = Timing(ttl=6.0)
    assert timing.renew_every == 2.0
    assert timing.margin == 1.5
    assert timing.standby_wait(0.4) == 0.4  # the holder's lease runs out sooner
    assert timing.standby_wait(5.0) == 2.0  # ... but a released lease is seen within ttl/3
    assert timing.standby_wait(None) == 2.0


# --- identity: what the database is, not how its URL is written --------------------------


async def test_two_spellings_of_one_sqlite_file_share_one_lease(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    one = open_backend(f"sqlite:///{tmp_path / 'real' / 'b.db'}")
    other = open_backend(f"sqlite:///{tmp_path / 'link' / '..' / 'link' / 'b.db'}")
    await one.store.open()
    await other.store.open()
    try:
        assert (await one.lease.acquire("a", 60)).epoch == 1
        assert (await other.lease.acquire("b", 60)).epoch is None
        assert isinstance(one.wakeup, UnixDatagram) and isinstance(other.wakeup, UnixDatagram)
        assert one.wakeup.path == other.wakeup.path
    finally:
        await one.store.close()
        await other.store.close()


@needs_postgres
async def test_public_spelled_out_or_implied_is_one_lease_and_another_schema_has_its_own() -> None:
    import asyncpg

    assert PG_DSN is not None
    name = f"bridge_id_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = PG_DSN.rsplit("/", 1)[0] + f"/{name}"
    backends = [open_backend(url) for url in (dsn, f"{dsn}?schema=public", f"{dsn}?schema=other")]
    try:
        for backend in backends:
            await backend.store.open()
        implied, spelled, other = backends
        assert (await implied.lease.acquire("a", 60)).epoch == 1
        assert (await spelled.lease.acquire("b", 60)).epoch is None
        assert (await other.lease.acquire("c", 60)).epoch == 1
        assert isinstance(implied.wakeup, PostgresNotify)
        assert isinstance(spelled.wakeup, PostgresNotify)
        assert isinstance(other.wakeup, PostgresNotify)
        assert implied.wakeup.channel == spelled.wakeup.channel != other.wakeup.channel
    finally:
        for backend in backends:
            await backend.lease.close()
            await backend.store.close()
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


# --- wake-ups --------------------------------------------------------------------------------


@needs_postgres
async def test_a_notify_after_a_commit_wakes_the_listener_at_once(pg_schema: str) -> None:
    assert PG_DSN is not None
    backend, other = (open_backend(f"{PG_DSN}?schema={pg_schema}") for _ in range(2))
    await backend.store.open()
    await other.store.open()
    woken, lost = asyncio.Event(), asyncio.Event()
    listening = await backend.wakeup.listen(woken.set, lambda _why: lost.set())
    try:
        await other.wakeup.notify()
        await asyncio.wait_for(woken.wait(), 5)
    finally:
        await listening.close()
        await other.wakeup.close()
        await other.store.close()
        await backend.store.close()
    assert not lost.is_set()  # closing on purpose is not an outage


@needs_postgres
async def test_a_listener_whose_connection_is_killed_reports_it_lost(pg_schema: str) -> None:
    import asyncpg

    assert PG_DSN is not None
    backend = open_backend(f"{PG_DSN}?schema={pg_schema}")
    await backend.store.open()
    lost = asyncio.Event()
    listening = await backend.wakeup.listen(lambda: None, lambda _why: lost.set())
    admin = await asyncpg.connect(PG_DSN)
    try:
        assert isinstance(listening, Listening)
        pid = listening.conn.get_server_pid()
        await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
        await asyncio.wait_for(lost.wait(), 5)
    finally:
        await admin.close()
        await listening.close()
        await backend.store.close()


async def test_a_datagram_wakes_the_deliverer_of_a_shared_sqlite_file(tmp_path: Path) -> None:
    long = UnixDatagram(tmp_path / ("x" * 120) / "b.db")
    assert len(str(long.path)) <= 100  # a long path falls back to the temp directory
    listener, publisher = UnixDatagram(tmp_path / "b.db"), UnixDatagram(tmp_path / "b.db")
    woken = asyncio.Event()
    publisher.publish()  # nobody listening yet: silently nothing
    bound = await listener.listen(woken.set, lambda _why: None)
    try:
        publisher.publish()
        await asyncio.wait_for(woken.wait(), 5)
    finally:
        await bound.close()
        await publisher.close()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=needs_postgres)])
async def test_two_servers_on_one_store_deliver_once_and_the_standby_takes_over(
    write_config: WriteConfig, tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    url = await fake.start()
    ports = [free_port(), free_port()]
    storage = f'"sqlite:///{tmp_path / "shared.db"}"'
    if backend == "postgresql":
        storage = f'"{PG_DSN}?schema={request.getfixturevalue("pg_schema")}"'
    configs = []
    for n, port in enumerate(ports):
        config = write_config(port=port, voxys_url=url)
        text = config.read_text()
        config.write_text(text.replace(f'"sqlite:///{tmp_path / "bridge.db"}"', storage))
        configs.append(config.rename(tmp_path / f"bridge{n}.yaml"))
    procs = [start_server(configs[0], ports[0])]
    procs.append(start_server(configs[1], ports[1]))
    lead = iter(range(500, 600))

    async def post(port: int) -> int:
        n = next(lead)
        body = stripe_event(f"evt_lease_{n}", lead_id=n)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/webhooks/stripe", data=body, headers=stripe_headers(body)
            ) as resp,
        ):
            assert resp.status == 200
        return n

    async def delivered(leads: set[int], within: float) -> None:
        async def poll() -> None:
            while not leads <= {c.lead_id for c in fake.calls if c.status == 200}:
                await asyncio.sleep(0.02)

        await asyncio.wait_for(poll(), within)

    try:
        sent = {await post(ports[0]), await post(ports[1]), await post(ports[1])}
        await delivered(sent, 15)
        per_lead = [c.lead_id for c in fake.calls]
        assert sorted(per_lead) == sorted(sent)  # each once: one deliverer, not two
        procs[0].send_signal(signal.SIGKILL)  # the first to start holds the lease
        procs[0].wait()
        started = time.monotonic()
        more = {await post(ports[1])}
        await delivered(more, 15)
        assert time.monotonic() - started < 15
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
        await fake.stop()
