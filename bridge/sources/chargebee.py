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
from bridge.sources.base import Source, SourceSettings, WebhookRequest, decode_body
from bridge.sources.fields import id_text, occurred_at
from bridge.sources.signing import BasicAuth, basic_authorization, check_basic_auth


class ChargebeeSettings(SourceSettings):
    """`{preset: chargebee, basic_auth: {username: u, password: p}}`."""

    basic_auth: BasicAuth


class ChargebeeSource(Source):
    """A Chargebee webhook endpoint (`preset: chargebee`)."""

    preset: ClassVar[str] = "chargebee"
    settings_model: ClassVar[type[SourceSettings]] = ChargebeeSettings

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        super().__init__(key, settings, public_url=public_url)
        if not isinstance(settings, ChargebeeSettings):
            raise TypeError("ChargebeeSource needs ChargebeeSettings")
        self._credentials = settings.basic_auth

    def verify(self, request: WebhookRequest, now: float) -> None:
        check_basic_auth(request, self._credentials)

    def sign(
        self,
        body: bytes,
        *,
        now: float,
        path: str,
        query_string: str = "",
        content_type: str = "application/json",
    ) -> dict[str, str]:
        """`Authorization: Basic` with the configured credentials, as Chargebee sends it."""
        credentials = self._credentials
        authorization = basic_authorization(credentials.username, credentials.password)
        return {"Content-Type": content_type, "Authorization": authorization}

    def parse(self, request: WebhookRequest, received_at: float) -> list[Event]:
        payload = decode_body(request)
        if not isinstance(payload, dict):
            raise BadRequest("Chargebee event is not a JSON object")
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
