"""Hot reload on the real server: all or nothing, off the event loop, nothing lost.

Each test runs the real `voxys-bridge serve` console script against the fake Voxys and
edits its files the way an operator would, then sends SIGHUP or lets the file watcher
notice. A reload caught in the middle is held there by a named pipe (FIFO) among the
rule files: the load blocks reading it until the test writes to it, so "while a reload
runs" is a fact the test controls, not a guess about how long a load takes.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.fakevoxys import FakeVoxys, token_id
from tests.reliability.conftest import (
    HUBSPOT_SECRET,
    VOXYS_TOKEN,
    ServerProcess,
    signed_stripe,
    stripe_signed_bytes,
    write_yaml,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(120)]

NEW_TOKEN = "rlbNewVoxysTok-3c8e1f5a9d7b2e40"  # only in a config that must not apply
OUTCOMES = ("config.reloaded", "config.restart_required", "config.reload_failed")
# Rows of the lookup CSV that makes a reload slow: about half a second of parsing
# here. The test checks that the load it watched lasted long enough to mean something.
CSV_ROWS = 1_000_000
MIN_LOAD_S = 0.3


def logged(server: ServerProcess, *events: str) -> list[dict[str, Any]]:
    """Every JSON log line of the server whose event is one of `events`, in order."""
    lines = server.output().splitlines()
    found = (json.loads(line) for line in lines if any(f'"{e}"' in line for e in events))
    return [entry for entry in found if entry.get("event") in events]


async def until(condition: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)
    return result


async def reload_with(server: ServerProcess, config: dict[str, Any]) -> dict[str, Any]:
    """Write `config`, send SIGHUP, and return the first reload outcome logged after it."""
    before = len(logged(server, *OUTCOMES))
    write_yaml(server.config, config)
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    return (await until(lambda: logged(server, *OUTCOMES)[before:]))[0]


def hubspot_v3(url: str, body: bytes, secret: str = HUBSPOT_SECRET) -> dict[str, str]:
    """HubSpot's v3 headers, from its documented recipe: base64 HMAC-SHA256 of
    method + URI + body + timestamp (ms), keyed by the app's client secret."""
    timestamp = str(int(time.time() * 1000))
    message = b"POST" + url.encode() + body + timestamp.encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "X-HubSpot-Signature-v3": base64.b64encode(digest).decode(),
        "X-HubSpot-Request-Timestamp": timestamp,
    }


async def post_stripe(server: ServerProcess, event_id: str, lead_id: int) -> int:
    body, headers = signed_stripe(event_id, lead_id)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{server.url}/webhooks/stripe", data=body, headers=headers) as resp,
    ):
        return resp.status


async def test_a_reload_changing_the_voxys_account_applies_nothing_and_names_the_keys(
    server_factory: Any,
) -> None:
    fake = FakeVoxys(tokens={VOXYS_TOKEN, NEW_TOKEN})
    await fake.start()
    server: ServerProcess = server_factory(fake.base_url)
    try:
        server.start()
        await server.wait_healthy()
        config = yaml.safe_load(server.config.read_text())
        # Given a new account, a new token and a changed rule in one edit ...
        config["voxys"]["account_id"] = 8
        config["voxys"]["api_token"] = NEW_TOKEN
        config["rules"][0]["notes"] = "Changed {{ event.data.object.amount_total }}"
        outcome = await reload_with(server, config)
        # ... a webhook afterwards is mapped and sent exactly as before the edit.
        assert await post_stripe(server, "evt_after_reload", lead_id=11) == 200
        await until(lambda: fake.calls)
        [call] = fake.calls
        assert (call.account_id, call.lead_id) == (7, 11)
        assert call.token_id == token_id(VOXYS_TOKEN)
        assert call.body == {"status": "won", "notes": "Paid 1999"}
        assert outcome["event"] == "config.restart_required"
        assert outcome["level"] == "warning"
        assert outcome["keys"] == ["voxys.account_id", "voxys.api_token"]
        assert not logged(server, "config.reloaded")
        assert NEW_TOKEN not in server.output()
    finally:
        server.stop()
        await fake.stop()


async def test_a_new_public_url_keeps_hubspot_signatures_checked_against_the_running_one(
    server_factory: Any,
) -> None:
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    await fake.start()
    server: ServerProcess = server_factory(fake.base_url)
    try:
        server.start()
        await server.wait_healthy()
        config = yaml.safe_load(server.config.read_text())
        config["server"]["public_url"] = "https://bridge.example.invalid"
        outcome = await reload_with(server, config)
        path = "/webhooks/hubspot"
        event = {
            "eventId": 1,
            "subscriptionId": 2,
            "portalId": 3,
            "occurredAt": int(time.time() * 1000),
            "subscriptionType": "deal.propertyChange",
            "objectId": 4,
            "propertyName": "dealstage",
            "propertyValue": "closedwon",
        }
        body = json.dumps([event]).encode()
        async with aiohttp.ClientSession() as session:
            running = hubspot_v3(server.url + path, body)
            async with session.post(server.url + path, data=body, headers=running) as resp:
                assert resp.status == 200, await resp.text()
            edited = hubspot_v3("https://bridge.example.invalid" + path, body)
            async with session.post(server.url + path, data=body, headers=edited) as resp:
                assert resp.status == 401
        assert outcome["event"] == "config.restart_required"
        assert outcome["keys"] == ["server.public_url"]
    finally:
        server.stop()
        await fake.stop()


LATE_RULE = {
    "name": "late-rule",
    "source": "stripe",
    "when": "event.type == 'invoice.payment_failed'",
    "lead_id": "{{ event.data.object.metadata.voxys_lead_id }}",
    "status": "lost",
}


def open_for_writing(fifo: Path, timeout: float = 20.0) -> int:
    """The write end of `fifo`, once a reader has opened it (ENXIO until then)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            assert time.monotonic() < deadline, f"nobody opened {fifo} for reading"
            time.sleep(0.005)  # polling for the reader, a readiness probe


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="holds a load with a named pipe")
async def test_a_rule_file_written_while_a_reload_runs_is_loaded_afterwards(
    server_factory: Any, tmp_path: Path
) -> None:
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    await fake.start()
    server: ServerProcess = server_factory(fake.base_url)
    rules = tmp_path / "rules"
    rules.mkdir()
    gate = rules / "00-gate.yaml"  # sorted first among the includes: read first
    gate_text = "rules: []\n"
    gate.write_text(gate_text)
    config = yaml.safe_load(server.config.read_text())
    config["rules"] = [*config["rules"], {"include": "rules/*.yaml"}]
    write_yaml(server.config, config)
    try:
        server.start()
        await server.wait_healthy()
        # The gate becomes a named pipe: the file watcher's next load globs the includes,
        # then blocks reading the gate until we write to it.
        os.mkfifo(tmp_path / "gate.fifo")
        os.replace(tmp_path / "gate.fifo", gate)
        pipe = open_for_writing(gate)  # a load is now reading the gate
        try:
            outcomes = len(logged(server, *OUTCOMES))
            write_yaml(rules / "late.yaml", {"rules": [LATE_RULE]})
            (tmp_path / "gate.txt").write_text(gate_text)
            os.replace(tmp_path / "gate.txt", gate)  # a plain file again for later loads
            os.write(pipe, gate_text.encode())
        finally:
            os.close(pipe)  # end of file: the held load goes on
        added = await until(
            lambda: [
                line
                for line in logged(server, "config.reloaded")
                if "late-rule" in line["rules"]["added"]
            ]
        )
        assert len(logged(server, *OUTCOMES)) > outcomes + 1  # the held load, then another
        assert len(added) == 1
        event = json.loads(signed_stripe("evt_late", 21)[0])
        event["type"] = "invoice.payment_failed"
        body = json.dumps(event).encode()
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{server.url}/webhooks/stripe", data=body, headers=stripe_signed_bytes(body)
            ) as resp,
        ):
            assert resp.status == 200
        await until(lambda: fake.calls)
        assert [(c.lead_id, c.body) for c in fake.calls] == [(21, {"status": "lost"})]
    finally:
        server.stop()
        await fake.stop()


def write_csv(path: Path, rows: int, salt: str) -> None:
    """A `key,value` lookup CSV of `rows` rows whose values end in `salt`."""
    with path.open("w") as out:
        out.write("key,value\n")
        out.writelines(f"k{i},{i}{salt}\n" for i in range(rows))


async def test_webhooks_are_answered_promptly_while_a_slow_reload_runs(
    server_factory: Any, tmp_path: Path
) -> None:
    """The bound: no answer may take a quarter of the reload's own duration.

    A load on the event loop holds every request that arrives meanwhile until it ends,
    so the slowest answer is about the load's duration, however long that is; a load in
    a thread leaves the loop answering within milliseconds. The reload's duration is
    measured in this test (SIGHUP sent → outcome logged, an upper bound), so the bound
    scales with this machine's speed instead of trusting a fixed number of milliseconds.
    """
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    await fake.start()
    server: ServerProcess = server_factory(fake.base_url)
    csv, changed = tmp_path / "big.csv", tmp_path / "big.csv.new"
    write_csv(csv, CSV_ROWS, salt="a")
    write_csv(changed, CSV_ROWS, salt="b")  # written now: the client must not wait for it
    config = yaml.safe_load(server.config.read_text())
    config["lookups"] = {"big": {"file": csv.name}}
    write_yaml(server.config, config)
    answered: list[tuple[float, float]] = []  # (sent, answered), time.monotonic()
    try:
        server.start()
        await server.wait_healthy(timeout=60)
        assert server.proc is not None
        stop = asyncio.Event()

        async def post_until_stopped() -> None:
            async with aiohttp.ClientSession() as session:
                n = 0
                while not stop.is_set():
                    n += 1
                    body, headers = signed_stripe(f"evt_busy_{n}", lead_id=n)
                    sent = time.monotonic()
                    async with session.post(
                        f"{server.url}/webhooks/stripe", data=body, headers=headers
                    ) as resp:
                        assert resp.status == 200
                    answered.append((sent, time.monotonic()))

        client = asyncio.create_task(post_until_stopped())
        await until(lambda: len(answered) >= 20)  # steady state before the reload
        os.replace(changed, csv)  # a changed table: parsed again, not reused
        start = time.monotonic()
        server.proc.send_signal(signal.SIGHUP)
        outcome = (await until(lambda: logged(server, *OUTCOMES)))[0]
        end = time.monotonic()
        stop.set()
        await client
        assert outcome["event"] == "config.reloaded"
        assert outcome["lookups"] == ["big"]
        duration = end - start
        assert duration >= MIN_LOAD_S, f"the reload took {duration:.2f} s: too fast to tell"
        # Answers in the first half: after the reload ends the log line takes a poll to see.
        early = [a for _, a in answered if start <= a <= start + duration / 2]
        slowest = max(a - s for s, a in answered if s <= end and a >= start)
        assert len(early) >= 5, (
            f"{len(early)} answers in the first half of a {duration:.2f} s reload"
        )
        assert slowest < duration / 4, f"slowest {slowest:.3f} s in a {duration:.2f} s reload"
    finally:
        server.stop()
        await fake.stop()
