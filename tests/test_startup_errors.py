"""What an operator meets in the first week, through the real console script: one clear
line per mistake, no traceback, exit status not 0."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(Path(sys.executable).parent / "voxys-bridge")


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SCRIPT, *args],
        capture_output=True,
        text=True,
        check=False,
        env=env if env is not None else os.environ.copy(),
        cwd=cwd,
        timeout=60,
    )


def env_file(path: Path, *, commented: bool = False) -> dict[str, str]:
    """KEY=VALUE lines of an env file (also the commented-out ones when `commented`)."""
    found = {}
    for line in path.read_text().splitlines():
        text = line.removeprefix("# ") if commented else line
        name, sep, value = text.partition("=")
        if sep and name.isidentifier() and name.isupper() and not text.startswith("#"):
            found[name] = value
    return found


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any variable the shipped configs read."""
    names = env_file(ROOT / ".env.example") | env_file(ROOT / ".env.example", commented=True)
    base = {k: v for k, v in os.environ.items() if k not in names and not k.startswith("BRIDGE_")}
    return {**base, **extra}


def test_the_unedited_env_example_fails_check_naming_every_key_it_leaves_unsafe() -> None:
    # Given .env.example copied to .env and not edited,
    example = env_file(ROOT / ".env.example")
    # when `check` runs the shipped config with it,
    result = run("check", "--config", "config/bridge.yaml", env=clean_env(**example))
    # then it fails, and says which keys still hold a placeholder or nothing.
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for key in (
        "voxys.api_token",
        "voxys.account_id",
        "server.public_url",
        "sources.stripe.secret",
        "sources.hubspot.secret",
        "sources.pipedrive.basic_auth.password",
        "sources.billing.secret",
    ):
        assert f"key '{key}': is a placeholder (<…>): set the real value" in result.stderr, key
    for value in example.values():
        if value:
            assert value not in result.stderr  # placeholders are named, never echoed


def test_the_other_presets_placeholders_in_env_example_fail_check_too() -> None:
    example = env_file(ROOT / ".env.example") | env_file(ROOT / ".env.example", commented=True)
    result = run("check", "--config", "examples/all-providers.yaml", env=clean_env(**example))
    assert result.returncode == 2
    for key in (
        "paddle.secret",
        "chargebee.basic_auth.password",
        "shopify.secret",
        "close.secret",
        "salesforce.organization_ids[0]",
        "salesforce.token",
        "highlevel.public_key",
    ):
        assert f"key 'sources.{key}': is a placeholder" in result.stderr, key


def test_every_unset_variable_is_named_in_one_run() -> None:
    result = run("check", "--config", "examples/all-providers.yaml", env=clean_env())
    assert result.returncode == 2
    named = [
        line.rsplit("environment variable ", 1)[1].split()[0]
        for line in result.stderr.splitlines()
        if "environment variable" in line
    ]
    assert named == [
        "VOXYS_API_TOKEN",
        "STRIPE_WEBHOOK_SECRET",
        "HUBSPOT_CLIENT_SECRET",
        "PIPEDRIVE_PASSWORD",
        "BILLING_WEBHOOK_SECRET",
        "PADDLE_SECRET",
        "CHARGEBEE_PASSWORD",
        "SHOPIFY_CLIENT_SECRET",
        "CLOSE_SIGNATURE_KEY",
        "SALESFORCE_ORG_ID",
        "SALESFORCE_URL_TOKEN",
        "HIGHLEVEL_PUBLIC_KEY",
    ]
    assert result.stderr.splitlines()[-1] == "12 error(s) in examples/all-providers.yaml"


def test_an_unset_variable_inside_a_rule_names_the_rule(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "crm.yaml").write_text(
        "rules:\n"
        "  - name: crm-won\n"
        "    source: crm\n"
        "    when: event.type == 'won'\n"
        "    lead_id: \"{{ event.custom['${CRM_LEAD_FIELD}'] }}\"\n"
        "    status: won\n"
    )
    config = tmp_path / "bridge.yaml"
    config.write_text(
        "voxys: {api_token: token, account_id: 1}\n"
        "sources: {crm: {verify: {type: none}, allow_unsigned: true}}\n"
        "rules: [{include: rules/*.yaml}]\n"
    )
    result = run("check", "--config", str(config), env=clean_env())
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == (
        f"error: {tmp_path / 'rules' / 'crm.yaml'}: rule 'crm-won': key 'lead_id': "
        "environment variable CRM_LEAD_FIELD is not set"
    )


def test_an_include_matching_no_file_is_an_error_naming_the_pattern(tmp_path: Path) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text("voxys: {api_token: token, account_id: 1}\nrules: [{include: rule/*.yaml}]\n")
    result = run("check", "--config", str(config), env=clean_env())
    assert (result.returncode, result.stderr.splitlines()[0]) == (
        2,
        f"error: {config}: key 'rules[0].include': no file matches {tmp_path}/rule/*.yaml",
    )


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{preset: stripe, secret: whsec_, tolerence: 5m}",
            "key 'sources.s.tolerence': unknown key",
        ),
        (
            "{preset: pipedrive, basic_auth: {username: u, pasword: a-long-password}}",
            "key 'sources.s.basic_auth.pasword': unknown key",
        ),
        (
            "{verify: {type: hmac, header: X-Sig, algoritm: sha1}, secret: a-shared-secret-of-24-ch}",
            "key 'sources.s.verify.algoritm': unknown key",
        ),
        (
            "{preset: stripe, secret: whsec_, tolerance: 10 sec}",
            "invalid duration '10 sec' (use 10s, 5m, 200ms)",
        ),
    ],
)
def test_a_typo_in_a_source_at_any_depth_is_an_unknown_key(
    tmp_path: Path, entry: str, message: str
) -> None:
    config = tmp_path / "bridge.yaml"
    config.write_text(f"voxys: {{api_token: token, account_id: 1}}\nsources: {{s: {entry}}}\n")
    result = run("check", "--config", str(config), env=clean_env())
    assert result.returncode == 2
    assert message in result.stderr
    assert "Extra inputs" not in result.stderr and "Traceback" not in result.stderr


# --- serve: the port and the store -------------------------------------------------------

SERVE_CONFIG = """
server: {{host: 127.0.0.1, port: {port}, workers: {workers}}}
storage: {{url: "sqlite:///{db}"}}
voxys: {{api_token: token, account_id: 1, base_url: "http://127.0.0.1:9"}}
logging: {{format: json}}
"""


def serve_config(tmp_path: Path, db: Path, *, port: int = 0, workers: int = 1) -> Path:
    config = tmp_path / "bridge.yaml"
    config.write_text(SERVE_CONFIG.format(port=port, workers=workers, db=db))
    return config


def serve(config: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    """`serve` that must fail at start: it exits by itself, well within the timeout."""
    return subprocess.run(
        [*prefix, SCRIPT, "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert result.returncode == 1
    assert result.stderr.splitlines() == [line]
    assert "bridge.started" not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def unprivileged() -> list[str]:
    """A prefix that runs a command without root's power to write anywhere."""
    if os.geteuid() != 0:
        return []
    probe = subprocess.run(["unshare", "--user", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"running as root and `unshare --user` is unavailable: {probe.stderr!r}")
    return ["unshare", "--user"]  # a user namespace without a mapping has no capabilities


@pytest.mark.parametrize("workers", [1, 2])
def test_a_port_in_use_is_one_line_naming_the_address_and_nothing_starts(
    tmp_path: Path, workers: int
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = serve(serve_config(tmp_path, tmp_path / "b.db", port=port, workers=workers))
    assert_one_line(result, f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert not (tmp_path / "b.db").exists()  # bound before anything else was touched


@pytest.mark.parametrize("workers", [1, 2])
def test_a_storage_directory_that_cannot_be_created_is_named_with_the_reason(
    tmp_path: Path, workers: int
) -> None:
    (tmp_path / "data").write_text("a file where the directory should be")
    db = tmp_path / "data" / "bridge" / "bridge.db"
    result = serve(serve_config(tmp_path, db, workers=workers))
    assert_one_line(
        result,
        f"error: cannot open the store: cannot create the directory {db.parent} for {db}: "
        "Not a directory",
    )


def test_a_storage_path_that_is_a_directory_is_named(tmp_path: Path) -> None:
    result = serve(serve_config(tmp_path, tmp_path))
    assert_one_line(
        result,
        f"error: cannot open the store: cannot use {tmp_path} as the database: it is a directory",
    )


def test_an_unwritable_storage_directory_is_named_with_the_reason(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o555)
    try:
        result = serve(serve_config(tmp_path, data / "bridge.db"), *unprivileged())
    finally:
        data.chmod(0o755)
    assert_one_line(
        result,
        f"error: cannot open the store: cannot write in {data} (the database {data / 'bridge.db'}): "
        "Permission denied",
    )


def test_a_store_on_a_read_only_mount_is_named_with_the_reason(tmp_path: Path) -> None:
    mount = tmp_path / "ro"
    mount.mkdir()
    # A read-only tmpfs in a mount namespace of this command alone: a real read-only mount.
    prefix = [
        "unshare",
        "--mount",
        "--map-root-user",
        "sh",
        "-c",
        'mount -t tmpfs -o ro tmpfs "$0" && exec "$@"',
        str(mount),
    ]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only mount here (unshare/mount): {probe.stderr.strip()}")
    result = serve(serve_config(tmp_path, mount / "bridge.db"), *prefix)
    assert_one_line(
        result,
        f"error: cannot open the store: cannot write in {mount} (the database {mount / 'bridge.db'}): "
        "Read-only file system",
    )
