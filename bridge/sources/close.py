"""Close (close.com) webhooks: `close-sig-hash` verification and one event per request.

Follows Close's "Webhook signatures" (developer.close.com): when a webhook subscription
is created Close returns a `signature_key`, 64 hex digits; `close-sig-hash` is the hex
HMAC-SHA256, keyed by those hex-decoded bytes, of the `close-sig-timestamp` header's
value (epoch seconds) immediately followed by the raw body. The body is
`{"subscription_id": "whsub_...", "event": {"id": "ev_...", "date_created": ..., ...}}`;
the event's `id` is the dedupe id.

Close retries a failed delivery for up to 72 hours, and its docs do not say whether
`close-sig-timestamp` is renewed on each attempt. A five-minute tolerance could then
refuse a genuine retry for its age alone, so the default tolerance spans the whole retry
window (73 h): a valid retry is always accepted, and a captured request replayed within
that window carries an event id already stored, so it is dropped as a duplicate.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

from bridge.errors import BadRequest, Unauthorized
from bridge.models import Event
from bridge.sources.base import Source, SourceSettings, WebhookRequest, decode_body
from bridge.sources.fields import id_text, occurred_at
from bridge.sources.signing import (
    SecretList,
    Tolerance,
    check_freshness,
    decode_signature,
    each_secret,
    hmac_digest,
    matches_any,
    parse_timestamp,
    require_header,
)

HASH_HEADER = "close-sig-hash"
TIMESTAMP_HEADER = "close-sig-timestamp"
KEY_BYTES = 32  # Close returns a signature_key of 64 hex digits
RETRY_WINDOW = 73 * 3600.0  # Close retries for 72 h; an hour more for clock skew


def signing_key(secret: str) -> bytes:
    """The HMAC key of a Close `signature_key`: its hex digits as bytes (32 of them)."""
    try:
        key = bytes.fromhex(secret.strip())
    except ValueError as exc:
        # The message names the expected shape only: the value is a secret.
        raise ValueError(
            f"a Close signature key is the {KEY_BYTES * 2} hex digits Close returned"
        ) from exc
    if len(key) < KEY_BYTES:
        raise ValueError(
            f"a Close signature key is the {KEY_BYTES * 2} hex digits Close returned "
            f"(this one has {len(key) * 2})"
        )
    return key


class CloseSettings(SourceSettings):
    """`{preset: close, secret: <signature_key hex> | [...], tolerance: 73h}`."""

    secret: Annotated[SecretList, each_secret(signing_key)]
    tolerance: Tolerance = RETRY_WINDOW


class CloseSource(Source):
    """A Close webhook subscription's endpoint (`preset: close`)."""

    preset: ClassVar[str] = "close"
    settings_model: ClassVar[type[SourceSettings]] = CloseSettings

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        super().__init__(key, settings, public_url=public_url)
        if not isinstance(settings, CloseSettings):
            raise TypeError("CloseSource needs CloseSettings")
        self._keys = tuple(signing_key(s.get_secret_value()) for s in settings.secret)
        self._tolerance = settings.tolerance

    def verify(self, request: WebhookRequest, now: float) -> None:
        timestamp_text = require_header(request, TIMESTAMP_HEADER)
        timestamp = parse_timestamp(timestamp_text, f"{TIMESTAMP_HEADER} header")
        given = decode_signature(require_header(request, HASH_HEADER), "hex")
        if given is None:
            raise Unauthorized(f"malformed {HASH_HEADER} header")
        message = timestamp_text.encode("ascii") + request.body
        expected = [hmac_digest(k, message) for k in self._keys]
        if not matches_any(expected, [given]):
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
        """`close-sig-timestamp: <now>` and `close-sig-hash` under the first key."""
        timestamp = str(int(now))
        signature = hmac_digest(self._keys[0], timestamp.encode("ascii") + body).hex()
        return {"Content-Type": content_type, TIMESTAMP_HEADER: timestamp, HASH_HEADER: signature}

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        payload = decode_body(request)
        if not isinstance(payload, dict) or not isinstance(payload.get("event"), dict):
            raise BadRequest("Close payload is not an object with an event")
        event = payload["event"]
        event_id = id_text(event.get("id"))
        if event_id is None:
            raise BadRequest("Close event without id")
        # The hash header's name has no word the generic filter knows; it is not kept.
        headers = {k: v for k, v in request.safe_headers().items() if k != HASH_HEADER}
        return [
            Event(
                source=self.key,
                event_id=event_id,
                occurred_at=occurred_at(event.get("date_created"), received_at),
                received_at=received_at,
                payload=payload,
                headers=headers,
            )
        ]
