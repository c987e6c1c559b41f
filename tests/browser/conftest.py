"""Browser tests of the console: the system's Chromium, driven by Playwright, against the
real `voxys-bridge serve` and a fake Voxys over HTTP.

One browser and one bridge (`bridge`, seeded through its own webhooks) for the module;
each test opens a fresh context. pytest-playwright supplies the launch options
(`--headed`, `--slowmo` work as usual); the browser fixtures are scoped here (below).
Without Chromium every test here is skipped, saying how to install it. Playwright is
pointed at the system's binary: it never downloads a browser.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from playwright.sync_api import Browser, Playwright, sync_playwright

from bridge.fakevoxys import FakeVoxys
from bridge.store import open_store
from tests.conftest import STRIPE_SECRET, free_port, stripe_headers
from tests.test_cli_serve import SCRIPT, wait_until_healthy

T = TypeVar("T")

CHROMIUM = os.environ.get("VOXYS_BRIDGE_CHROMIUM") or next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
# Chromium as this machine's probe starts it: without the background-networking flags it
# spends its start trying to reach Google's hosts through a closed network.
CHROMIUM_FLAGS = [
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

ADMIN_TOKEN = "brw-admin-token-6d2f9a41c7"
VOXYS_TOKEN = "brw-voxys-token-1e8b33"
PIPEDRIVE_PASSWORD = "brw-pipedrive-pass-5c0d"
ENV = {
    "BRW_ADMIN_TOKEN": ADMIN_TOKEN,
    "BRW_VOXYS_TOKEN": VOXYS_TOKEN,
    "BRW_STRIPE_SECRET": STRIPE_SECRET,
    "BRW_PIPEDRIVE_PASSWORD": PIPEDRIVE_PASSWORD,
}

CONFIG = """\
server: {{host: 127.0.0.1, port: {port}, public_url: "http://127.0.0.1:{port}"}}
storage: {{url: "sqlite:///{db}"}}
admin: {{token: "${{BRW_ADMIN_TOKEN}}"}}
voxys:
  base_url: "{voxys_url}"
  api_token: "${{BRW_VOXYS_TOKEN}}"
  account_id: 7
  rate_limit: {{requests: 50, per_seconds: 1}}
  retry: {{backoff: {{initial: 50ms, max: 200ms}}}}
logging: {{format: json, level: info}}
sources:
  stripe: {{preset: stripe, secret: "${{BRW_STRIPE_SECRET}}"}}
  pipedrive: {{preset: pipedrive, basic_auth: {{username: voxys, password: "${{BRW_PIPEDRIVE_PASSWORD}}"}}}}
rules:
  - include: rules/*.yaml
"""

RULES = """\
rules:
  - name: stripe-paid
    source: stripe
    when: event.type == 'checkout.session.completed'
    lead_id: "{{ event.data.object.metadata.voxys_lead_id }}"
    status: won
    notes: "Paid {{ event.data.object.amount_total / 100 }} {{ event.data.object.currency | upper }}"
"""

REFUND_RULE = """\
  - name: stripe-refunded
    source: stripe
    when: event.type == 'charge.refunded'
    lead_id: "{{ event.data.object.metadata.voxys_lead_id }}"
    status: lost
"""


def need_chromium() -> None:
    """Skip (fail, where CI says the browser must be there) without Chromium."""
    if CHROMIUM is not None:
        return
    why = (
        "Chromium is not installed (apt-get install -y chromium, or set "
        "VOXYS_BRIDGE_CHROMIUM to a Chromium binary): the console's browser tests need it"
    )
    if os.environ.get("VOXYS_BRIDGE_REQUIRE_BROWSER"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright's launch options, pointed at the system's Chromium."""
    need_chromium()
    # As root (CI containers) Chromium refuses to start with its sandbox on.
    root = ["--no-sandbox"] if os.geteuid() == 0 else []
    return {
        **browser_type_launch_args,
        "executable_path": CHROMIUM,
        "args": [*CHROMIUM_FLAGS, *root],
    }


# pytest-playwright's own `playwright` and `browser` live for the whole session, and
# Playwright's synchronous API keeps an event loop running on the main thread while it
# lives: every asyncio test collected after this folder would fail. Here they live for
# the module (this folder has one), and the loop is gone before the next test file.
@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as started:
        yield started


@pytest.fixture(scope="module")
def browser(playwright: Playwright, browser_type_launch_args: dict[str, Any]) -> Iterator[Browser]:
    launched = playwright.chromium.launch(**browser_type_launch_args)
    yield launched
    launched.close()


class FakeVoxysThread:
    """The fake Voxys on an event loop of its own thread, for tests that are not async."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = FakeVoxys(tokens=VOXYS_TOKEN)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> FakeVoxysThread:
        self.thread.start()
        self.run(self.fake.start)
        return self

    def __exit__(self, *exc: object) -> None:
        self.run(self.fake.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def run(self, work: Callable[[], Any]) -> Any:
        """Run `work()` (a coroutine function or a plain one) on the fake's loop."""

        async def call() -> Any:
            result = work()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(10)

    def delivered(self, lead_id: int) -> list[dict[str, Any]]:
        """Bodies of the PATCHes for `lead_id` the fake answered 200."""
        calls = self.run(lambda: list(self.fake.calls))
        return [c.body for c in calls if c.lead_id == lead_id and c.status == 200]


@dataclass
class Bridge:
    """A running `voxys-bridge serve` and what the tests need to reach it."""

    url: str
    config: Path
    db: Path
    voxys: FakeVoxysThread
    proc: subprocess.Popen[bytes]
    log: list[str] = field(default_factory=list)
    event_pks: dict[str, int] = field(default_factory=dict)  # event id -> stored event id

    @property
    def ui(self) -> str:
        return f"{self.url}/admin/ui"

    def admin(self, path: str) -> Any:
        """GET /admin/<path> with the bearer token (what the JSON API says)."""
        request = urllib.request.Request(  # noqa: S310 - http on loopback
            f"{self.url}/admin/{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            return json.load(answer)

    def post(self, source: str, body: bytes, headers: dict[str, str]) -> None:
        request = urllib.request.Request(  # noqa: S310 - http on loopback
            f"{self.url}/webhooks/{source}", data=body, headers=headers, method="POST"
        )
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
            assert answer.status == 200

    def stripe(self, event_id: str, kind: str, lead: int, created: int, **extra: Any) -> None:
        obj = {
            "amount_total": 4900,
            "currency": "eur",
            "payment_status": "paid",
            "metadata": {"voxys_lead_id": str(lead), **extra},
        }
        event = {"id": event_id, "type": kind, "created": created, "data": {"object": obj}}
        body = json.dumps(event).encode()
        self.post("stripe", body, stripe_headers(body))

    def settled(self, timeout: float = 20.0) -> dict[str, Any]:
        """/admin/stats once nothing is pending or in flight."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.admin("stats")
            busy = stats["transitions"]["pending"] + stats["transitions"]["in_flight"]
            if not busy:
                return dict(stats)
            assert time.monotonic() < deadline, f"still busy: {stats['transitions']}"
            time.sleep(0.05)

    def wait_for(self, what: Callable[[], T | None], timeout: float = 20.0) -> T:
        deadline = time.monotonic() + timeout
        while (found := what()) is None or found is False:
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)
        return found


def _read_log(proc: subprocess.Popen[bytes], into: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        into.append(line.decode("utf-8", "replace"))


def _seed_headers_row(db: Path) -> None:
    """An ignored event stored with a signature and a basic-auth header, as an older
    version or a hand import might have stored it (sources drop them on arrival)."""
    from bridge.models import Evaluation, Event, Outcome

    async def seed() -> None:
        store = open_store(f"sqlite:///{db}")
        await store.open()
        now = time.time() - 3600
        headers = {
            "stripe-signature": "t=1700000000,v1=5f0c1d9e2b7a4f60d3e8",
            "authorization": "Basic dm94eXM6YnJ3LXBpcGVkcml2ZS1wYXNzLTVjMGQ=",
            "user-agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            "content-type": "application/json",
        }
        payload = {"id": "evt_imported", "type": "customer.created", "data": {"object": {}}}
        event = Event("stripe", "evt_imported", now, now, payload, headers)
        await store.ingest([(event, Evaluation(Outcome.IGNORED))], now)
        await store.close()

    # Playwright's synchronous API runs an event loop on this thread: use another.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, seed()).result(30)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    """A served bridge whose store holds what every console test looks at."""
    need_chromium()
    home = tmp_path_factory.mktemp("console")
    (home / "rules").mkdir()
    (home / "rules" / "stripe.yaml").write_text(RULES)
    db = home / "bridge.db"
    _seed_headers_row(db)
    port = free_port()
    with FakeVoxysThread() as voxys:
        config = home / "bridge.yaml"
        config.write_text(CONFIG.format(port=port, db=db, voxys_url=voxys.fake.base_url))
        proc = subprocess.Popen(
            [SCRIPT, "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ENV},
        )
        running = Bridge(f"http://127.0.0.1:{port}", config, db, voxys, proc)
        reader = threading.Thread(target=_read_log, args=(proc, running.log), daemon=True)
        reader.start()
        try:
            wait_until_healthy(port, proc)
            _seed(running)
            yield running
        finally:
            proc.terminate()
            proc.wait(20)
            reader.join(5)
            assert proc.stdout is not None
            proc.stdout.close()


def _seed(bridge: Bridge) -> None:
    now = int(time.time())
    # Two payments Voxys refuses for good: two dead letters.
    bridge.voxys.run(lambda: bridge.voxys.fake.fail_next(422, 2))
    bridge.stripe("evt_dead_1", "checkout.session.completed", 101, now - 50)
    bridge.stripe("evt_dead_2", "checkout.session.completed", 102, now - 49)
    bridge.settled()
    # Lead 7/42: won, then an older event that arrives late (stale), then refunded (lost)
    # once a reload has added the refund rule.
    bridge.stripe("evt_won_42", "checkout.session.completed", 42, now - 40)
    bridge.settled()
    bridge.stripe("evt_late_42", "checkout.session.completed", 42, now - 300)
    rules = bridge.config.parent / "rules" / "stripe.yaml"
    rules.write_text(RULES + REFUND_RULE)
    bridge.wait_for(lambda: any('"config.reloaded"' in line for line in bridge.log))
    bridge.stripe("evt_refund_42", "charge.refunded", 42, now - 20)
    # Markup in a body, an invoice no rule maps, and a Pipedrive request with basic auth.
    hostile = '<script>alert("xss")</script> "><img src=x onerror=alert(1)>'
    bridge.stripe("evt_markup", "checkout.session.completed", 43, now - 10, note=hostile)
    bridge.stripe("evt_invoice", "invoice.paid", 77, now - 5)
    body = json.dumps(
        {"event": "updated.deal", "meta": {"id": 1}, "current": {"id": 9, "status": "won"}}
    ).encode()
    import base64

    basic = base64.b64encode(f"voxys:{PIPEDRIVE_PASSWORD}".encode()).decode()
    bridge.post(
        "pipedrive",
        body,
        {"Content-Type": "application/json", "Authorization": f"Basic {basic}"},
    )
    bridge.settled()
    for row in bridge.admin("events?limit=100"):
        bridge.event_pks[row["event_id"]] = row["event_pk"]
