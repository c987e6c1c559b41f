"""Pipedrive webhooks: HTTP basic auth, and the v1 and v2 payload shapes.

Pipedrive does not sign webhooks; it sends the `http_auth_user`/`http_auth_password`
set on the webhook as `Authorization: Basic` (Pipedrive "Guide for Webhooks").

- v2 ("Guide for Webhooks v2"): `{meta, data, previous}`; `meta.version` is "2.0",
  `meta.id` identifies the event and `meta.timestamp` is when it happened.
- v1: `{v: 1, event: "added.deal", current, previous, meta, retry}`; there is no event
  id, so the dedupe id is a SHA-256 of the payload. The top-level `retry` counter is
  left out of that hash because Pipedrive raises it on each redelivery, and a
  redelivery must get the same id.
"""

from __future__ import annotations

from typing import Any, ClassVar

from bridge.errors import BadRequest
from bridge.models import Event
from bridge.sources.base import SourceSettings, WebhookRequest, decode_object
from bridge.sources.basic import BasicAuthSettings, BasicAuthSource
from bridge.sources.fields import canonical_sha256, id_text, occurred_at

_V1_KEYS = ("event", "current", "previous")


class PipedriveSettings(BasicAuthSettings):
    """`{preset: pipedrive, basic_auth: {username: u, password: p}}`."""


def webhook_version(payload: dict[str, Any]) -> int:
    """2 or 1, from the payload's shape; `BadRequest` when it is neither."""
    meta = payload.get("meta")
    if isinstance(meta, dict) and str(meta.get("version", "")).startswith("2"):
        return 2
    if payload.get("v") == 1 or any(k in payload for k in _V1_KEYS):
        return 1
    raise BadRequest("not a Pipedrive webhook (neither v2 meta.version nor v1 fields)")


class PipedriveSource(BasicAuthSource):
    """A Pipedrive webhook endpoint (`preset: pipedrive`)."""

    preset: ClassVar[str] = "pipedrive"
    settings_model: ClassVar[type[SourceSettings]] = PipedriveSettings

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        payload = decode_object(request, "Pipedrive webhook")
        meta = payload.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        if webhook_version(payload) == 2:
            event_id = id_text(meta.get("id"))
            if event_id is None:
                raise BadRequest("Pipedrive v2 event without meta.id")
        else:
            event_id = canonical_sha256({k: v for k, v in payload.items() if k != "retry"})
        return [
            Event(
                source=self.key,
                event_id=event_id,
                # v2 sends ISO 8601 (some accounts epoch seconds); v1 epoch seconds.
                occurred_at=occurred_at(meta.get("timestamp"), received_at),
                received_at=received_at,
                payload=payload,
                headers=request.safe_headers(),
            )
        ]
