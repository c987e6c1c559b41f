"""Three real bridge processes on one PostgreSQL database: the leader dies mid-stream."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from bridge.fakevoxys import FakeVoxys
from tests.conftest import (
    PG_DSN,
    VOXYS_TOKEN,
    WriteConfig,
    free_port,
    needs_postgres,
    stripe_headers,
)
from tests.test_cli_serve import start_server

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


async def test_the_leader_dies_mid_stream_and_nothing_is_lost_reordered_or_over_the_rate(
    write_config: WriteConfig, tmp_path: Path, pg_schema: str
) -> None:
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    url = await fake.start()
    ports = [free_port() for _ in range(3)]
    procs: dict[int, subprocess.Popen[bytes]] = {}
    try:
        for n, port in enumerate(ports):
            config = write_config(port=port, voxys_url=url)
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
        accepted: list[tuple[int, int]] = []
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
                    assert resp.status == 200
                    accepted.append((lead, step))
        assert killed is not None
        assert len(accepted) == len(posts)

        async def settled() -> None:
            while any(fake.leads.get((7, lead), {}).get("status") != "won" for lead in leads):
                await asyncio.sleep(0.05)

        started = time.monotonic()
        await asyncio.wait_for(settled(), 60)
        # Every lead ends in the state of its newest event ...
        assert {fake.leads[(7, lead)]["status"] for lead in leads} == {"won"}
        # ... and no lead ever went back to an older event's status (per-lead order).
        for lead in leads:
            seen = [
                STATUSES.index(c.body["status"])
                for c in fake.calls
                if c.lead_id == lead and c.status == 200
            ]
            assert seen == sorted(seen), (lead, seen)
        assert fake.max_in_window(1.0) <= RATE
        assert time.monotonic() - started < 60
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
        await fake.stop()
