"""Shopify webhooks: `X-Shopify-Hmac-Sha256` verification; id and time from the signed body.

Follows Shopify's "Verify webhook deliveries" (shopify.dev): `X-Shopify-Hmac-Sha256` is
the base64 HMAC-SHA256 of the raw body keyed by the app's client secret (or, for a
webhook made in the store admin, the signing key shown there). The HMAC covers the body
and nothing else: no time (so there is no freshness check) and none of the other
headers ("Webhooks delivery structure": `X-Shopify-Topic`, `-Event-Id`, `-Webhook-Id`,
`-Triggered-At`, `-Shop-Domain`, `-API-Version`).

So nothing unsigned decides identity or order. Anyone holding one captured request could
otherwise replay it with a new `X-Shopify-Event-Id` (a new event) and
`X-Shopify-Triggered-At: 2099-…` (newer than anything genuine: the lead frozen).

- The id is `<topic>:<SHA-256 of the body>`: Shopify resends a delivery with the same
  body, so a retry is a duplicate; one change firing two topics (`orders/paid` and
  `orders/updated`, identical bodies) stays two events. The topic scopes the id only:
  a replay under another topic is stored, but dated by its body, and rules should
  decide on body fields (`event.financial_status`, `event.cancelled_at`), never on the
  topic alone.
- The time is the resource's own `updated_at`, else `created_at` (the body is the
  resource: an order, a customer), else the time of receipt.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import ClassVar

from bridge.errors import Unauthorized
from bridge.models import Event
from bridge.sources.base import Source, SourceSettings, WebhookRequest, decode_object
from bridge.sources.fields import body_sha256, epoch_seconds
from bridge.sources.signing import (
    Secrets,
    decode_signature,
    hmac_digest,
    matches_any,
    require_header,
    secret_bytes,
)

HMAC_HEADER = "X-Shopify-Hmac-Sha256"
TOPIC_HEADER = "X-Shopify-Topic"
EVENT_ID_HEADER = "X-Shopify-Event-Id"  # sent by `sign`, as Shopify does; never trusted
TRIGGERED_AT_HEADER = "X-Shopify-Triggered-At"  # the same
TIME_FIELDS = ("updated_at", "created_at")  # the resource's own, in the signed body


class ShopifySettings(SourceSettings):
    """`{preset: shopify, secret: <client secret> | [new, old]}`."""

    secret: Secrets


def shopify_event_id(request: WebhookRequest) -> str:
    """The dedupe id: `<topic>:<SHA-256 of the body>`, or the bare digest without a topic."""
    digest = body_sha256(request.body)
    topic = (request.header(TOPIC_HEADER) or "").strip()
    return f"{topic}:{digest}" if topic else digest


def resource_time(payload: dict[str, object], received_at: float) -> float:
    """The resource's `updated_at`, else its `created_at`, else `received_at`."""
    for name in TIME_FIELDS:
        seconds = epoch_seconds(payload.get(name))
        if seconds is not None:
            return seconds
    return received_at


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

        The id and time headers are sent for realism only; `split` ignores them. No
        topic is sent: the signer does not know it.
        """
        signature = base64.b64encode(hmac_digest(self._keys[0], body)).decode("ascii")
        triggered = datetime.fromtimestamp(now, tz=UTC).isoformat().replace("+00:00", "Z")
        return {
            "Content-Type": content_type,
            HMAC_HEADER: signature,
            EVENT_ID_HEADER: "evt-" + hashlib.sha256(body).hexdigest()[:32],
            TRIGGERED_AT_HEADER: triggered,
        }

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        payload = decode_object(request, "Shopify payload")
        # The HMAC header's name has no word the generic filter knows; it is not kept.
        headers = {k: v for k, v in request.safe_headers().items() if k != HMAC_HEADER.lower()}
        return [
            Event(
                source=self.key,
                event_id=shopify_event_id(request),
                occurred_at=resource_time(payload, received_at),
                received_at=received_at,
                payload=payload,
                headers=headers,
            )
        ]
