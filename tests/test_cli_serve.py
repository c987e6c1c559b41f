"""The real console script: serve, SIGKILL durability, SIGTERM, and `check` messages."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bridge.store import open_store
from tests.conftest import WriteConfig, free_port, stripe_event, stripe_headers

pytestmark = pytest.mark.slow

SCRIPT = str(Path(sys.executable).parent / "voxys-bridge")


def wait_until_healthy(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Poll /healthz; a readiness probe, not a sleep: it returns as soon as the server answers."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("server did not become healthy")


@pytest.fixture
def server(write_config: WriteConfig) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    port = free_port()
    config = write_config(port=port)
    proc = subprocess.Popen(
        [SCRIPT, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        wait_until_healthy(port, proc)
        yield proc, port, config
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


async def post_events(port: int, ids: list[str]) -> list[int]:
    async with aiohttp.ClientSession() as session:

        async def post(event_id: str) -> int:
            body = stripe_event(event_id, lead_id=5)
            async with session.post(
                f"http://127.0.0.1:{port}/webhooks/stripe", data=body, headers=stripe_headers(body)
            ) as resp:
                return resp.status

        return list(await asyncio.gather(*(post(i) for i in ids)))


async def test_every_event_answered_200_survives_a_sigkill_right_after(server) -> None:
    proc, port, config = server
    ids = [f"evt_kill_{i}" for i in range(40)]
    statuses = await post_events(port, ids)
    proc.send_signal(signal.SIGKILL)  # no chance to flush or close anything
    proc.wait()
    assert statuses == [200] * len(ids)
    store = open_store(f"sqlite:///{config.parent / 'bridge.db'}")
    await store.open()
    try:
        stored = {s.event.event_id for s in await store.events_for_replay(since=0.0)}
    finally:
        await store.close()
    assert set(ids) <= stored


async def test_every_webhook_answered_200_has_its_log_line_after_a_sigkill(server) -> None:
    proc, port, _ = server
    ids = [f"evt_line_{i}" for i in range(40)]
    statuses = await post_events(port, ids)
    proc.send_signal(signal.SIGKILL)  # a line still buffered in the process would be lost
    proc.wait()
    assert statuses == [200] * len(ids)
    out = proc.stdout.read().decode()  # type: ignore[union-attr]
    received = [json.loads(line) for line in out.splitlines()]
    received = [line for line in received if line["event"] == "webhook.received"]
    assert len(received) == len(ids)
    assert all(line["events"] == 1 and line["source"] == "stripe" for line in received)


async def test_sigterm_finishes_and_exits_0_with_json_logs(server) -> None:
    proc, port, _ = server
    assert await post_events(port, ["evt_term"]) == [200]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    out = proc.stdout.read().decode()  # type: ignore[union-attr]
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert "webhook.received" in events
    assert events[-1] == "bridge.stopped"
    assert "whsec_" not in out and "voxys-token" not in out


def test_check_prints_a_summary_of_a_valid_config(write_config: WriteConfig) -> None:
    result = subprocess.run(
        [SCRIPT, "check", "--config", str(write_config())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "POST /webhooks/stripe" in result.stdout
    assert "stripe-paid" in result.stdout


def test_check_names_file_rule_and_key_without_a_traceback(write_config: WriteConfig) -> None:
    config = write_config()
    config.write_text(config.read_text().replace("status: won", "status: wonn"))
    result = subprocess.run(
        [SCRIPT, "check", "--config", str(config)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert str(config) in result.stderr
    assert "stripe-paid" in result.stderr
    assert "status" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [SCRIPT, "check", "--config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def start_server(config: Path, port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [SCRIPT, "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    wait_until_healthy(port, proc)
    return proc


async def test_transitions_not_confirmed_before_a_sigkill_are_sent_after_the_restart(
    write_config: WriteConfig,
) -> None:
    from bridge.fakevoxys import FakeVoxys
    from tests.conftest import VOXYS_TOKEN

    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    fake.latency = 30.0  # every PATCH hangs: they are in flight when the process dies
    url = await fake.start()
    port = free_port()
    config = write_config(port=port, voxys_url=url)
    proc = start_server(config, port)
    try:
        leads = list(range(101, 106))
        async with aiohttp.ClientSession() as session:
            for lead in leads:
                body = stripe_event(f"evt_sk_{lead}", lead_id=lead)
                async with session.post(
                    f"http://127.0.0.1:{port}/webhooks/stripe",
                    data=body,
                    headers=stripe_headers(body),
                ) as resp:
                    assert resp.status == 200

        async def arrived(n: int) -> None:
            while len(fake.calls) < n:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(arrived(len(leads)), 20)  # all sent, none answered yet
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        fake.latency = 0.0
        before = len(fake.calls)
        proc = start_server(config, port)

        async def resent() -> None:
            while {c.lead_id for c in fake.calls[before:] if c.status == 200} != set(leads):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(resent(), 20)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        await fake.stop()


async def test_with_workers_several_processes_share_the_port_and_one_delivers(
    write_config: WriteConfig,
) -> None:
    from bridge.fakevoxys import FakeVoxys
    from tests.conftest import VOXYS_TOKEN

    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    url = await fake.start()
    port = free_port()
    config = write_config(port=port, voxys_url=url)
    config.write_text(config.read_text().replace("max_body_bytes:", "workers: 3, max_body_bytes:"))
    proc = start_server(config, port)
    try:
        workers = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(workers) == 3
        leads = list(range(300, 360))
        async with aiohttp.ClientSession() as session:

            async def post(lead: int) -> int:
                body = stripe_event(f"evt_w_{lead}", lead_id=lead)
                async with session.post(
                    f"http://127.0.0.1:{port}/webhooks/stripe",
                    data=body,
                    headers=stripe_headers(body),
                ) as resp:
                    return resp.status

            assert await asyncio.gather(*(post(lead) for lead in leads)) == [200] * len(leads)

        async def delivered() -> None:
            while {c.lead_id for c in fake.calls if c.status == 200} != set(leads):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(delivered(), 20)
        assert len(fake.calls) == len(leads)  # one deliverer: each lead once
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        await fake.stop()


def test_healthcheck_says_healthy_while_the_server_runs_and_unhealthy_after(server) -> None:
    proc, port, config = server
    up = subprocess.run(
        [SCRIPT, "healthcheck", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (up.returncode, up.stdout.strip()) == (0, "healthy")
    proc.kill()
    proc.wait()
    down = subprocess.run(
        [SCRIPT, "healthcheck", "--config", str(config), "--timeout", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert down.returncode == 1
    assert down.stderr.startswith(f"unhealthy: http://127.0.0.1:{port}/healthz")
    assert "Traceback" not in down.stderr


async def test_sigterm_lets_a_patch_in_flight_finish_and_records_it(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    from bridge.fakevoxys import FakeVoxys
    from tests.conftest import VOXYS_TOKEN

    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    fake.latency = 1.0  # the PATCH is still in flight when SIGTERM arrives
    url = await fake.start()
    port = free_port()
    config = write_config(port=port, voxys_url=url)
    proc = start_server(config, port)
    try:
        assert await post_events(port, ["evt_graceful"]) == [200]

        async def arrived() -> None:
            while not fake.calls:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(arrived(), 10)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
        assert code == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        await fake.stop()
    assert [c.status for c in fake.calls] == [200]  # answered, not cut off
    store = open_store(f"sqlite:///{tmp_path / 'bridge.db'}")
    await store.open()
    try:
        [entry] = await store.ledger(7, 5)
    finally:
        await store.close()
    assert (entry.state, entry.attempts) == ("delivered", 1)  # recorded before exiting


def test_healthcheck_reads_only_the_server_section_of_the_config(server) -> None:
    # Given a healthy server whose config on disk then breaks everywhere but `server:`
    # (hot reload keeps the last good config running),
    _, port, config = server
    config.write_text(
        config.read_text()
        .replace("status: won", "status: wonn")
        .replace("${TEST_STRIPE_SECRET}", "${UNSET_SECRET_VARIABLE}")
        + "  - include: missing/*.yaml\n"
    )
    check = subprocess.run(
        [SCRIPT, "check", "--config", str(config)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 2
    # then the container's health check still says what it is asked: the server answers.
    up = subprocess.run(
        [SCRIPT, "healthcheck", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (up.returncode, up.stdout.strip(), up.stderr) == (0, "healthy", "")
    # A broken `server:` section is another matter: it names the key.
    config.write_text(config.read_text().replace(f"port: {port}", "port: eighty"))
    broken = subprocess.run(
        [SCRIPT, "healthcheck", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert broken.returncode == 2
    assert broken.stderr == f"error: {config}: key 'server.port': not an integer\n"
