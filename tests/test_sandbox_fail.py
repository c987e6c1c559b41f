"""`voxys-bridge sandbox --fail STATUS[:COUNT]`: dead letters and retries rehearsed against a
real bridge, both as processes of their own."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bridge.sandbox import parse_failure
from tests.conftest import WriteConfig, free_port, stripe_event, stripe_headers
from tests.test_cli_serve import SCRIPT, start_server
from tests.test_replicas import Sandbox

pytestmark = pytest.mark.slow


@pytest.fixture
def rehearsal(
    request: pytest.FixtureRequest, write_config: WriteConfig, tmp_path: Path
) -> Iterator[tuple[Sandbox, Path, int]]:
    sandbox = Sandbox(tmp_path, *request.param)
    port = free_port()
    config = write_config(port=port, voxys_url=sandbox.url)
    proc = start_server(config, port)
    try:
        yield sandbox, config, port
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        sandbox.stop()


async def post(port: int, event_id: str, lead: int) -> None:
    body = stripe_event(event_id, lead_id=lead)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"http://127.0.0.1:{port}/webhooks/stripe", data=body, headers=stripe_headers(body)
        ) as resp,
    ):
        assert resp.status == 200


def explain(config: Path, lead: str) -> list[dict[str, object]]:
    result = subprocess.run(
        [SCRIPT, "explain", "--lead", lead, "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    entries: list[dict[str, object]] = json.loads(result.stdout)
    return entries


async def settled(config: Path, lead: str) -> dict[str, object]:
    while True:
        entries = explain(config, lead)
        if entries and entries[0]["state"] not in ("pending", "in_flight"):
            return entries[0]
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("rehearsal", [["--fail", "500:2"]], indirect=True)
async def test_fail_500_twice_rehearses_retries_then_delivery(
    rehearsal: tuple[Sandbox, Path, int],
) -> None:
    sandbox, config, port = rehearsal
    await post(port, "evt_retry", 42)
    entry = await asyncio.wait_for(settled(config, "7/42"), 30)
    assert (entry["state"], entry["attempts"]) == ("delivered", 3)
    assert [c["status"] for c in sandbox.calls()] == [500, 500, 200]


@pytest.mark.parametrize("rehearsal", [["--fail", "422"]], indirect=True)
async def test_fail_422_rehearses_dead_letters_for_every_change(
    rehearsal: tuple[Sandbox, Path, int],
) -> None:
    sandbox, config, port = rehearsal
    await post(port, "evt_dead_1", 42)
    await post(port, "evt_dead_2", 43)
    for lead in ("7/42", "7/43"):
        entry = await asyncio.wait_for(settled(config, lead), 30)
        assert (entry["state"], entry["http_status"]) == ("dead", 422)
    assert [c["status"] for c in sandbox.calls()] == [422, 422]


@pytest.mark.parametrize("rehearsal", [["--fail", "503:1", "--fail", "422:1"]], indirect=True)
async def test_several_fails_apply_in_order_then_voxys_answers_normally(
    rehearsal: tuple[Sandbox, Path, int],
) -> None:
    sandbox, config, port = rehearsal
    await post(port, "evt_1", 42)
    entry = await asyncio.wait_for(settled(config, "7/42"), 30)
    assert (entry["state"], entry["http_status"]) == ("dead", 422)  # 503 retried, 422 final
    await post(port, "evt_2", 43)
    assert (await asyncio.wait_for(settled(config, "7/43"), 30))["state"] == "delivered"
    assert [c["status"] for c in sandbox.calls()] == [503, 422, 200]


@pytest.mark.parametrize(
    ("text", "parsed"), [("422", (422, None)), ("500:3", (500, 3)), ("429:1", (429, 1))]
)
def test_fail_values_parse(text: str, parsed: tuple[int, int | None]) -> None:
    assert parse_failure(text) == parsed


@pytest.mark.parametrize("text", ["200", "500:0", "5xx", "500:", ":3", "600"])
def test_a_bad_fail_value_is_a_usage_error_naming_the_format(text: str) -> None:
    result = subprocess.run(
        [SCRIPT, "sandbox", "--fail", text], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "argument --fail: expected STATUS[:COUNT]" in result.stderr
    assert "Traceback" not in result.stderr
