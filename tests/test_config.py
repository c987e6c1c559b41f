"""bridge.yaml loading: interpolation, durations, validation messages that name file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.config import load_config, parse_duration
from bridge.errors import ConfigErrors

MINIMAL = """
voxys:
  api_token: ${TEST_VOXYS_TOKEN}
  account_id: 1
"""


def write(tmp_path: Path, text: str, name: str = "bridge.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        (5, 5.0),
        (1.5, 1.5),
        ("200ms", 0.2),
        ("10s", 10.0),
        ("5m", 300.0),
        ("24h", 86400.0),
        ("30d", 2_592_000.0),
        ("7", 7.0),
    ],
)
def test_durations_accept_seconds_or_a_unit(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["5 minutes", "-1s", "1w", "", True, None, "s"])
def test_invalid_durations_are_refused(text: object) -> None:
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(text)


def test_environment_variables_are_interpolated_with_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", "tok-123")
    monkeypatch.delenv("TEST_PORT", raising=False)
    path = write(tmp_path, MINIMAL + "server: {port: '${TEST_PORT:-9090}'}\n")
    loaded = load_config(path)
    assert loaded.config.voxys.api_token.get_secret_value() == "tok-123"
    assert loaded.config.server.port == 9090


def test_a_missing_environment_variable_names_itself_the_file_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEST_VOXYS_TOKEN", raising=False)
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    [error] = info.value.errors  # and not also "is empty" for the value it left behind
    assert str(error) == (
        f"{path}: key 'voxys.api_token': environment variable TEST_VOXYS_TOKEN is not set"
    )


def test_every_unset_variable_is_reported_in_one_run_each_at_its_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("TEST_VOXYS_TOKEN", "TEST_PORT", "TEST_HOST", "TEST_LEAD_FIELD", "TEST_OTHER"):
        monkeypatch.delenv(name, raising=False)
    rules = write(
        tmp_path,
        "rules:\n  - {name: from-file, source: s, lead_id: '${TEST_LEAD_FIELD}', status: won}\n",
        "rules/a.yaml",
    )
    path = write(
        tmp_path,
        MINIMAL
        + "server: {port: '${TEST_PORT}', public_url: 'http://${TEST_HOST}:${TEST_OTHER}'}\n"
        + "rules:\n"
        + "  - {name: inline, source: s, lead_id: 1, status: '${TEST_OTHER}'}\n"
        + "  - include: rules/*.yaml\n",
    )
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    assert [str(e) for e in info.value.errors] == [
        f"{path}: key 'voxys.api_token': environment variable TEST_VOXYS_TOKEN is not set",
        f"{path}: key 'server.port': environment variable TEST_PORT is not set",
        f"{path}: key 'server.public_url': environment variables TEST_HOST, TEST_OTHER are not set",
        f"{path}: rule 'inline': key 'status': environment variable TEST_OTHER is not set",
        f"{rules}: rule 'from-file': key 'lead_id': "
        "environment variable TEST_LEAD_FIELD is not set",
    ]


def test_an_include_that_matches_no_file_is_an_error_naming_the_pattern(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", "x")
    path = write(tmp_path, MINIMAL + "rules:\n  - include: rule/*.yaml\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    [error] = info.value.errors
    assert (error.file, error.key) == (str(path), "rules[0].include")
    assert error.message == f"no file matches {tmp_path / 'rule' / '*.yaml'}"


@pytest.mark.parametrize(
    ("section", "key", "message"),
    [
        (
            "storage: {retention: 10 sec}",
            "storage.retention",
            "invalid duration '10 sec' (use 10s, 5m, 200ms)",
        ),
        ("server: {port: eighty}", "server.port", "not an integer"),
        ("server: {port: 70000}", "server.port", "must be at most 65535"),
        (
            "server: {public_url: hooks.example.com}",
            "server.public_url",
            "must be an http:// or https:// URL with a host",
        ),
        (
            "server: {public_url: '<your public URL>'}",
            "server.public_url",
            "is a placeholder (<…>): set the real value",
        ),
        ("logging: {format: xml}", "logging.format", "must be one of auto, json or console"),
        ("logging: {levle: info}", "logging.levle", "unknown key"),
        ("admin: {token: short}", "admin.token", "is too short: 5 characters, at least 16 needed"),
        ("lookups: {deals: [1, 2]}", "lookups.deals", "must be a mapping"),
    ],
)
def test_validation_messages_are_in_our_own_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, section: str, key: str, message: str
) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", "x")
    path = write(tmp_path, MINIMAL + section + "\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    [error] = info.value.errors
    assert (error.key, error.message) == (key, message)


@pytest.mark.parametrize("token", ["", "  ", "<api_access_token from your Voxys profile>"])
def test_an_empty_or_placeholder_voxys_token_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", token)
    with pytest.raises(ConfigErrors) as info:
        load_config(write(tmp_path, MINIMAL))
    [error] = info.value.errors
    assert error.key == "voxys.api_token"
    assert error.message in ("is empty", "is a placeholder (<…>): set the real value")


def test_a_double_dollar_is_a_literal_dollar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", "x")
    path = write(tmp_path, MINIMAL + "server: {public_url: 'https://h/$${NOT_A_VAR}'}\n")
    assert load_config(path).config.server.public_url == "https://h/${NOT_A_VAR}"


def test_unknown_keys_are_refused_with_their_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", "x")
    path = write(tmp_path, MINIMAL + "  rate_limt: {requests: 5}\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    [error] = info.value.errors
    assert error.key == "voxys.rate_limt"
    assert error.file == str(path)
    assert "unknown key" in str(error)


def test_the_whole_documented_schema_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", "x")
    write(tmp_path, "key,value\n9001,42\n", "lookups/deals.csv")
    write(tmp_path, "rules: []\n", "rules/a.yaml")
    path = write(
        tmp_path,
        """
server: {host: 0.0.0.0, port: 8080, public_url: https://hooks.example.com, max_body_bytes: 1048576}
storage: {url: "sqlite:///./data/bridge.db", retention: 30d}
voxys:
  base_url: https://connect.voxys.ai
  api_token: ${TEST_VOXYS_TOKEN}
  account_id: 123
  rate_limit: {requests: 10, per_seconds: 1}
  timeout: 10s
  max_in_flight: 16
  retry: {max_attempts: 15, max_age: 24h, backoff: {initial: 1s, max: 10m},
          not_found: {attempts: 3, backoff: 5m}}
  coalesce: true
admin: {token: "${TEST_ADMIN:-}"}
logging: {format: auto, level: info}
lookups:
  hubspot_deals: {"9001": 42}
  from_file: {file: lookups/deals.csv}
sources: {}
rules:
  - include: rules/*.yaml
""",
    )
    loaded = load_config(path)
    config = loaded.config
    assert config.voxys.retry.backoff.max == 600
    assert config.voxys.retry.not_found.backoff == 300
    assert config.storage.retention == 30 * 86400
    assert config.admin.token is None
    assert loaded.lookups == {"hubspot_deals": {"9001": "42"}, "from_file": {"9001": "42"}}
    assert str(tmp_path / "rules" / "a.yaml") in loaded.files


def test_includes_are_read_in_sorted_glob_order_after_inline_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", "x")
    rule = "  - {{name: {n}, source: s, lead_id: 1, status: won}}\n"
    write(tmp_path, "rules:\n" + rule.format(n="b1") + rule.format(n="b2"), "rules/b.yaml")
    write(tmp_path, "rules:\n" + rule.format(n="a1"), "rules/a.yaml")
    path = write(
        tmp_path, MINIMAL + "rules:\n" + rule.format(n="inline") + "  - include: rules/*.yaml\n"
    )
    names = [r.rule.name for r in load_config(path).rules]
    assert names == ["inline", "a1", "b1", "b2"]


def test_a_mistake_in_an_included_rule_names_that_file_the_rule_and_the_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", "x")
    rules = write(
        tmp_path,
        "rules:\n  - {name: r1, source: s, lead_id: 1, status: won, colour: red}\n",
        "rules/x.yaml",
    )
    path = write(tmp_path, MINIMAL + "rules:\n  - include: rules/*.yaml\n")
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    [error] = info.value.errors
    assert (error.file, error.rule, error.key) == (str(rules), "r1", "colour")


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "voxys: {api_token: x\n  bad: [\n")
    with pytest.raises(ConfigErrors, match=r"line \d+"):
        load_config(path)


def test_a_lookup_csv_without_its_header_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", "x")
    write(tmp_path, "9001,42\n", "deals.csv")
    path = write(tmp_path, MINIMAL + "lookups: {deals: {file: deals.csv}}\n")
    with pytest.raises(ConfigErrors, match="key,value"):
        load_config(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"key,value\n9001,42\n9002\n", "line 3: no value column"),
        (b"key,value\n9001,\xff\n", "not UTF-8 text"),
        (b'key,value\n"9001"x,42\n', "line 2: ',' expected after"),
    ],
)
def test_a_malformed_lookup_csv_is_refused_naming_file_line_and_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: bytes, message: str
) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", "x")
    (tmp_path / "deals.csv").write_bytes(content)
    path = write(tmp_path, MINIMAL + "lookups: {deals: {file: deals.csv}}\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    [error] = caught.value.errors
    assert message in str(error)
    assert (error.file, error.key) == (str(tmp_path / "deals.csv"), "lookups.deals")


def test_a_lookup_csv_takes_its_columns_by_header_name_and_skips_blank_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_VOXYS_TOKEN", "x")
    (tmp_path / "deals.csv").write_text("note,value,key\nfirst,42,9001\n\nsecond,43,9002\n")
    path = write(tmp_path, MINIMAL + "lookups: {deals: {file: deals.csv}}\n")
    assert load_config(path).lookups == {"deals": {"9001": "42", "9002": "43"}}


def test_a_long_value_under_the_wrong_key_is_not_quoted_back(tmp_path: Path) -> None:
    # A secret pasted into a duration field must not reach the logs via the error.
    secret = "sk_live_51NzQv8Lk0pQrStUvWxYz"
    path = tmp_path / "bridge.yaml"
    path.write_text(f"voxys: {{api_token: t, timeout: {secret}}}\n")
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    message = str(caught.value)
    assert "voxys.timeout" in message
    assert secret not in message
    assert "(a str of 29 characters)" in message
