"""No background task ends silently: the supervisor logs, restarts, and tells /readyz."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import structlog
from aiohttp.test_utils import TestClient, TestServer

from bridge.app import create_app
from bridge.bundle import load_bundle
from bridge.runtime import Runtime
from bridge.store import open_store
from bridge.supervisor import Supervisor
from tests.conftest import WriteConfig


class Backoff:
    """A supervisor's sleep the test releases by hand: controlled time, no waiting."""

    def __init__(self) -> None:
        self.asked: list[float] = []
        self.started: asyncio.Queue[float] = asyncio.Queue()
        self._go = asyncio.Semaphore(0)

    async def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        self.started.put_nowait(seconds)
        await self._go.acquire()

    async def next_sleep(self) -> float:
        """Wait until the supervisor starts its next backoff sleep."""
        return await asyncio.wait_for(self.started.get(), 5)

    def release(self) -> None:
        self._go.release()


class Flaky:
    """A task body that fails the first `failures` runs and then waits forever."""

    def __init__(self, failures: int) -> None:
        self.runs = 0
        self.failures = failures
        self.running = asyncio.Event()

    async def __call__(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise RuntimeError(f"boom {self.runs}")
        self.running.set()
        await asyncio.Event().wait()


async def test_a_task_that_raises_is_logged_reported_broken_and_restarted() -> None:
    backoff, task = Backoff(), Flaky(failures=1)
    supervisor = Supervisor(initial=1.0, sleep=backoff)
    with structlog.testing.capture_logs() as logs:
        supervisor.start("delivery", task)
        await backoff.next_sleep()

        assert supervisor.broken() == {"delivery": "RuntimeError: boom 1"}
        failed = [e for e in logs if e["event"] == "task.failed"]
        assert [(e["task"], e["log_level"]) for e in failed] == [("delivery", "error")]

        backoff.release()
        await asyncio.wait_for(task.running.wait(), 5)
    assert supervisor.broken() == {}
    assert supervisor.restarts == {"delivery": 1}
    await supervisor.stop()


async def test_a_task_that_returns_on_its_own_is_an_error_and_is_restarted() -> None:
    backoff = Backoff()
    runs = 0

    async def quits() -> None:
        nonlocal runs
        runs += 1

    supervisor = Supervisor(sleep=backoff)
    with structlog.testing.capture_logs() as logs:
        supervisor.start("retention", quits)
        await backoff.next_sleep()
    assert supervisor.broken() == {"retention": "ended"}
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["task.ended"]
    backoff.release()
    await backoff.next_sleep()
    assert runs == 2
    await supervisor.stop()


async def test_the_backoff_doubles_up_to_its_maximum() -> None:
    backoff, task = Backoff(), Flaky(failures=4)
    supervisor = Supervisor(initial=1.0, maximum=5.0, sleep=backoff)
    supervisor.start("delivery", task)
    for _ in range(4):
        await backoff.next_sleep()
        backoff.release()
    await asyncio.wait_for(task.running.wait(), 5)
    assert backoff.asked == [1.0, 2.0, 4.0, 5.0]
    await supervisor.stop()


async def test_stop_cancels_every_task_and_waits_for_its_clean_up() -> None:
    cleaned = asyncio.Event()
    started = asyncio.Event()

    async def holds_something() -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # a clean-up that itself awaits
            cleaned.set()

    supervisor = Supervisor()
    supervisor.start("delivery", holds_something)
    await asyncio.wait_for(started.wait(), 5)
    await supervisor.stop()
    assert cleaned.is_set()


@pytest.fixture
async def ready_client(write_config: WriteConfig) -> AsyncIterator[tuple[TestClient, Runtime]]:
    bundle = load_bundle(write_config())
    runtime = Runtime(bundle=bundle, store=open_store(bundle.config.storage.url))
    client = TestClient(TestServer(create_app(runtime)))
    await client.start_server()
    yield client, runtime
    await client.close()


async def test_readyz_is_503_naming_the_task_while_it_is_down_and_200_again_after(
    ready_client: tuple[TestClient, Runtime],
) -> None:
    client, runtime = ready_client
    backoff, task = Backoff(), Flaky(failures=1)
    runtime.supervisor.sleep = backoff
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["delivery_role"] == "standby"

    runtime.supervisor.start("delivery", task)
    await backoff.next_sleep()
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.json())["tasks"] == {"delivery": "RuntimeError: boom 1"}

    backoff.release()
    await asyncio.wait_for(task.running.wait(), 5)
    assert (await client.get("/readyz")).status == 200
