"""`voxys-bridge demo`, the README's first command, run as a newcomer runs it."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from bridge.demo import SHIPPED, example_payloads, find_project

ROOT = Path(__file__).resolve().parent.parent


def console_script() -> list[str]:
    found = shutil.which("voxys-bridge", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "bridge"]


def run_demo(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*args, "demo"], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def check_run(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The demo's JSON lines checked as a newcomer would read them; its summary."""
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
    return summary


@pytest.mark.slow
def test_demo_moves_leads_from_every_shipped_example_in_any_directory(tmp_path: Path) -> None:
    summary = check_run(run_demo(*console_script(), cwd=tmp_path))
    # The summary says in words what each state it counts means.
    assert set(summary["meaning"]) == set(summary["transitions"])
    assert "superseded" in summary["transitions"]  # two changes of one Pipedrive deal
    assert summary["meaning"]["superseded"].startswith(
        "not sent: a newer change for the same lead was waiting too"
    )
    assert list(tmp_path.iterdir()) == []  # it left nothing behind


@pytest.mark.slow
def test_the_wheel_ships_config_and_examples_and_its_demo_runs_anywhere(tmp_path: Path) -> None:
    # Given the wheel built from this checkout, installed on its own (not editable),
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--wheel-dir",
            str(wheels),
            str(ROOT),
        ],
        check=True,
        timeout=300,
    )
    [wheel] = wheels.glob("*.whl")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        timeout=300,
    )
    shipped = site / "bridge" / "shipped"
    for name in ("examples/all-providers.yaml", "config/bridge.yaml", "config/rules/stripe.yaml"):
        assert (shipped / name).is_file() and not (shipped / name).is_symlink(), name
    assert {p.relative_to(shipped) for p in example_payloads(shipped)} == {
        p.relative_to(ROOT) for p in example_payloads(ROOT)
    }
    # when its own console script runs the demo in an empty directory (the dependencies
    # come from this environment; `bridge` from the wheel),
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("VOXYS_BRIDGE_HOME", None)
    where = subprocess.run(
        [sys.executable, "-c", "import bridge; print(bridge.__file__)"],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip() == str(site / "bridge" / "__init__.py")
    # then it runs every shipped example as from a checkout,
    check_run(run_demo(str(site / "bin" / "voxys-bridge"), cwd=workdir, env=env))
    # and the console finds its templates and static files in the installed package.
    console = subprocess.run(
        [
            sys.executable,
            "-c",
            "from bridge.console import site; s = site.load_static();"
            " [site.templates(s).get_template(n) for n in ('base.html', 'overview.html',"
            " 'playground.html')]; print(site.__file__, sorted(s))",
        ],
        env=env,
        cwd=workdir,
        capture_output=True,
        text=True,
        check=True,
    )
    assert console.stdout.startswith(str(site / "bridge" / "console" / "site.py"))
    assert "['console.css', 'console.js', 'favicon.svg']" in console.stdout


@pytest.mark.slow
def test_demo_keep_prints_commands_that_work_when_pasted_into_a_shell(tmp_path: Path) -> None:
    # stderr to a file: the demo logs every request while the pasted commands run, and a
    # pipe nobody reads fills up and blocks it.
    errors = tmp_path / "demo.err"
    with errors.open("w") as err:
        proc = subprocess.Popen(
            [*console_script(), "demo", "--keep"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    drain: threading.Thread | None = None
    try:
        lines: list[str] = []
        assert proc.stdout is not None
        while not lines or not lines[-1].startswith("(the env file"):
            line = proc.stdout.readline()
            assert line, f"the demo ended early: {errors.read_text()}"
            lines.append(line.rstrip("\n"))
        # What it prints from now on is read and dropped, for the same reason.
        drain = threading.Thread(target=proc.stdout.read, daemon=True)
        drain.start()
        pasted = [line.strip() for line in lines[lines.index("") + 1 :] if line.startswith("  ")]
        assert pasted[0].startswith(". ")
        # The env file holds this run's secrets, a multi-line PEM key among them, quoted.
        env_file = Path(shlex.split(pasted[0])[1])
        assert "-----BEGIN PUBLIC KEY-----\n" in env_file.read_text()
        # Pasted as they are into another shell:
        script = "set -e\n" + "\n".join(pasted) + "\n"
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env={
                k: v
                for k, v in os.environ.items()
                if not k.endswith(("_SECRET", "_TOKEN", "_PASSWORD"))
            },
        )
        assert result.returncode == 0, result.stderr
        assert "-> 200" in result.stdout and '"duplicates": 1' in result.stdout  # send
        assert "stripe/evt_" in result.stdout  # events list
        assert "stripe-checkout-paid" in result.stdout  # explain of lead 1/4711
        assert '"transitions"' in result.stdout  # curl of /admin/stats
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        if drain is not None:
            drain.join(timeout=10)  # it ends at the pipe's end, once the demo has exited
        assert proc.stdout is not None
        proc.stdout.close()
        assert "Traceback" not in errors.read_text()


def test_demo_uses_the_project_named_by_voxys_bridge_home_else_the_shipped_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config" / "rules").mkdir(parents=True)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "all-providers.yaml").write_text("voxys: {}\n")
    monkeypatch.setenv("VOXYS_BRIDGE_HOME", str(tmp_path))
    assert find_project() == tmp_path
    monkeypatch.setenv("VOXYS_BRIDGE_HOME", str(tmp_path / "elsewhere"))
    assert find_project() == SHIPPED
    monkeypatch.delenv("VOXYS_BRIDGE_HOME")
    assert find_project() == SHIPPED
    assert (SHIPPED / "examples" / "all-providers.yaml").is_file()
