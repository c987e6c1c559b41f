"""`dead-letters retry` and `replay`, run beside a serving bridge, wake its deliverer at once.

Real processes: `voxys-bridge serve` on SQLite or PostgreSQL, the command in another
process, the fake Voxys in this one. The deliverer has just gone idle (its next safety-net
poll is 30 s away) when the command runs; the transition it queues must reach Voxys
within a few seconds of the command exiting, which only a wake-up explains.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bridge.delivery import IDLE_POLL_S
from bridge.fakevoxys import Answer, FakeVoxys
from bridge.store import open_backend
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

pytestmark = pytest.mark.slow

SCRIPT = str(Path(sys.executable).parent / "voxys-bridge")
WITHIN_S = 10.0  # after the command exits; the safety-net poll would take up to 30 s


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, needs_postgres])]
)
def storage_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bridge.db'}"
    assert PG_DSN is not None
    schema = request.getfixturevalue("pg_schema")  # a schema of its own, dropped after
    return f"{PG_DSN}{'&' if '?' in PG_DSN else '?'}schema={schema}"


async def cli(config: Path, *args: str) -> float:
    """Run a store command to its end; the monotonic time it exited."""
    proc = await asyncio.create_subprocess_exec(
        SCRIPT,
        *args,
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert err == b""  # not even a note that the server could not be woken
    return time.monotonic()


async def answered(fake: FakeVoxys, count: int, status: int) -> float:
    """Wait until `count` calls were answered `status`; the monotonic time the last came."""
    while sum(1 for c in fake.calls if c.status == status) < count:
        await asyncio.sleep(0.01)
    return time.monotonic()


@pytest.fixture
async def bridge(
    write_config: WriteConfig, storage_url: str
) -> AsyncIterator[tuple[Path, FakeVoxys, int]]:
    async with FakeVoxys(tokens=VOXYS_TOKEN) as fake:
        port = free_port()
        config = write_config(port=port, voxys_url=fake.base_url)
        text = config.read_text()
        start = text.index('storage: {url: "') + len('storage: {url: "')
        config.write_text(text[:start] + storage_url + text[text.index('"', start) :])
        proc = start_server(config, port)
        try:
            yield config, fake, port
        finally:
            proc.terminate()
            await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
            proc.stderr.close()  # type: ignore[union-attr]


async def post(port: int, body: bytes) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/webhooks/stripe", data=body, headers=stripe_headers(body)
        ) as resp,
    ):
        assert resp.status == 200


async def test_dead_letters_retry_beside_a_running_server_is_delivered_at_once(
    bridge: tuple[Path, FakeVoxys, int],
) -> None:
    config, fake, port = bridge
    # Given a transition Voxys refused for good (422), so the deliverer went idle,
    fake.script(Answer(status=422))
    await post(port, stripe_event("evt_dead", lead_id=42))
    await asyncio.wait_for(answered(fake, 1, 422), 20)
    await asyncio.wait_for(dead_letter_listed(config), 20)
    # when an operator retries it from another process,
    exited = await cli(config, "dead-letters", "retry")
    # then the running server sends it within seconds, not at its next poll.
    delivered = await asyncio.wait_for(answered(fake, 1, 200), IDLE_POLL_S)
    assert delivered - exited < WITHIN_S


async def listed(config: Path, *command: str) -> None:
    """Until the store command lists something (the server wrote it)."""
    while True:
        proc = await asyncio.create_subprocess_exec(
            SCRIPT, *command, "--json", "--config", str(config), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        if out.strip() not in (b"", b"[]"):
            return
        await asyncio.sleep(0.1)


async def dead_letter_listed(config: Path) -> None:
    await listed(config, "dead-letters", "list")


async def unmapped_listed(config: Path) -> None:
    await listed(config, "events", "list", "--outcome", "unmapped")


async def test_replay_beside_a_running_server_is_delivered_at_once(
    bridge: tuple[Path, FakeVoxys, int],
) -> None:
    config, fake, port = bridge
    # Given an event stored unmapped (the rule reads a key this sender does not set),
    body = stripe_event("evt_unmapped", lead_id=43).replace(b'"voxys_lead_id"', b'"lead_ref"')
    await post(port, body)
    await asyncio.wait_for(unmapped_listed(config), 20)
    # and the rule fixed,
    text = config.read_text()
    config.write_text(text.replace("metadata.voxys_lead_id", "metadata.lead_ref"))
    # when the fixed rule is replayed from another process,
    exited = await cli(config, "replay", "--outcome", "unmapped")
    # then the running server sends the transition within seconds.
    delivered = await asyncio.wait_for(answered(fake, 1, 200), IDLE_POLL_S)
    assert delivered - exited < WITHIN_S
    [call] = fake.calls
    assert call.lead_id == 43


async def test_waking_a_store_no_server_serves_is_harmless(tmp_path: Path) -> None:
    for url in (f"sqlite:///{tmp_path / 'bridge.db'}", "sqlite://:memory:"):
        backend = open_backend(url)
        await backend.store.open()
        try:
            await backend.wakeup.notify()  # no socket bound: no error
        finally:
            await backend.wakeup.close()
            await backend.store.close()
