"""Stripe webhooks: `Stripe-Signature` verification and one event per request.

Follows https://docs.stripe.com/webhooks#verify-manually: the header is a comma list of
`key=value` items; `t` is the signing time (epoch seconds) and each `v1` a hex
HMAC-SHA256 of `"{t}.{raw body}"` keyed by the endpoint secret (the `whsec_...`
string itself, as text). During a secret roll Stripe sends one `v1` per active secret,
and any may match; other schemes (`v0`) are ignored.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from bridge.errors import BadRequest, Unauthorized
from bridge.models import Event
from bridge.sources.base import Source, SourceSettings, WebhookRequest, decode_object
from bridge.sources.fields import id_text, occurred_at
from bridge.sources.signing import (
    DEFAULT_TOLERANCE,
    SecretList,
    Tolerance,
    check_freshness,
    hmac_digest,
    matches_any,
    parse_keyed_header,
    parse_timestamp,
    require_header,
    secret_bytes,
    strong,
)

HEADER = "Stripe-Signature"
SECRET_PREFIX = "whsec_"  # noqa: S105 (every endpoint secret starts so; not a secret)


class StripeSettings(SourceSettings):
    """`{preset: stripe, secret: whsec_... | [whsec_..., ...], tolerance: 300}`."""

    secret: Annotated[SecretList, strong(prefix=SECRET_PREFIX)]
    tolerance: Tolerance = DEFAULT_TOLERANCE


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and the `v1` signatures of a `Stripe-Signature` header."""
    timestamp, signatures = parse_keyed_header(
        header, name=HEADER, separator=",", timestamp_key="t", signature_key="v1"
    )
    return parse_timestamp(timestamp, f"{HEADER} timestamp"), signatures


class StripeSource(Source):
    """A Stripe webhook endpoint (`preset: stripe`)."""

    preset: ClassVar[str] = "stripe"
    settings_model: ClassVar[type[SourceSettings]] = StripeSettings

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        super().__init__(key, settings, public_url=public_url)
        if not isinstance(settings, StripeSettings):
            raise TypeError("StripeSource needs StripeSettings")
        self._keys = secret_bytes(settings.secret)
        self._tolerance = settings.tolerance

    def verify(self, request: WebhookRequest, now: float) -> None:
        timestamp, signatures = parse_signature_header(require_header(request, HEADER))
        # Stripe's own libraries sign "%d.%s", so the timestamp is re-rendered as digits.
        signed = f"{timestamp}.".encode() + request.body
        expected = [hmac_digest(k, signed).hex().encode() for k in self._keys]
        given = [s.lower().encode("utf-8") for s in signatures]
        if not matches_any(expected, given):
            raise Unauthorized("signature mismatch")
        check_freshness(timestamp, now, self._tolerance)

    def sign(
        self,
        body: bytes,
        *,
        now: float,
        path: str,
        query_string: str = "",
        content_type: str = "application/json",
    ) -> dict[str, str]:
        """`Stripe-Signature: t=<now>,v1=<hex HMAC of "t.body">` under the first secret."""
        timestamp = int(now)
        signature = hmac_digest(self._keys[0], f"{timestamp}.".encode() + body).hex()
        return {"Content-Type": content_type, HEADER: f"t={timestamp},v1={signature}"}

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        payload = decode_object(request, "Stripe event")
        event_id = id_text(payload.get("id"))
        if event_id is None:
            raise BadRequest("Stripe event without id")
        return [
            Event(
                source=self.key,
                event_id=event_id,
                # `created` is epoch seconds; thin (v2) events send an ISO 8601 string.
                occurred_at=occurred_at(payload.get("created"), received_at, unit="s"),
                received_at=received_at,
                payload=payload,
                headers=request.safe_headers(),
            )
        ]
