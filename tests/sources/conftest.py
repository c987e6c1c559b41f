"""Helpers for source tests: raw requests, recorded samples, building one configured source."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.errors import ConfigErrors, RequestRejected, Unauthorized
from bridge.sources import build_sources
from bridge.sources.base import Source, WebhookRequest

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
PUBLIC_URL = "https://hooks.example.com"
CONFIG_FILE = "config/bridge.yaml"


def sample(provider: str, name: str) -> bytes:
    """A recorded payload from tests/samples/<provider>/<name>, as raw bytes."""
    return (SAMPLES / provider / name).read_bytes()


def make_request(
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    path: str = "/webhooks/test",
    query_string: str = "",
    method: str = "POST",
    content_type: str = "application/json",
) -> WebhookRequest:
    """A WebhookRequest as the ingest handler builds it (lower-cased header names)."""
    return WebhookRequest(
        method=method,
        path=path,
        query_string=query_string,
        headers={k.lower(): v for k, v in (headers or {}).items()},
        body=body,
        content_type=content_type,
    )


def build_one(entry: Mapping[str, Any] | str, key: str = "test") -> Source:
    """Build one source from its YAML mapping (a dict, or YAML text) the way bridge.yaml does."""
    raw = yaml.safe_load(entry) if isinstance(entry, str) else entry
    return build_sources({key: raw}, public_url=PUBLIC_URL, file=CONFIG_FILE)[key]


def config_errors(entries: Mapping[str, Any] | str) -> list[str]:
    """The messages build_sources reports for a `sources:` mapping that must fail."""
    raw = yaml.safe_load(entries) if isinstance(entries, str) else entries
    with pytest.raises(ConfigErrors) as info:
        build_sources(raw, public_url=PUBLIC_URL, file=CONFIG_FILE)
    return [str(e) for e in info.value.errors]


def refused(source: Source, request: WebhookRequest, now: float, *secrets: str) -> str:
    """Assert `verify` raises Unauthorized; its reason, checked to leak none of `secrets`."""
    with pytest.raises(Unauthorized) as info:
        source.verify(request, now)
    reason = info.value.reason
    assert_safe(reason, request, *secrets)
    return reason


def assert_safe(reason: str, request: WebhookRequest, *secrets: str) -> None:
    """A rejection reason is short and echoes neither secrets nor credential headers."""
    assert len(reason) < 120
    leaks = [*secrets, *(v for k, v in request.headers.items() if k not in ("content-type",))]
    for value in leaks:
        if len(value) >= 8:  # short values such as "v1" or "t=1" are words, not leaks
            assert value not in reason


def rejected(error: type[RequestRejected], source: Source, request: WebhookRequest) -> str:
    """Assert `parse` raises `error`; its reason."""
    with pytest.raises(error) as info:
        source.parse(request, 1_700_000_000.0)
    return info.value.reason
