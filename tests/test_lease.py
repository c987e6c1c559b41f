"""The delivery lease: one deliverer among the processes sharing a store, and takeover."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from bridge.fakevoxys import FakeVoxys
from bridge.lease import AlwaysHeld, FileLease, PostgresLease, lease_for
from bridge.wakeup import PostgresNotify, UnixDatagram, wakeup_for
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


def test_the_lease_file_sits_next_to_the_database() -> None:
    lease = lease_for("sqlite:////var/lib/bridge/bridge.db?synchronous=full")
    assert isinstance(lease, FileLease)
    assert lease.path == Path("/var/lib/bridge/bridge.db.lease")
    assert isinstance(lease_for("sqlite://:memory:"), AlwaysHeld)
    assert isinstance(lease_for("postgresql://u:p@db/bridge"), PostgresLease)


async def test_only_one_holder_at_a_time_and_release_hands_it_over(tmp_path: Path) -> None:
    first, second = FileLease(tmp_path / "b.lease"), FileLease(tmp_path / "b.lease")
    assert await first.try_acquire()
    assert not await second.try_acquire()
    await first.release()
    assert await second.try_acquire()
    assert not await first.try_acquire()
    await second.release()


async def test_a_killed_holder_loses_the_lease_at_once(tmp_path: Path) -> None:
    path = tmp_path / "b.lease"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys, time\n"
            "from pathlib import Path\n"
            "from bridge.lease import FileLease\n"
            f"assert asyncio.run(FileLease(Path({str(path)!r})).try_acquire())\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        mine = FileLease(path)
        assert not await mine.try_acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert await mine.try_acquire()
        await mine.release()
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout:
            holder.stdout.close()


@needs_postgres
async def test_the_postgres_lease_is_exclusive_and_ends_with_its_connection() -> None:
    assert PG_DSN is not None
    first, second = PostgresLease(PG_DSN, "a"), PostgresLease(PG_DSN, "a")
    elsewhere = PostgresLease(PG_DSN, "b")  # another deployment's schema: its own lease
    try:
        assert await first.try_acquire()
        assert await first.still_held()
        assert not await second.try_acquire()
        assert await elsewhere.try_acquire()
        await first.release()  # as when the holder's connection dies
        assert not await first.still_held()
        assert await second.try_acquire()
    finally:
        for lease in (first, second, elsewhere):
            await lease.release()


@needs_postgres
async def test_a_notify_after_a_commit_wakes_the_listener_at_once() -> None:
    assert PG_DSN is not None
    listener, publisher = PostgresNotify(PG_DSN), PostgresNotify(PG_DSN)
    woken = asyncio.Event()
    try:
        await listener.listen(woken.set)
        publisher.publish()
        await asyncio.wait_for(woken.wait(), 5)
    finally:
        await listener.close()
        await publisher.close()


async def test_a_datagram_wakes_the_deliverer_of_a_shared_sqlite_file(tmp_path: Path) -> None:
    wakeup = wakeup_for(f"sqlite:///{tmp_path / ('x' * 120) / 'b.db'}")
    assert isinstance(wakeup, UnixDatagram)
    assert len(str(wakeup.path)) <= 100  # a long path falls back to the temp directory
    listener, publisher = UnixDatagram(tmp_path / "b.db.wake"), UnixDatagram(tmp_path / "b.db.wake")
    woken = asyncio.Event()
    try:
        publisher.publish()  # nobody listening yet: silently nothing
        await listener.listen(woken.set)
        publisher.publish()
        await asyncio.wait_for(woken.wait(), 5)
    finally:
        await listener.close()
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
