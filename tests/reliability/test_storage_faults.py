"""Storage faults under the real server: the disk holding the database fills up.

The database lives on its own 4 MiB tmpfs (mounting needs root; the test is skipped
otherwise). While the disk is full, webhooks are answered 503 with
Retry-After; nothing answered 2xx is missing from the store afterwards; and the
server accepts events again as soon as space returns.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.reliability.conftest import ServerProcess, signed_stripe, stripe_signed_bytes

pytestmark = [pytest.mark.reliability, pytest.mark.slow, pytest.mark.timeout(90)]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs of its own, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = run("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount))
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        run("umount", "-l", str(mount))


def fill(disk: Path) -> Path:
    """Write a file until the disk is full; the file, to delete when space should return."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


async def post_many(server: ServerProcess, prefix: str, count: int) -> dict[str, Any]:
    """Post `count` signed events with ~4 kB of metadata; per event id: status and Retry-After."""
    answers: dict[str, Any] = {}
    async with aiohttp.ClientSession() as session:
        for i in range(count):
            event_id = f"{prefix}_{i}"
            body, headers = signed_stripe(event_id, lead_id=100 + i)
            body = body.replace(b'"currency"', b'"pad": "' + b"p" * 4000 + b'", "currency"')
            headers = stripe_signed_bytes(body)
            async with session.post(
                f"{server.url}/webhooks/stripe", data=body, headers=headers
            ) as resp:
                answers[event_id] = (resp.status, resp.headers.get("Retry-After"))
    return answers


def stored_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(db)
    try:
        return {row[0] for row in conn.execute("SELECT event_id FROM events")}
    finally:
        conn.close()


def integrity(db: Path) -> list[tuple[str]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


async def test_a_full_disk_answers_503_and_recovers_when_space_returns(
    server_factory: Any, small_disk: Path
) -> None:
    db = small_disk / "bridge.db"
    server: ServerProcess = server_factory("http://127.0.0.1:9", db=db)
    server.start()
    await server.wait_healthy()
    before = await post_many(server, "evt_before", 5)
    filler = fill(small_disk)
    during = await post_many(server, "evt_full", 30)
    filler.unlink()
    after = await post_many(server, "evt_after", 5)
    assert server.terminate() == 0

    statuses = {s for s, _ in during.values()}
    print(
        f"\nfull disk: answers while full {sorted(statuses)}, "
        f"{sum(s == 503 for s, _ in during.values())}/30 refused with 503"
    )
    assert {s for s, _ in before.values()} == {200}
    assert statuses <= {200, 503}
    assert 503 in statuses  # the disk really was full
    assert all(ra == "5" for s, ra in during.values() if s == 503)
    assert {s for s, _ in after.values()} == {200}  # space returned: accepted again
    acked = {e for answers in (before, during, after) for e, (s, _) in answers.items() if s == 200}
    assert acked <= stored_ids(db)  # nothing answered 2xx is missing
    assert integrity(db) == [("ok",)]
