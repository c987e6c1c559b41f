"""`voxys-bridge send`: a payload file, signed as its provider would, POSTed to a real bridge."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from bridge import cli, send
from bridge.app import create_app
from bridge.bundle import load_bundle
from bridge.runtime import Runtime
from bridge.store import open_store
from bridge.store.base import StoredEvent
from tests.conftest import (
    PIPEDRIVE_PASSWORD,
    STRIPE_SECRET,
    VOXYS_TOKEN,
    WriteConfig,
    free_port,
    stripe_event,
)

SAMPLES = Path(__file__).resolve().parent / "samples"
QUERY_TOKEN = "query-token-3e7d51"
# A generic source whose token travels in the query string, added next to the presets.
CUSTOM_SOURCE = f"  custom: {{verify: {{type: token, query: key}}, secret: {QUERY_TOKEN}}}\n"


@dataclass
class Sent:
    code: int
    out: str
    err: str


@dataclass
class Bridge:
    config: Path
    port: int
    runtime: Runtime
    tmp: Path

    async def send(self, source: str, payload: Path | str, url: str | None = None) -> Sent:
        """Run the command in a thread, as its own process would, while the bridge serves."""
        out, err = io.StringIO(), io.StringIO()
        bundle = load_bundle(self.config)
        code = await asyncio.to_thread(send.run, bundle, source, str(payload), url, out, err)
        text = out.getvalue() + err.getvalue()
        for secret in (STRIPE_SECRET, PIPEDRIVE_PASSWORD, VOXYS_TOKEN, QUERY_TOKEN):
            assert secret not in text
        return Sent(code, out.getvalue(), err.getvalue())

    def payload(self, body: bytes, name: str = "payload.json") -> Path:
        path = self.tmp / name
        path.write_bytes(body)
        return path

    async def stored(self) -> list[StoredEvent]:
        return await self.runtime.store.events_for_replay(since=0.0)


@pytest.fixture
async def bridge(write_config: WriteConfig, tmp_path: Path) -> AsyncIterator[Bridge]:
    port = free_port()
    config = write_config(port=port)
    text = config.read_text().replace("sources:\n", "sources:\n" + CUSTOM_SOURCE, 1)
    config.write_text(text)
    bundle = load_bundle(config)
    runtime = Runtime(bundle=bundle, store=open_store(bundle.config.storage.url))
    runner = web.AppRunner(create_app(runtime))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Bridge(config=config, port=port, runtime=runtime, tmp=tmp_path)
    finally:
        await runner.cleanup()


async def test_a_stripe_payload_is_signed_posted_to_the_local_port_and_stored(
    bridge: Bridge,
) -> None:
    sent = await bridge.send("stripe", bridge.payload(stripe_event("evt_sent", lead_id=42)))
    assert sent.code == 0, sent.err
    url = f"http://127.0.0.1:{bridge.port}/webhooks/stripe"
    assert sent.out == f'POST {url} -> 200 {{"ok": true, "events": 1, "duplicates": 0}}\n'
    [stored] = await bridge.stored()
    assert stored.event.event_id == "evt_sent"


async def test_a_pipedrive_sample_is_sent_with_basic_auth_to_the_url_given(
    bridge: Bridge,
) -> None:
    url = f"http://127.0.0.1:{bridge.port}/webhooks/pipedrive"
    sent = await bridge.send("pipedrive", SAMPLES / "pipedrive" / "v2_change_deal.json", url)
    assert sent.code == 0, sent.err
    assert sent.out.startswith(f"POST {url} -> 200 ")
    assert [s.event.source for s in await bridge.stored()] == ["pipedrive"]


async def test_a_query_token_is_sent_but_not_printed(bridge: Bridge) -> None:
    url = f"http://127.0.0.1:{bridge.port}/webhooks/custom?from=send"
    sent = await bridge.send("custom", bridge.payload(b'{"id": "c-1"}'), url)
    assert sent.code == 0, sent.err
    assert sent.out.startswith(f"POST {url} -> 200 ")  # the token is checked absent by send()
    assert len(await bridge.stored()) == 1


async def test_an_answer_other_than_2xx_exits_1_and_shows_it(bridge: Bridge) -> None:
    sent = await bridge.send("stripe", bridge.payload(json.dumps({"object": "event"}).encode()))
    assert sent.code == 1
    assert " -> 400 " in sent.out
    assert "Stripe event without id" in sent.out
    assert await bridge.stored() == []


async def test_a_signature_for_another_path_is_refused_with_401(bridge: Bridge) -> None:
    # Signed as /webhooks/stripe but sent to pipedrive's endpoint: the bridge says no.
    url = f"http://127.0.0.1:{bridge.port}/webhooks/pipedrive"
    sent = await bridge.send("stripe", bridge.payload(stripe_event()), url)
    assert (sent.code, " -> 401 " in sent.out) == (1, True)


async def test_an_unknown_source_exits_2_naming_the_configured_ones(bridge: Bridge) -> None:
    sent = await bridge.send("paddle", bridge.payload(b"{}"))
    assert sent.code == 2
    assert sent.err == (
        "error: unknown source 'paddle' (configured sources: custom, pipedrive, stripe)\n"
    )
    assert sent.out == ""


async def test_a_missing_payload_file_exits_2(bridge: Bridge) -> None:
    missing = bridge.tmp / "nope.json"
    sent = await bridge.send("stripe", missing)
    assert (sent.code, sent.err) == (2, f"error: payload file {missing} not found\n")


async def test_a_url_that_is_not_http_exits_2(bridge: Bridge) -> None:
    sent = await bridge.send("stripe", bridge.payload(b"{}"), "ftp://127.0.0.1/x")
    assert sent.code == 2
    assert "is not an http(s) URL" in sent.err


async def test_a_broken_config_exits_2_with_its_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("server: [not, a, mapping]\n")
    code = cli.main(["send", "--config", str(config), "--source", "stripe", str(config)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "error:" in err
    assert out == ""


async def test_a_bridge_that_is_not_listening_exits_1_without_a_traceback(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    port = free_port()  # bound and released: nothing listens there
    config = write_config(port=port)
    payload = tmp_path / "payload.json"
    payload.write_bytes(stripe_event())
    out, err = io.StringIO(), io.StringIO()
    bundle = load_bundle(config)
    code = await asyncio.to_thread(send.run, bundle, "stripe", str(payload), None, out, err)
    assert code == 1
    url = f"http://127.0.0.1:{port}/webhooks/stripe"
    assert err.getvalue().startswith(
        f"error: POST {url} failed: cannot connect to 127.0.0.1:{port}"
    )
    assert "Traceback" not in err.getvalue()
    assert out.getvalue() == ""
