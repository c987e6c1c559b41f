"""No event is believed to have happened more than FUTURE_SKEW_S after it arrived."""

from __future__ import annotations

import json

import pytest

from bridge.models import Event
from bridge.sources import presets
from bridge.sources.base import FUTURE_SKEW_S, Source, bounded, clamped

from .conftest import build_one, make_request

NOW = 1_724_419_200.0


def event(occurred_at: float) -> Event:
    return Event(source="s", event_id="e", occurred_at=occurred_at, received_at=NOW, payload={})


@pytest.mark.parametrize("ahead", [-86400.0, 0.0, 1.0, FUTURE_SKEW_S])
def test_a_time_up_to_the_skew_past_arrival_is_kept(ahead: float) -> None:
    kept = bounded(event(NOW + ahead))
    assert (kept.occurred_at, kept.claimed_at) == (NOW + ahead, None)


def test_a_time_further_ahead_is_taken_as_the_arrival_and_the_claim_kept() -> None:
    later = bounded(event(NOW + FUTURE_SKEW_S + 0.001))
    assert (later.occurred_at, later.claimed_at) == (NOW, NOW + FUTURE_SKEW_S + 0.001)


def test_every_preset_parses_through_the_clamp() -> None:
    # `parse` is what ingest and dry-run call; a preset overriding it would skip `bounded`.
    assert all(cls.parse is Source.parse for cls in presets().values())


def test_a_source_bounds_what_its_provider_claims() -> None:
    stripe = build_one({"preset": "stripe", "secret": "whsec_test_times_8c2e4a1f"})
    body = json.dumps({"id": "evt_1", "created": int(NOW) + 3600}).encode()
    [stated] = stripe.split(make_request(body), received_at=NOW)
    [parsed] = stripe.parse(make_request(body), received_at=NOW)
    assert stated.occurred_at == NOW + 3600
    assert (parsed.occurred_at, parsed.claimed_at) == (NOW, NOW + 3600)


def test_the_webhook_line_counts_clamped_events_and_the_largest_lead() -> None:
    events = [bounded(event(NOW + 60)), bounded(event(NOW)), bounded(event(NOW + 3600.04))]
    assert clamped(events) == {"clamped": 2, "clamped_ahead_s": 3600.0}
    assert clamped([bounded(event(NOW))]) == {}
