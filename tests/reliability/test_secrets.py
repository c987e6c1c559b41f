"""Secrets never leave: a realistic run of the real server, then a grep for every secret.

The run covers ingest, delivery (including 401 and 422 from Voxys), forged requests
that carry secrets in the wrong place, the admin API with right and wrong tokens,
/metrics, `check`, `stats`, `dead-letters list`, and config reloads that fail on
lines holding a new secret. Every byte the server printed (stdout and stderr, debug
level), every answer body and header, and every CLI output is searched for each secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.fakevoxys import Answer, FakeVoxys
from tests.reliability.conftest import (
    ADMIN_TOKEN,
    GENERIC_SECRET,
    PIPEDRIVE_PASSWORD,
    SCRIPT,
    SECRETS,
    STDWH_SECRET,
    STRIPE_SECRET,
    VOXYS_TOKEN,
    ServerProcess,
    signed_stripe,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(90)]

RELOAD_SECRET = "rlbReloadSecret-7d1f0e"  # appears only in configs that fail to load
ALL_SECRETS = (*SECRETS, RELOAD_SECRET)


class Transcript:
    """Everything a client or operator could see, as text."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    async def request(
        self, session: aiohttp.ClientSession, method: str, url: str, **kw: Any
    ) -> int:
        async with session.request(method, url, **kw) as resp:
            body = await resp.text(errors="replace")
            self.parts.append(f"{method} {url} -> {resp.status} {dict(resp.headers)} {body}")
            return resp.status

    def cli(self, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [SCRIPT, *args], capture_output=True, text=True, check=False, env=env
        )
        self.parts.append(f"$ {' '.join(args)}\n{result.stdout}\n{result.stderr}")
        return result


async def until(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def reload_fails(server: ServerProcess, config: Path, text: str) -> None:
    """Write a broken config, SIGHUP, and wait for the server to log the failure."""
    seen = server.output().count("config.reload_failed")
    config.write_text(text)  # noqa: ASYNC240 - a small file, written once
    assert server.proc is not None
    server.proc.send_signal(signal.SIGHUP)
    await until(lambda: server.output().count("config.reload_failed") > seen)


async def test_no_secret_appears_in_logs_answers_metrics_or_cli_output(
    server_factory: Any, rlb_env: dict[str, str]
) -> None:
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    await fake.start()
    server: ServerProcess = server_factory(fake.base_url, level="debug")
    good_config = server.config.read_text()
    seen = Transcript()
    server.start()
    await server.wait_healthy()
    url = server.url
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with aiohttp.ClientSession() as s:
            # Ingest and delivery: one delivered, one dead-lettered (422), one refused (401).
            body, headers = signed_stripe("evt_secret_ok", lead_id=1)
            assert (
                await seen.request(s, "POST", f"{url}/webhooks/stripe", data=body, headers=headers)
                == 200
            )
            await until(lambda: any(c.status == 200 for c in fake.calls))
            fake.script(Answer(422, body={"error": "status is invalid"}))
            body, headers = signed_stripe("evt_secret_dead", lead_id=2)
            assert (
                await seen.request(s, "POST", f"{url}/webhooks/stripe", data=body, headers=headers)
                == 200
            )
            await until(lambda: any(c.status == 422 for c in fake.calls))
            fake.revoke(VOXYS_TOKEN)
            body, headers = signed_stripe("evt_secret_401", lead_id=3)
            assert (
                await seen.request(s, "POST", f"{url}/webhooks/stripe", data=body, headers=headers)
                == 200
            )
            await until(lambda: any(c.status == 401 for c in fake.calls))

            # Forged requests carrying secrets where they do not belong.
            wrong_user = base64.b64encode(f"mallory:{PIPEDRIVE_PASSWORD}".encode()).decode()
            forged = [
                ("stripe", {"Stripe-Signature": f"t=1,v1={STRIPE_SECRET}"}),
                ("pipedrive", {"Authorization": f"Basic {wrong_user}"}),
                ("shop", {"X-Signature": f"sha256={GENERIC_SECRET}"}),
                (
                    "billing",
                    {
                        "webhook-id": "m",
                        "webhook-timestamp": "1",
                        "webhook-signature": f"v1,{STDWH_SECRET}",
                    },
                ),
                (
                    "hubspot",
                    {
                        "X-HubSpot-Signature-v3": ADMIN_TOKEN,
                        "X-HubSpot-Request-Timestamp": str(int(time.time() * 1000)),
                    },
                ),
                ("nope", {"Authorization": f"Bearer {VOXYS_TOKEN}"}),
            ]
            for source, extra in forged:
                status = await seen.request(
                    s,
                    "POST",
                    f"{url}/webhooks/{source}",
                    data=b'{"id": "x"}',
                    headers={"Content-Type": "application/json", **extra},
                )
                assert 400 <= status < 500

            # The admin API, with and without the token; /metrics; readiness.
            for path in ("stats", "dead-letters", "leads/7/2"):
                assert await seen.request(s, "GET", f"{url}/admin/{path}", headers=admin) == 200
            assert await seen.request(s, "GET", f"{url}/admin/stats") == 401
            bad = {"Authorization": f"Bearer {ADMIN_TOKEN}x"}
            assert await seen.request(s, "GET", f"{url}/admin/stats", headers=bad) == 401
            assert (
                await seen.request(
                    s, "POST", f"{url}/admin/dead-letters/retry", headers=admin, json={"ids": "x"}
                )
                == 400
            )
            assert await seen.request(s, "GET", f"{url}/metrics") == 200
            assert await seen.request(s, "GET", f"{url}/readyz") == 200

        # Reloads that fail on lines holding a secret not known to the running server.
        raw = yaml.safe_load(good_config)
        broken_yaml = good_config + f'\nlookups: {{x: "{RELOAD_SECRET}\n'
        raw["sources"]["hubspot"]["secret"] = RELOAD_SECRET
        raw["sources"]["hubspot"]["tolerance"] = "soon"  # invalid next to a new secret
        bad_value = yaml.safe_dump(raw)
        raw2 = yaml.safe_load(good_config)
        raw2["admin"] = {"token": {"nested": RELOAD_SECRET}}
        bad_type = yaml.safe_dump(raw2)
        for text in (broken_yaml, bad_value, bad_type):
            await reload_fails(server, server.config, text)
            result = seen.cli("check", "--config", str(server.config), env=rlb_env)
            assert result.returncode == 2
        server.config.write_text(good_config)

        # Operator commands against the same database.
        for args in (
            ["check"],
            ["stats", "--json"],
            ["dead-letters", "list", "--json"],
            ["dead-letters", "list"],
        ):
            assert seen.cli(*args, "--config", str(server.config), env=rlb_env).returncode == 0
        assert server.terminate() == 0
    finally:
        server.stop()
        await fake.stop()

    log = server.output()
    everything = log + "\n".join(seen.parts)
    assert '"voxys.auth_failed"' in log  # the run really reached the 401 path
    assert '"transition.dead"' in log
    assert log.count("config.reload_failed") >= 3  # SIGHUP, and the file watcher too
    assert "Bearer" not in log
    leaks = {secret: everything.count(secret) for secret in ALL_SECRETS if secret in everything}
    lines = len(log.splitlines())
    print(
        f"\nsecrets: {len(ALL_SECRETS)} secrets, {lines} log lines, "
        f"{len(seen.parts)} answers/outputs, {sum(map(len, seen.parts)) + len(log)} bytes searched"
    )
    assert leaks == {}
    json.loads(log.splitlines()[0])  # the log really is the JSON the grep relies on
