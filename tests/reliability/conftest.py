"""Reliability suite helpers: a config with distinctive secrets, the real server as a process.

Every secret below is distinctive on purpose: `test_secrets.py` greps logs, metrics and
answers for them, so none may be a substring of anything the bridge prints on its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import PG_DSN, free_port, needs_postgres, stripe_event, stripe_headers

SCRIPT = str(Path(sys.executable).parent / "voxys-bridge")

VOXYS_TOKEN = "rlbVoxysTok-9f3e1c7a5b"
STRIPE_SECRET = "whsec_rlbStripeSec5e8d2a0b"
HUBSPOT_SECRET = "rlbHubspotSec-41c9d7e2"
STDWH_RAW = b"rlbStdwhSecretBytes-32-long-0001"
STDWH_SECRET = "whsec_" + base64.b64encode(STDWH_RAW).decode()
PIPEDRIVE_PASSWORD = "rlbPipedrivePw-0a7f3c9"
GENERIC_SECRET = "rlbGenericSec-b3d1e6f0"
ADMIN_TOKEN = "rlbAdminTok-c2e8f4a19"

ENV = {
    "RLB_VOXYS_TOKEN": VOXYS_TOKEN,
    "RLB_STRIPE_SECRET": STRIPE_SECRET,
    "RLB_HUBSPOT_SECRET": HUBSPOT_SECRET,
    "RLB_STDWH_SECRET": STDWH_SECRET,
    "RLB_PIPEDRIVE_PASSWORD": PIPEDRIVE_PASSWORD,
    "RLB_GENERIC_SECRET": GENERIC_SECRET,
    "RLB_ADMIN_TOKEN": ADMIN_TOKEN,
}
SECRETS = (
    VOXYS_TOKEN,
    STRIPE_SECRET,
    HUBSPOT_SECRET,
    STDWH_SECRET,
    STDWH_SECRET.removeprefix("whsec_"),
    PIPEDRIVE_PASSWORD,
    base64.b64encode(f"voxys:{PIPEDRIVE_PASSWORD}".encode()).decode(),
    GENERIC_SECRET,
    ADMIN_TOKEN,
)

SOURCES: dict[str, dict[str, Any]] = {
    "stripe": {"preset": "stripe", "secret": "${RLB_STRIPE_SECRET}"},
    "hubspot": {"preset": "hubspot", "secret": "${RLB_HUBSPOT_SECRET}"},
    "billing": {"preset": "standard-webhooks", "secret": "${RLB_STDWH_SECRET}"},
    "pipedrive": {
        "preset": "pipedrive",
        "basic_auth": {"username": "voxys", "password": "${RLB_PIPEDRIVE_PASSWORD}"},
    },
    "shop": {
        "verify": {
            "type": "hmac",
            "header": "X-Signature",
            "algorithm": "sha256",
            "encoding": "hex",
            "prefix": "sha256=",
        },
        "secret": "${RLB_GENERIC_SECRET}",
        "event_id": "{{ event.id }}",
    },
}

STRIPE_RULE = {
    "name": "stripe-paid",
    "source": "stripe",
    "when": "event.type == 'checkout.session.completed'",
    "lead_id": "{{ event.data.object.metadata.voxys_lead_id }}",
    "status": "won",
    "notes": "Paid {{ event.data.object.amount_total }}",
}


def bridge_config(
    *,
    port: int,
    db: Path,
    voxys_url: str,
    rate: int = 1000,
    per_seconds: float = 1.0,
    timeout: str = "2s",
    max_in_flight: int = 8,
    initial: str = "50ms",
    max_backoff: str = "200ms",
    max_attempts: int = 15,
    max_body: int = 65536,
    admin: bool = True,
    level: str = "info",
) -> dict[str, Any]:
    """A full bridge.yaml as a mapping: every source preset, one rule, small backoffs."""
    config: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "port": port,
            "public_url": f"http://127.0.0.1:{port}",
            "max_body_bytes": max_body,
            "shutdown_timeout": "2s",
        },
        "storage": {"url": f"sqlite:///{db}"},
        "voxys": {
            "base_url": voxys_url,
            "api_token": "${RLB_VOXYS_TOKEN}",
            "account_id": 7,
            "rate_limit": {"requests": rate, "per_seconds": per_seconds},
            "timeout": timeout,
            "max_in_flight": max_in_flight,
            "retry": {
                "max_attempts": max_attempts,
                "backoff": {"initial": initial, "max": max_backoff},
            },
        },
        "logging": {"format": "json", "level": level},
        "sources": SOURCES,
        "rules": [STRIPE_RULE],
    }
    if admin:
        config["admin"] = {"token": "${RLB_ADMIN_TOKEN}"}
    return config


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def rlb_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The distinctive secrets in this process's environment (in-process apps read them)."""
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **ENV}


def signed_stripe(event_id: str, lead_id: int) -> tuple[bytes, dict[str, str]]:
    """A checkout.session.completed event for `lead_id`, signed by Stripe's own library."""
    body = stripe_event(event_id, lead_id=lead_id)
    return body, stripe_headers(body, secret=STRIPE_SECRET)


def stripe_signed_bytes(body: bytes, secret: str = STRIPE_SECRET) -> dict[str, str]:
    """Stripe's scheme (HMAC-SHA256 of `t.body`) over raw bytes; Stripe's library signs text."""
    t = int(time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={mac}", "Content-Type": "application/json"}


class ServerProcess:
    """The real `voxys-bridge serve` console script; output goes to a file (never a pipe).

    A file, because a killed process's pipe is never drained and a full pipe would block
    the next one; all runs append to the same log so every line can be inspected later.
    """

    def __init__(self, config: Path, port: int, log: Path, env: dict[str, str]) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [SCRIPT, "serve", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.starts += 1

    async def wait_healthy(self, timeout: float = 20.0) -> float:
        """Poll /healthz until it answers 200; the seconds that took."""
        assert self.proc is not None
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - started < timeout:
                if self.proc.poll() is not None:
                    raise AssertionError(f"server exited {self.proc.returncode}: {self.tail()}")
                try:
                    async with session.get(
                        f"{self.url}/healthz", timeout=aiohttp.ClientTimeout(total=1)
                    ) as resp:
                        if resp.status == 200:
                            return time.monotonic() - started
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.02)  # readiness polling interval, not a wait-and-hope
        raise AssertionError(f"server not healthy within {timeout} s: {self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no flush, no close, no shutdown hook."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


@pytest.fixture
def server_factory(tmp_path: Path, rlb_env: dict[str, str]) -> Iterator[Any]:
    """Make a `ServerProcess` for a config mapping; every one is killed at teardown."""
    made: list[ServerProcess] = []

    def make(voxys_url: str, db: Path | None = None, **options: Any) -> ServerProcess:
        port = free_port()
        db = db or tmp_path / "bridge.db"
        config = bridge_config(port=port, db=db, voxys_url=voxys_url, **options)
        path = write_yaml(tmp_path / "bridge.yaml", config)
        server = ServerProcess(path, port, tmp_path / "server.log", rlb_env)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


@pytest.fixture
def fleet(tmp_path: Path, rlb_env: dict[str, str]) -> Iterator[Any]:
    """Real replicas, a Voxys sandbox process and TCP proxies; all stopped at teardown."""
    from tests.reliability.fleet import Fleet

    made = Fleet(tmp_path, rlb_env, VOXYS_TOKEN)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=[pytest.mark.postgres, needs_postgres])]
)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The shared store's URL: a SQLite file, or a PostgreSQL schema of this test's own.

    Ask for it before `fleet`: the schema is then dropped after the fleet has stopped
    (a frozen replica's open transaction would otherwise block the DROP).
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return f"{PG_DSN}?schema={request.getfixturevalue('pg_schema')}"
