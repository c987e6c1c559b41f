"""`voxys-bridge demo`, the README's first command, run as a newcomer runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.demo import example_payloads, find_project

ROOT = Path(__file__).resolve().parent.parent


def console_script() -> list[str]:
    found = shutil.which("voxys-bridge", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "bridge"]


@pytest.mark.slow
def test_demo_moves_leads_from_every_shipped_example_and_exits_0() -> None:
    done = subprocess.run(
        [*console_script(), "demo"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    webhooks = [r for r in rows if r.get("kind") == "webhook"]
    patches = [r for r in rows if r.get("kind") == "patch"]
    [summary] = [r for r in rows if r.get("kind") == "summary"]
    assert len(webhooks) == len(example_payloads(ROOT))
    assert {w["status"] for w in webhooks} == {200}
    assert {w["source"] for w in webhooks} == {
        "stripe",
        "hubspot",
        "pipedrive",
        "billing",
        "paddle",
        "chargebee",
        "shopify",
        "close",
        "salesforce",
        "highlevel",
    }
    assert patches
    assert {p["answered"] for p in patches} == {200}
    assert summary["settled"] is True
    assert summary["patches_received_by_sandbox"] == len(patches)
    assert summary["transitions"].get("delivered") == len(patches)
    assert set(summary["transitions"]) <= {"delivered", "superseded", "stale"}
    assert "Traceback" not in done.stderr


def test_demo_finds_the_project_named_by_voxys_bridge_home_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config" / "rules").mkdir(parents=True)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "all-providers.yaml").write_text("voxys: {}\n")
    monkeypatch.setenv("VOXYS_BRIDGE_HOME", str(tmp_path))
    assert find_project(start=tmp_path / "elsewhere") == tmp_path
    monkeypatch.setenv("VOXYS_BRIDGE_HOME", str(tmp_path / "elsewhere"))
    assert find_project(start=tmp_path) == tmp_path  # then the working directory
