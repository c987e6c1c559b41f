"""Chargebee webhooks: HTTP basic auth and one event per request.

Chargebee does not sign webhooks; it protects them with the basic-auth username and
password set on the webhook endpoint (Chargebee "Webhooks" settings), sent as
`Authorization: Basic` (RFC 7617). The body is one Event resource (API v2):
`{"id": "ev_...", "occurred_at": <epoch seconds>, "event_type": "...", "content": {...}}`;
its `id` is the same on every retry, so it is the dedupe id. Without a signed
timestamp there is no freshness check: a replay is dropped by that id.
"""

from __future__ import annotations

from typing import ClassVar

from bridge.errors import BadRequest
from bridge.models import Event
from bridge.sources.base import SourceSettings, WebhookRequest, decode_object
from bridge.sources.basic import BasicAuthSettings, BasicAuthSource
from bridge.sources.fields import id_text, occurred_at


class ChargebeeSettings(BasicAuthSettings):
    """`{preset: chargebee, basic_auth: {username: u, password: p}}`."""


class ChargebeeSource(BasicAuthSource):
    """A Chargebee webhook endpoint (`preset: chargebee`)."""

    preset: ClassVar[str] = "chargebee"
    settings_model: ClassVar[type[SourceSettings]] = ChargebeeSettings

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        payload = decode_object(request, "Chargebee event")
        event_id = id_text(payload.get("id"))
        if event_id is None:
            raise BadRequest("Chargebee event without id")
        return [
            Event(
                source=self.key,
                event_id=event_id,
                occurred_at=occurred_at(payload.get("occurred_at"), received_at, unit="s"),
                received_at=received_at,
                payload=payload,
                headers=request.safe_headers(),
            )
        ]
