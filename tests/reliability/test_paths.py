"""Hostile lead ids and hostile templates, through the real server to the fake Voxys.

Whatever a payload carries, the only requests Voxys sees are
`PATCH /api/v1/accounts/<digits>/leads/<digits>/status`; an id that is not a plain
positive integer makes the event unmapped (stored, replayable), never a request. A
template that reaches for Python internals is refused by `check`.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import aiohttp
import pytest

from bridge.fakevoxys import FakeVoxys
from bridge.store import open_store
from tests.conftest import VOXYS_TOKEN, WriteConfig, free_port, stripe_headers
from tests.test_cli_serve import SCRIPT, start_server

pytestmark = pytest.mark.reliability

PATH = re.compile(r"/api/v1/accounts/[1-9][0-9]*/leads/[1-9][0-9]*/status")
HOSTILE_IDS = [
    "../../admin",
    "42/status",
    "42/../43",
    "42?x=1",
    "42#",
    "%2e%2e",
    "1e3",
    "+7",
    "-7",
    " 7",
    "7 ",
    "0",
    "07x",
    "9223372036854775808",
    "",
    "٣",  # an Arabic-Indic digit: str.isdigit() says yes, we say no
    "{{7*7}}",
    "7\n8",
]


def event(n: int, lead: str) -> bytes:
    return json.dumps(
        {
            "id": f"evt_hostile_{n}",
            "type": "checkout.session.completed",
            "created": 1_800_000_000,
            "data": {"object": {"metadata": {"voxys_lead_id": lead}}},
        }
    ).encode()


async def test_hostile_lead_ids_never_become_a_request_and_stay_stored(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    fake = FakeVoxys(tokens=VOXYS_TOKEN)
    url = await fake.start()
    port = free_port()
    config = write_config(port=port, voxys_url=url)
    proc = start_server(config, port)
    try:
        async with aiohttp.ClientSession() as session:
            for n, lead in enumerate([*HOSTILE_IDS, "4242"]):
                body = event(n, lead)
                async with session.post(
                    f"http://127.0.0.1:{port}/webhooks/stripe",
                    data=body,
                    headers=stripe_headers(body),
                ) as resp:
                    assert resp.status == 200

        async def one_call() -> None:
            while not fake.calls:
                await asyncio.sleep(0.01)

        await asyncio.wait_for(one_call(), 10)  # the valid one; its PATCH came after the rest
    finally:
        proc.terminate()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        await fake.stop()
    assert [c.path for c in fake.calls] == ["/api/v1/accounts/7/leads/4242/status"]
    assert all(PATH.fullmatch(c.path) for c in fake.calls)
    store = open_store(f"sqlite:///{tmp_path / 'bridge.db'}")
    await store.open()
    try:
        stored = await store.events_for_replay(since=0.0)
    finally:
        await store.close()
    outcomes = {s.event.event_id: str(s.outcome) for s in stored}
    assert len(outcomes) == len(HOSTILE_IDS) + 1
    assert sorted(outcomes.values()).count("unmapped") == len(HOSTILE_IDS)


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ event.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os.system('touch pwned') }}",
        "{{ self._TemplateReference__context }}",
        "{{ lipsum.__globals__['os'].popen('id').read() }}",
        "{% import 'os' as os %}{{ os }}",
    ],
)
def test_a_template_reaching_for_internals_is_refused_by_check(
    write_config: WriteConfig, tmp_path: Path, template: str
) -> None:
    config = write_config()
    config.write_text(re.sub(r"notes: .*", f"notes: {json.dumps(template)}", config.read_text()))
    done = subprocess.run(
        [SCRIPT, "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 2, done.stdout
    assert "stripe-paid" in done.stderr
    assert "notes" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "pwned").exists()
