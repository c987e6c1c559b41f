"""Shopify webhooks: `X-Shopify-Hmac-Sha256` verification, the topic exposed to rules.

Follows Shopify's "Verify webhooks" (shopify.dev): `X-Shopify-Hmac-Sha256` is the
base64 HMAC-SHA256 of the raw body keyed by the app's client secret (or, for a webhook
made in the store admin, the signing key shown there). Nothing in the signature covers
a time, so there is no freshness check; replays are dropped by event id.

Shopify's "Ignore duplicate webhooks" names `X-Shopify-Event-Id` as the dedupe key
(`X-Shopify-Webhook-Id` is the fallback for deliveries without it). One change can fire
several topics (`orders/paid` and `orders/updated`), so the id is scoped by
`X-Shopify-Topic`: one topic's delivery never hides another's. The body is the resource
itself (an order, a customer), so rules read the topic as
`headers['x-shopify-topic']`; `X-Shopify-Triggered-At` is when the event happened.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import ClassVar

from bridge.errors import BadRequest, Unauthorized
from bridge.models import Event
from bridge.sources.base import Source, SourceSettings, WebhookRequest, decode_object
from bridge.sources.fields import occurred_at
from bridge.sources.signing import (
    Secrets,
    decode_signature,
    hmac_digest,
    matches_any,
    require_header,
    secret_bytes,
)

HMAC_HEADER = "X-Shopify-Hmac-Sha256"
EVENT_ID_HEADERS = ("X-Shopify-Event-Id", "X-Shopify-Webhook-Id")
TOPIC_HEADER = "X-Shopify-Topic"
TRIGGERED_AT_HEADER = "X-Shopify-Triggered-At"


class ShopifySettings(SourceSettings):
    """`{preset: shopify, secret: <client secret> | [new, old]}`."""

    secret: Secrets


def shopify_event_id(request: WebhookRequest) -> str | None:
    """The dedupe id: `<topic>:<event id>`, or the bare event id when no topic is sent."""
    for name in EVENT_ID_HEADERS:
        value = (request.header(name) or "").strip()
        if value:
            topic = (request.header(TOPIC_HEADER) or "").strip()
            return f"{topic}:{value}" if topic else value
    return None


class ShopifySource(Source):
    """A Shopify webhook subscription's endpoint (`preset: shopify`)."""

    preset: ClassVar[str] = "shopify"
    settings_model: ClassVar[type[SourceSettings]] = ShopifySettings

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        super().__init__(key, settings, public_url=public_url)
        if not isinstance(settings, ShopifySettings):
            raise TypeError("ShopifySource needs ShopifySettings")
        self._keys = secret_bytes(settings.secret)

    def verify(self, request: WebhookRequest, now: float) -> None:
        given = decode_signature(require_header(request, HMAC_HEADER), "base64")
        if given is None:
            raise Unauthorized(f"malformed {HMAC_HEADER} header")
        expected = [hmac_digest(k, request.body) for k in self._keys]
        if not matches_any(expected, [given]):
            raise Unauthorized("signature mismatch")

    def sign(
        self,
        body: bytes,
        *,
        now: float,
        path: str,
        query_string: str = "",
        content_type: str = "application/json",
    ) -> dict[str, str]:
        """The HMAC, event id and trigger time headers Shopify sends, under the first secret.

        The event id is derived from the body, so re-sending the same payload is a
        redelivery of one event. No topic is sent: the signer does not know it.
        """
        signature = base64.b64encode(hmac_digest(self._keys[0], body)).decode("ascii")
        triggered = datetime.fromtimestamp(now, tz=UTC).isoformat().replace("+00:00", "Z")
        return {
            "Content-Type": content_type,
            HMAC_HEADER: signature,
            EVENT_ID_HEADERS[0]: "evt-" + hashlib.sha256(body).hexdigest()[:32],
            TRIGGERED_AT_HEADER: triggered,
        }

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        event_id = shopify_event_id(request)
        if event_id is None:
            raise BadRequest(f"missing {EVENT_ID_HEADERS[0]} header")
        payload = decode_object(request, "Shopify payload")
        # The HMAC header's name has no word the generic filter knows; it is not kept.
        headers = {k: v for k, v in request.safe_headers().items() if k != HMAC_HEADER.lower()}
        return [
            Event(
                source=self.key,
                event_id=event_id,
                occurred_at=occurred_at(request.header(TRIGGERED_AT_HEADER), received_at),
                received_at=received_at,
                payload=payload,
                headers=headers,
            )
        ]
