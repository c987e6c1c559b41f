"""Log lines: one JSON object per line, UTC timestamps, secrets masked, nothing refused."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import pytest
import structlog

from bridge import logs


@pytest.fixture
def stream() -> Iterator[io.TextIOWrapper]:
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    logs.configure(level="info", fmt="json", secrets=["whsec_sekrit123"], stream=out)
    yield out
    structlog.reset_defaults()
    logs.REDACTOR.update(())


def lines(out: io.TextIOWrapper) -> list[dict[str, object]]:
    raw: bytes = out.buffer.getvalue()  # type: ignore[attr-defined]
    return [json.loads(line) for line in raw.decode().splitlines()]


def test_a_line_is_one_json_object_with_event_level_and_a_utc_timestamp(
    stream: io.TextIOWrapper,
) -> None:
    structlog.get_logger("t").info("webhook.received", source="stripe", events=1)
    (line,) = lines(stream)
    assert line["event"] == "webhook.received"
    assert line["level"] == "info"
    assert line["source"] == "stripe" and line["events"] == 1
    stamp = str(line["timestamp"])
    assert len(stamp) == len("2024-08-23T13:20:00.123456Z") and stamp.endswith("Z")


def test_values_orjson_refuses_are_logged_all_the_same(stream: io.TextIOWrapper) -> None:
    # A lone surrogate can come from a hostile payload into an error text.
    structlog.get_logger("t").warning("odd", text="a\ud800b", big=2**70)
    (line,) = lines(stream)
    assert line["text"] == "a\ud800b"
    assert line["big"] == 2**70


def test_a_secret_is_masked_in_strings_and_inside_containers(stream: io.TextIOWrapper) -> None:
    structlog.get_logger("t").error(
        "x", error="bad whsec_sekrit123 here", nested={"k": ["whsec_sekrit123"]}, n=3
    )
    (line,) = lines(stream)
    assert line["error"] == "bad *** here"
    assert line["nested"] == {"k": ["***"]}
    assert "whsec_sekrit123" not in json.dumps(line)


def test_levels_below_the_configured_one_are_not_written(stream: io.TextIOWrapper) -> None:
    structlog.get_logger("t").debug("quiet")
    assert lines(stream) == []
