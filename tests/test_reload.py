"""Hot reload: a valid change is swapped in whole; anything else leaves the old config running.

The real console script under reload is in tests/reliability/test_reloads.py; these
drive one `Reloader` directly (its load still runs in a thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from pathlib import Path

import pytest
import structlog

from bridge.bundle import load_bundle
from bridge.config import load_config
from bridge.files import FileReads
from bridge.reload import Reloader, restart_keys
from bridge.runtime import Runtime
from bridge.store import open_store
from tests.conftest import WriteConfig


@pytest.fixture
def reloader(write_config: WriteConfig) -> Reloader:
    bundle = load_bundle(write_config())
    runtime = Runtime(bundle=bundle, store=open_store(bundle.config.storage.url))
    return Reloader(runtime, bundle.loaded.path)


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def append(path: Path, text: str) -> None:
    path.write_text(path.read_text() + text)


def add_lookup(path: Path, rows: str = "9001,42\n") -> Path:
    csv = path.parent / "deals.csv"
    csv.write_text("key,value\n" + rows)
    append(path, "lookups: {deals: {file: deals.csv}}\n")
    return csv


async def test_a_valid_change_swaps_the_rules_and_reports_what_changed(
    reloader: Reloader,
) -> None:
    path = Path(reloader.config_path)
    edit(path, "name: stripe-paid", "name: stripe-paid-v2")
    with structlog.testing.capture_logs() as logs:
        assert await reloader.reload("test") == "applied"
    assert [r.name for r in reloader.runtime.bundle.rules.rules] == ["stripe-paid-v2"]
    [line] = [e for e in logs if e["event"] == "config.reloaded"]
    assert line["rules"] == {"added": ["stripe-paid-v2"], "removed": ["stripe-paid"], "changed": []}


async def test_a_broken_change_keeps_the_old_config_and_logs_checks_message(
    reloader: Reloader,
) -> None:
    before = reloader.runtime.bundle
    edit(Path(reloader.config_path), "status: won", "status: wonn")
    with structlog.testing.capture_logs() as logs:
        assert await reloader.reload("test") == "failed"
    assert reloader.runtime.bundle is before
    [line] = [e for e in logs if e["event"] == "config.reload_failed"]
    assert line["log_level"] == "error"
    assert any("stripe-paid" in msg and "status" in msg for msg in line["errors"])


async def test_a_restart_only_change_applies_nothing_not_even_the_rules_beside_it(
    reloader: Reloader,
) -> None:
    before = reloader.runtime.bundle
    path = Path(reloader.config_path)
    edit(path, "max_body_bytes: 65536", "max_body_bytes: 1024")
    edit(path, "account_id: 7", "account_id: 8")
    edit(path, "name: stripe-paid", "name: stripe-paid-v2")
    with structlog.testing.capture_logs() as logs:
        assert await reloader.reload("test") == "restart_required"
    assert reloader.runtime.bundle is before
    [line] = [e for e in logs if e["event"] == "config.restart_required"]
    assert line["log_level"] == "warning"
    assert line["keys"] == ["server.max_body_bytes", "voxys.account_id"]
    assert not [e for e in logs if e["event"] == "config.reloaded"]


def test_restart_keys_name_nested_keys_and_never_values(write_config: WriteConfig) -> None:
    old = load_config(write_config()).config
    new = old.model_copy(
        update={
            "voxys": old.voxys.model_copy(
                update={
                    "api_token": "another-token-value",
                    "retry": old.voxys.retry.model_copy(update={"max_attempts": 3}),
                }
            )
        }
    )
    keys = restart_keys(old, new)
    assert keys == ["voxys.api_token", "voxys.retry.max_attempts"]
    assert "another-token-value" not in repr(keys)
    assert restart_keys(old, old) == []


async def test_a_lookup_file_that_did_not_change_is_not_parsed_again(
    reloader: Reloader,
) -> None:
    path = Path(reloader.config_path)
    add_lookup(path)
    assert await reloader.reload("test") == "applied"
    table = reloader.runtime.bundle.loaded.lookups["deals"]
    edit(path, "name: stripe-paid", "name: stripe-paid-v2")
    assert await reloader.reload("test") == "applied"
    assert reloader.runtime.bundle.loaded.lookups["deals"] is table


async def test_a_changed_lookup_file_is_parsed_again(reloader: Reloader) -> None:
    csv = add_lookup(Path(reloader.config_path))
    assert await reloader.reload("test") == "applied"
    csv.write_text("key,value\n9001,43\n")
    with structlog.testing.capture_logs() as logs:
        assert await reloader.reload("test") == "applied"
    assert reloader.runtime.bundle.loaded.lookups["deals"] == {"9001": "43"}
    [line] = [e for e in logs if e["event"] == "config.reloaded"]
    assert line["lookups"] == ["deals"]


async def test_a_changed_file_counts_as_changed_until_a_load_has_read_it(
    reloader: Reloader,
) -> None:
    assert reloader.files_changed() is False
    path = Path(reloader.config_path)
    append(path, "\n# touched\n")
    assert reloader.files_changed() is True
    assert reloader.files_changed() is True
    await reloader.reload("test")
    assert reloader.files_changed() is False


async def test_a_new_file_matching_an_include_glob_is_a_change(reloader: Reloader) -> None:
    path = Path(reloader.config_path)
    (path.parent / "rules").mkdir()
    (path.parent / "rules" / "first.yaml").write_text(
        "rules: []\n"
    )  # a glob matching none is an error
    append(path, "  - include: rules/*.yaml\n")
    assert await reloader.reload("test") == "applied"
    assert reloader.files_changed() is False
    (path.parent / "rules" / "more.yaml").write_text("rules: []\n")
    assert reloader.files_changed() is True


def test_a_file_written_while_it_is_being_read_still_counts_as_changed(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text("one\n")

    def parse_while_someone_writes(p: Path) -> str:
        text = p.read_text()
        p.write_text("two, written during the read\n")
        return text

    reads = FileReads()
    assert reads.parse(path, parse_while_someone_writes) == "one\n"
    assert reads.changed() is True


def test_a_file_that_failed_to_parse_is_still_watched(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("x")

    def fail(p: Path) -> None:
        raise ValueError("unparseable")

    reads = FileReads()
    with pytest.raises(ValueError, match="unparseable"):
        reads.parse(path, fail)
    assert str(path) in reads and reads.changed() is False
    path.write_text("fixed")
    assert reads.changed() is True


async def test_the_reload_counter_counts_each_outcome(reloader: Reloader) -> None:
    path = Path(reloader.config_path)
    await reloader.reload("test")
    edit(path, "status: won", "status: nope")
    await reloader.reload("test")
    edit(path, "status: nope", "status: won")
    edit(path, "account_id: 7", "account_id: 8")
    await reloader.reload("test")
    text = reloader.runtime.metrics.render().decode()
    assert 'bridge_config_reloads_total{result="ok"} 1.0' in text
    assert 'bridge_config_reloads_total{result="failed"} 1.0' in text
    assert 'bridge_config_reloads_total{result="restart_required"} 1.0' in text


async def test_the_thread_switch_interval_is_restored_after_every_load(reloader: Reloader) -> None:
    interval = sys.getswitchinterval()
    assert await reloader.reload("test") == "applied"
    assert sys.getswitchinterval() == interval
    edit(Path(reloader.config_path), "status: won", "status: nope")
    assert await reloader.reload("test") == "failed"
    assert sys.getswitchinterval() == interval


async def write_end(fifo: Path) -> int:
    """The write end of `fifo` once a reader opened it: proof that a load is reading it."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            assert time.monotonic() < deadline, "no load opened the pipe"
            await asyncio.sleep(0.005)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="holds a load with a named pipe")
async def test_signals_during_a_load_make_one_more_load_after_it_never_a_second_at_once(
    reloader: Reloader, tmp_path: Path
) -> None:
    path = Path(reloader.config_path)
    (path.parent / "rules").mkdir()
    gate = path.parent / "rules" / "gate.yaml"
    gate.write_text("rules: []\n")
    append(path, "  - include: rules/*.yaml\n")
    assert await reloader.reload("test") == "applied"
    os.mkfifo(tmp_path / "gate.fifo")
    os.replace(tmp_path / "gate.fifo", gate)  # the next load blocks reading it
    with structlog.testing.capture_logs() as logs:
        task = asyncio.create_task(reloader.run())
        try:
            reloader.hangup()
            pipe = await write_end(gate)
            for _ in range(3):
                reloader.hangup()  # while the held load runs: queued, not started
            (tmp_path / "gate.txt").write_text("rules: []\n")
            os.replace(tmp_path / "gate.txt", gate)
            os.write(pipe, b"rules: []\n")
            os.close(pipe)
            while len([e for e in logs if e["event"] == "config.reloaded"]) < 2:
                await asyncio.sleep(0.01)
            # Nothing is pending: no signal left, and every file is as the last load saw it.
            assert not reloader.files_changed()
            assert not reloader.hangup_pending
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    triggers = [e["trigger"] for e in logs if e["event"].startswith("config.")]
    assert triggers == ["sighup", "sighup"]
