"""`voxys-bridge backup`: a consistent copy of a live server's SQLite store, through the
real console script, while webhooks keep being written; and the restore it allows."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import WriteConfig, free_port, stripe_event, stripe_headers
from tests.test_cli_serve import start_server

pytestmark = pytest.mark.slow

SCRIPT = str(Path(sys.executable).parent / "voxys-bridge")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, check=False, timeout=60)


async def backup(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        SCRIPT, "backup", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def event_ids(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT event_id FROM events")}
    finally:
        conn.close()


async def test_a_backup_of_a_live_store_is_consistent_and_restores(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    port = free_port()
    config = write_config(port=port)
    db, copy = tmp_path / "bridge.db", tmp_path / "backups" / "bridge-copy.db"
    copy.parent.mkdir()
    proc = start_server(config, port)
    stored: list[str] = []  # answered 200, in order
    try:
        async with aiohttp.ClientSession() as session:

            async def keep_posting() -> None:
                n = 0
                while True:
                    n += 1
                    body = stripe_event(f"evt_live_{n}", lead_id=n)
                    async with session.post(
                        f"http://127.0.0.1:{port}/webhooks/stripe",
                        data=body,
                        headers=stripe_headers(body),
                    ) as resp:
                        assert resp.status == 200
                    stored.append(f"evt_live_{n}")

            writer = asyncio.create_task(keep_posting())
            while len(stored) < 50:  # the server is busy writing when the backup starts
                await asyncio.sleep(0.01)
            before = list(stored)
            code, out, err = await backup(str(copy), "--config", str(config))
            during = len(stored) - len(before)
            writer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await writer
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()  # type: ignore[union-attr]
    assert (code, err) == (0, ""), err
    assert during > 0  # webhooks were answered while the copy was taken
    assert out.startswith(f"backed up {db} to {copy}: ")
    # The copy is whole and self-contained: SQLite finds nothing wrong, no -wal beside it.
    conn = sqlite3.connect(copy)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()
    assert sorted(p.name for p in copy.parent.iterdir()) == ["bridge-copy.db"]
    # It holds everything answered before it started, and nothing that was not stored.
    copied = event_ids(copy)
    assert set(before) <= copied <= set(stored)

    # Restore (docs/operations.md): the server is stopped; the copy replaces the store.
    for name in ("bridge.db", "bridge.db-wal", "bridge.db-shm"):
        (tmp_path / name).unlink(missing_ok=True)
    copy.rename(db)
    proc = start_server(config, port)
    try:
        listed = run("events", "list", "--limit", "10000", "--json", "--config", str(config))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()  # type: ignore[union-attr]
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count('"event_id"') == len(copied)


def test_backup_refuses_to_overwrite_and_names_the_path(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    config = write_config()
    sqlite3.connect(tmp_path / "bridge.db").close()
    taken = tmp_path / "old-backup.db"
    taken.write_text("yesterday's backup")
    result = run("backup", str(taken), "--config", str(config))
    assert (result.returncode, result.stderr) == (
        1,
        f"error: {taken} exists: choose another name, or remove it first\n",
    )
    assert taken.read_text() == "yesterday's backup"


def test_backup_of_a_store_that_does_not_exist_names_it(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    result = run("backup", str(tmp_path / "b.db"), "--config", str(write_config()))
    assert (result.returncode, result.stderr) == (
        1,
        f"error: no database at {tmp_path / 'bridge.db'}\n",
    )


def test_backup_reads_only_the_storage_section_so_a_broken_rule_does_not_stop_it(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    config = write_config()
    config.write_text(config.read_text().replace("status: won", "status: wonn"))
    conn = sqlite3.connect(tmp_path / "bridge.db")
    conn.executescript("CREATE TABLE events (event_id); CREATE TABLE transitions (id);")
    conn.close()
    result = run("backup", str(tmp_path / "copy.db"), "--config", str(config))
    assert result.returncode == 0, result.stderr


def test_backup_of_postgresql_points_to_pg_dump(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text('storage: {url: "postgresql://bridge@db.internal:5432/bridge"}\n')
    result = run("backup", str(tmp_path / "b.db"), "--config", str(config))
    assert result.returncode == 1
    assert (
        result.stderr
        == "error: storage.url is PostgreSQL: back it up with pg_dump (docs/operations.md)\n"
    )
