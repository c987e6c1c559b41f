"""Hot reload: a valid change is swapped in whole; a broken one leaves the old config running."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from bridge.bundle import load_bundle
from bridge.reload import Reloader
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


def test_a_valid_change_swaps_the_rules_and_reports_what_changed(reloader: Reloader) -> None:
    path = Path(reloader.config_path)
    edit(path, "name: stripe-paid", "name: stripe-paid-v2")
    with structlog.testing.capture_logs() as logs:
        assert reloader.reload("test") is True
    assert [r.name for r in reloader.runtime.bundle.rules.rules] == ["stripe-paid-v2"]
    [line] = [e for e in logs if e["event"] == "config.reloaded"]
    assert line["rules"] == {"added": ["stripe-paid-v2"], "removed": ["stripe-paid"], "changed": []}


def test_a_broken_change_keeps_the_old_config_and_logs_checks_message(reloader: Reloader) -> None:
    before = reloader.runtime.bundle
    edit(Path(reloader.config_path), "status: won", "status: wonn")
    with structlog.testing.capture_logs() as logs:
        assert reloader.reload("test") is False
    assert reloader.runtime.bundle is before
    [line] = [e for e in logs if e["event"] == "config.reload_failed"]
    assert line["log_level"] == "error"
    assert any("stripe-paid" in msg and "status" in msg for msg in line["errors"])


def test_server_and_storage_changes_are_reported_as_needing_a_restart(reloader: Reloader) -> None:
    before = reloader.runtime.bundle.config
    edit(Path(reloader.config_path), "max_body_bytes: 65536", "max_body_bytes: 1024")
    with structlog.testing.capture_logs() as logs:
        assert reloader.reload("test") is True
    [line] = [e for e in logs if e["event"] == "config.reloaded"]
    assert line["restart_required"] == ["server"]
    assert reloader.runtime.bundle.config.server == before.server


def test_a_changed_file_is_noticed_once(reloader: Reloader) -> None:
    assert reloader.files_changed() is False
    path = Path(reloader.config_path)
    path.write_text(path.read_text() + "\n# touched\n")
    assert reloader.files_changed() is True
    assert reloader.files_changed() is False


def test_the_reload_counter_counts_both_results(reloader: Reloader) -> None:
    reloader.reload("test")
    edit(Path(reloader.config_path), "status: won", "status: nope")
    reloader.reload("test")
    text = reloader.runtime.metrics.render().decode()
    assert 'bridge_config_reloads_total{result="ok"} 1.0' in text
    assert 'bridge_config_reloads_total{result="failed"} 1.0' in text
