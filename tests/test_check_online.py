"""`check --online` through the real console script, against the fake Voxys over loopback:
the four answers a token can get, the store's, and `check` staying offline without it."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bridge.fakevoxys import FakeVoxys, token_id
from bridge.preflight import token_verdict
from tests.conftest import VOXYS_TOKEN, WriteConfig, free_port

pytestmark = pytest.mark.slow

SCRIPT = str(Path(sys.executable).parent / "voxys-bridge")
ACCOUNT = 7  # the account of conftest's config


async def check(config: Path, *options: str) -> tuple[int, str, str]:
    """Run `check` without blocking the loop the fake Voxys answers on."""
    proc = await asyncio.create_subprocess_exec(
        SCRIPT,
        "check",
        "--config",
        str(config),
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def online_lines(out: str) -> list[str]:
    lines = out.splitlines()
    return [line.strip() for line in lines[lines.index("  online") + 1 :]]


async def test_a_token_voxys_accepts_passes_with_one_read_of_one_lead(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    async with FakeVoxys(tokens=VOXYS_TOKEN) as fake:
        config = write_config(voxys_url=fake.base_url)
        code, out, err = await check(config, "--online")
    assert (code, err) == (0, "")
    url = f"{fake.base_url}/api/v1/accounts/{ACCOUNT}/leads"
    assert online_lines(out) == [
        "store     ok: opens for writing",
        f"voxys     ok: token accepted (HTTP 200 from GET {url})",
    ]
    [call] = fake.calls  # one call, a read: nothing changed on Voxys
    assert (call.method, call.path, call.status) == (
        "GET",
        f"/api/v1/accounts/{ACCOUNT}/leads",
        200,
    )
    assert call.token_id == token_id(VOXYS_TOKEN)
    assert (tmp_path / "bridge.db").exists()  # the store was opened for writing
    assert VOXYS_TOKEN not in out + err


async def test_a_refused_token_fails_and_says_so(write_config: WriteConfig) -> None:
    async with FakeVoxys(tokens="another-token") as fake:
        code, out, err = await check(write_config(voxys_url=fake.base_url), "--online")
    assert code == 1
    assert online_lines(out)[1].startswith("voxys     FAILED: token refused (HTTP 401 from GET")
    assert err.startswith("error: voxys: token refused (HTTP 401")
    assert VOXYS_TOKEN not in out + err


async def test_an_account_voxys_does_not_know_fails_as_not_found(write_config: WriteConfig) -> None:
    async with FakeVoxys(tokens=VOXYS_TOKEN, seed_leads=[(1, 1)]) as fake:  # account 1 only
        code, out, _ = await check(write_config(voxys_url=fake.base_url), "--online")
    assert code == 1
    assert online_lines(out)[1] == (
        f"voxys     FAILED: account not found (HTTP 404 from GET {fake.base_url}"
        f"/api/v1/accounts/{ACCOUNT}/leads)"
    )


async def test_an_unreachable_voxys_fails_naming_where_and_why(write_config: WriteConfig) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    code, out, err = await check(write_config(voxys_url=closed), "--online")
    assert code == 1
    assert online_lines(out)[1] == (
        f"voxys     FAILED: unreachable: GET {closed}/api/v1/accounts/{ACCOUNT}/leads: "
        "Connection refused"
    )
    assert "Traceback" not in err


async def test_a_store_that_cannot_be_written_fails_the_online_check(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    (tmp_path / "taken").write_text("a file where the store's directory should be")
    config = write_config(
        db=tmp_path / "taken" / "bridge.db", voxys_url=f"http://127.0.0.1:{free_port()}"
    )
    code, out, _ = await check(config, "--online")
    assert code == 1
    assert online_lines(out)[0] == (
        f"store     FAILED: cannot be written: cannot use {tmp_path / 'taken'} as the directory "
        f"of {tmp_path / 'taken' / 'bridge.db'}: it is a file"
    )


async def test_without_online_check_touches_neither_voxys_nor_the_store(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    async with FakeVoxys(tokens=VOXYS_TOKEN) as fake:
        code, out, _ = await check(write_config(voxys_url=fake.base_url))
    assert code == 0
    assert "  online" not in out.splitlines()
    assert fake.calls == []
    assert not (tmp_path / "bridge.db").exists()


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, (True, "token accepted")),
        (401, (False, "token refused")),
        (403, (False, "token refused")),
        (404, (False, "account not found")),
        (503, (False, "unexpected answer")),
    ],
)
def test_each_answer_means_one_verdict(status: int, verdict: tuple[bool, str]) -> None:
    assert token_verdict(status) == verdict
