"""Three real bridge processes on one PostgreSQL database: the leader dies mid-stream."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.fakevoxys import max_in_window
from tests.conftest import (
    PG_DSN,
    VOXYS_TOKEN,
    WriteConfig,
    free_port,
    needs_postgres,
    stripe_headers,
)
from tests.test_cli_serve import SCRIPT, start_server

pytestmark = [pytest.mark.slow, pytest.mark.postgres, needs_postgres]

RATE = 20  # requests per second allowed at Voxys
STATUSES = ["open", "snoozed", "won"]  # each lead's events, oldest first
RULES = """
rules:
  - name: stripe-status
    source: stripe
    when: event.type == 'checkout.session.completed'
    lead_id: "{{ event.data.object.metadata.voxys_lead_id }}"
    status: "{{ event.data.object.metadata.status }}"
"""


def event(lead: int, step: int) -> bytes:
    return json.dumps(
        {
            "id": f"evt_r_{lead}_{step}",
            "type": "checkout.session.completed",
            "created": 1_800_000_000 + step * 10 + lead,  # per lead, later steps happened later
            "data": {
                "object": {"metadata": {"voxys_lead_id": str(lead), "status": STATUSES[step]}}
            },
        }
    ).encode()


def leader_of(ports: list[int]) -> int:
    """The port of the replica whose /metrics says it delivers."""
    import urllib.request

    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            if "bridge_delivery_leader 1.0" in resp.read().decode():
                return port
    raise AssertionError("no replica holds the delivery lease")


class Sandbox:
    """`voxys-bridge sandbox --json` in a process of its own, as Voxys is: arrivals are
    timed there, not in this test's busy event loop."""

    def __init__(self, tmp_path: Path, *options: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / "sandbox.jsonl"
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            [
                SCRIPT,
                "sandbox",
                "--port",
                str(self.port),
                "--token",
                VOXYS_TOKEN,
                "--json",
                *options,
            ],
            stdout=self._out,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while "listening" not in self.log.read_text():
            assert time.monotonic() < deadline, "the sandbox did not start"
            time.sleep(0.02)

    def calls(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._out.close()


async def test_the_leader_dies_mid_stream_and_nothing_is_lost_reordered_or_over_the_rate(
    write_config: WriteConfig, tmp_path: Path, pg_schema: str
) -> None:
    sandbox = Sandbox(tmp_path)
    ports = [free_port() for _ in range(3)]
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for n, port in enumerate(ports):
            config = write_config(port=port, voxys_url=sandbox.url)
            text = config.read_text()
            text = text.replace(
                f'"sqlite:///{tmp_path / "bridge.db"}"', f'"{PG_DSN}?schema={pg_schema}"'
            )
            text = text.replace(
                "requests: 1000, per_seconds: 1", f"requests: {RATE}, per_seconds: 1"
            )
            text = text[: text.index("rules:")] + RULES
            path = tmp_path / f"replica{n}.yaml"
            path.write_text(text)
            procs[port] = start_server(path, port)

        leads = list(range(1, 31))
        posts = [(lead, step) for step in range(3) for lead in leads]  # older events first
        killed = None
        alive = list(ports)
        async with aiohttp.ClientSession() as session:
            for i, (lead, step) in enumerate(posts):
                if i == len(posts) // 2:
                    killed = leader_of(ports)
                    procs[killed].send_signal(signal.SIGKILL)
                    procs[killed].wait()
                    alive.remove(killed)
                port = alive[i % len(alive)]
                body = event(lead, step)
                async with session.post(
                    f"http://127.0.0.1:{port}/webhooks/stripe",
                    data=body,
                    headers=stripe_headers(body),
                ) as resp:
                    assert resp.status == 200  # every event is answered 2xx
        assert killed is not None

        def last_status() -> dict[int, str]:
            final: dict[int, str] = {}
            for call in sandbox.calls():
                if call["status"] == 200:
                    final[call["lead_id"]] = call["body"]["status"]
            return final

        deadline = time.monotonic() + 60
        while last_status() != {lead: "won" for lead in leads}:
            assert time.monotonic() < deadline, last_status()
            await asyncio.sleep(0.1)
        calls = sandbox.calls()
        # No lead ever went back to an older event's status (per-lead order) ...
        for lead in leads:
            seen = [
                STATUSES.index(c["body"]["status"])
                for c in calls
                if c["lead_id"] == lead and c["status"] == 200
            ]
            assert seen == sorted(seen), (lead, seen)
        # ... and Voxys never saw more than the configured rate in any 1 s window.
        assert max_in_window([c["at"] for c in calls], 1.0) <= RATE
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
        sandbox.stop()
