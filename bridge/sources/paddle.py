"""Paddle Billing webhooks: `Paddle-Signature` verification and one event per request.

Follows Paddle's "Verify webhook signatures" (developer.paddle.com): the header is a
`;`-separated list of `key=value` items; `ts` is the signing time (epoch seconds) and
each `h1` a hex HMAC-SHA256 of `"{ts}:{raw body}"` keyed by the notification
destination's secret key (`pdl_ntfset_...`, as text). While a secret is being rotated
Paddle sends one `h1` per active secret, and any may match. Paddle Classic (form posts
signed with RSA) is a different product and is not handled here.
"""

from __future__ import annotations

from typing import ClassVar

from bridge.errors import BadRequest, Unauthorized
from bridge.models import Event
from bridge.sources.base import Source, SourceSettings, WebhookRequest, decode_object
from bridge.sources.fields import id_text, occurred_at
from bridge.sources.signing import (
    DEFAULT_TOLERANCE,
    Secrets,
    Tolerance,
    check_freshness,
    hmac_digest,
    matches_any,
    parse_keyed_header,
    require_header,
    secret_bytes,
)

HEADER = "Paddle-Signature"


class PaddleSettings(SourceSettings):
    """`{preset: paddle, secret: pdl_ntfset_... | [...], tolerance: 300}`."""

    secret: Secrets
    # Paddle's SDKs allow 5 s; a wider default absorbs clock skew, and a replayed
    # event is still dropped by its `event_id`.
    tolerance: Tolerance = DEFAULT_TOLERANCE


def parse_signature_header(header: str) -> tuple[str, list[str]]:
    """The timestamp text (digits) and the `h1` signatures of a `Paddle-Signature` header."""
    return parse_keyed_header(
        header, name=HEADER, separator=";", timestamp_key="ts", signature_key="h1"
    )


def signed_content(timestamp: str, body: bytes) -> bytes:
    """What Paddle signs: the `ts` value as sent, a colon, the raw body."""
    return f"{timestamp}:".encode() + body


class PaddleSource(Source):
    """A Paddle Billing notification destination (`preset: paddle`)."""

    preset: ClassVar[str] = "paddle"
    settings_model: ClassVar[type[SourceSettings]] = PaddleSettings

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        super().__init__(key, settings, public_url=public_url)
        if not isinstance(settings, PaddleSettings):
            raise TypeError("PaddleSource needs PaddleSettings")
        self._keys = secret_bytes(settings.secret)
        self._tolerance = settings.tolerance

    def verify(self, request: WebhookRequest, now: float) -> None:
        timestamp, signatures = parse_signature_header(require_header(request, HEADER))
        message = signed_content(timestamp, request.body)
        expected = [hmac_digest(k, message).hex().encode() for k in self._keys]
        given = [s.lower().encode("utf-8") for s in signatures]
        if not matches_any(expected, given):
            raise Unauthorized("signature mismatch")
        check_freshness(int(timestamp), now, self._tolerance)

    def sign(
        self,
        body: bytes,
        *,
        now: float,
        path: str,
        query_string: str = "",
        content_type: str = "application/json",
    ) -> dict[str, str]:
        """`Paddle-Signature: ts=<now>;h1=<hex HMAC of "ts:body">` under the first secret."""
        timestamp = str(int(now))
        signature = hmac_digest(self._keys[0], signed_content(timestamp, body)).hex()
        return {"Content-Type": content_type, HEADER: f"ts={timestamp};h1={signature}"}

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        payload = decode_object(request, "Paddle event")
        event_id = id_text(payload.get("event_id"))
        if event_id is None:
            raise BadRequest("Paddle event without event_id")
        return [
            Event(
                source=self.key,
                event_id=event_id,
                # RFC 3339 with microseconds, e.g. "2024-08-23T13:20:00.123456Z".
                occurred_at=occurred_at(payload.get("occurred_at"), received_at),
                received_at=received_at,
                payload=payload,
                headers=request.safe_headers(),
            )
        ]
