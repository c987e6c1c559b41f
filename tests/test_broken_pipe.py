"""`voxys-bridge <command> | head -1`: when the reader of the output goes away, every
command ends quietly (no BrokenPipeError traceback), as if SIGPIPE had ended it.

The reader is gone before the command writes its first byte (the read end of the pipe
is closed before the command starts), so each command meets the broken pipe on its
first write: deterministic, where `| head -1` would depend on timing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import WriteConfig, free_port
from tests.test_cli_serve import wait_until_healthy

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(sys.executable).parent / "voxys-bridge")
READER_GONE = 141  # the status of a process ended by SIGPIPE, as a shell reports it


def run_without_reader(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run the console script with stdout a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [SCRIPT, *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
            timeout=90,
            cwd=cwd,
        )
    finally:
        os.close(write_end)


def assert_quiet(result: subprocess.CompletedProcess[str], status: int = READER_GONE) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert "BrokenPipe" not in result.stderr and "Exception ignored" not in result.stderr
    assert result.returncode == status, result.stderr


@pytest.fixture
def running(write_config: WriteConfig) -> Iterator[Path]:
    """A running bridge on its config (for the commands that talk to one)."""
    port = free_port()
    config = write_config(port=port)
    proc = subprocess.Popen(
        [SCRIPT, "serve", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_until_healthy(port, proc)
        yield config
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]


STORE_COMMANDS = [
    ["check"],
    ["stats"],
    ["stats", "--json"],
    ["explain", "--lead", "7/42"],
    ["dead-letters", "list"],
    ["dead-letters", "retry"],
    ["replay", "--outcome", "unmapped"],
    ["events", "list"],
    ["events", "list", "--json"],
]


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=" ".join)
def test_a_command_on_the_config_and_store_ends_quietly(
    write_config: WriteConfig, command: list[str]
) -> None:
    config = write_config()
    assert_quiet(run_without_reader([*command, "--config", str(config)]))


@pytest.mark.parametrize("command", [["--help"], ["check", "--help"], ["--version"]], ids=" ".join)
def test_help_and_version_end_quietly(command: list[str]) -> None:
    assert_quiet(run_without_reader(command), status=0)


def test_backup_ends_quietly(running: Path) -> None:
    destination = running.parent / "backup.db"
    assert_quiet(run_without_reader(["backup", str(destination), "--config", str(running)]))
    assert destination.is_file()  # the work was done; only its report went nowhere


def test_dry_run_ends_quietly(write_config: WriteConfig) -> None:
    config = write_config()
    payload = ROOT / "examples" / "stripe" / "checkout.session.completed-paid.json"
    assert_quiet(
        run_without_reader(["dry-run", "--config", str(config), "--source", "stripe", str(payload)])
    )


def test_send_and_healthcheck_end_quietly(running: Path) -> None:
    payload = ROOT / "examples" / "stripe" / "checkout.session.completed-paid.json"
    assert_quiet(run_without_reader(["healthcheck", "--config", str(running)]))
    assert_quiet(
        run_without_reader(["send", "--config", str(running), "--source", "stripe", str(payload)])
    )


def test_serve_stops_gracefully_when_its_log_reader_goes(write_config: WriteConfig) -> None:
    # Its first line (bridge.started) finds no reader: it stops as on SIGTERM.
    config = write_config(port=free_port())
    assert_quiet(run_without_reader(["serve", "--config", str(config)]))


def test_the_sandbox_stops_when_its_reader_goes() -> None:
    assert_quiet(run_without_reader(["sandbox", "--port", "0"]))


def test_the_demo_stops_when_its_reader_goes(tmp_path: Path) -> None:
    assert_quiet(run_without_reader(["demo"], cwd=tmp_path))
