"""HubSpot webhooks: v3 request signatures and batches of up to 100 events.

Follows HubSpot's "Validating requests" guide, v3 signature: `X-HubSpot-Signature-v3`
is the base64 HMAC-SHA256, keyed by the app's client secret, of
`method + uri + raw body + X-HubSpot-Request-Timestamp`; the timestamp is epoch
milliseconds and older than 5 minutes is refused (we refuse the future too). HubSpot
signs the URL it called, so the uri is `server.public_url` + path + query rather than
what a proxy forwarded, with the guide's listed percent-escapes decoded.
"""

from __future__ import annotations

import base64
import re
from typing import Any, ClassVar

from bridge.errors import BadRequest, Unauthorized
from bridge.models import Event
from bridge.sources.base import Source, SourceSettings, WebhookRequest, decode_body
from bridge.sources.fields import id_text, occurred_at
from bridge.sources.signing import (
    DEFAULT_TOLERANCE,
    Secrets,
    Tolerance,
    check_freshness,
    decode_signature,
    hmac_digest,
    matches_any,
    parse_timestamp,
    require_header,
    secret_bytes,
)

SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
MAX_EVENTS = 100  # HubSpot sends at most 100 events per request

# The escapes HubSpot's guide says to decode in the request URI before signing.
_DECODED = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}
# One pass, so "%253A" stays as sent; hex digits are case-insensitive (RFC 3986 2.1).
_ESCAPE = re.compile("|".join(_DECODED), re.IGNORECASE)

# The fields whose combination identifies an event: `eventId` alone is not unique.
_ID_FIELDS = ("portalId", "subscriptionId", "eventId", "objectId", "occurredAt")


class HubSpotSettings(SourceSettings):
    """`{preset: hubspot, secret: <client secret> | [...], tolerance: 300}`."""

    secret: Secrets
    tolerance: Tolerance = DEFAULT_TOLERANCE


def signed_uri(public_url: str, path: str, query_string: str) -> str:
    """The URI HubSpot signed: public URL, path and query, with the listed escapes decoded."""
    uri = public_url.rstrip("/") + path + (f"?{query_string}" if query_string else "")
    return _ESCAPE.sub(lambda m: _DECODED[m.group(0).upper()], uri)


def dedupe_id(event: dict[str, Any], index: int) -> str:
    """portalId:subscriptionId:eventId:objectId:occurredAt, the event's unique key."""
    parts = []
    for name in _ID_FIELDS:
        value = event.get(name)
        text = id_text(value)
        if text is None and value is not None:
            raise BadRequest(f"HubSpot event {index} has a malformed {name}")
        if text is None and name == "eventId":
            raise BadRequest(f"HubSpot event {index} has no eventId")
        parts.append(text or "")
    return ":".join(parts)


class HubSpotSource(Source):
    """A HubSpot app's webhook endpoint (`preset: hubspot`)."""

    preset: ClassVar[str] = "hubspot"
    settings_model: ClassVar[type[SourceSettings]] = HubSpotSettings

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        super().__init__(key, settings, public_url=public_url)
        if not isinstance(settings, HubSpotSettings):
            raise TypeError("HubSpotSource needs HubSpotSettings")
        self._keys = secret_bytes(settings.secret)
        self._tolerance = settings.tolerance

    def verify(self, request: WebhookRequest, now: float) -> None:
        signature = decode_signature(require_header(request, SIGNATURE_HEADER), "base64")
        timestamp_text = require_header(request, TIMESTAMP_HEADER)
        timestamp_ms = parse_timestamp(timestamp_text, f"{TIMESTAMP_HEADER} header")
        if signature is None:
            raise Unauthorized(f"malformed {SIGNATURE_HEADER} header")
        uri = signed_uri(self.public_url, request.path, request.query_string)
        message = (
            f"{request.method.upper()}{uri}".encode()
            + request.body
            + timestamp_text.encode("ascii")
        )
        expected = [hmac_digest(k, message) for k in self._keys]
        if not matches_any(expected, [signature]):
            raise Unauthorized("signature mismatch")
        check_freshness(timestamp_ms / 1000.0, now, self._tolerance)

    def sign(
        self,
        body: bytes,
        *,
        now: float,
        path: str,
        query_string: str = "",
        content_type: str = "application/json",
    ) -> dict[str, str]:
        """v3 headers for a POST to `server.public_url` + path, signed with the first secret."""
        timestamp = str(int(now * 1000))
        uri = signed_uri(self.public_url, path, query_string)
        message = f"POST{uri}".encode() + body + timestamp.encode("ascii")
        signature = base64.b64encode(hmac_digest(self._keys[0], message)).decode("ascii")
        return {
            "Content-Type": content_type,
            SIGNATURE_HEADER: signature,
            TIMESTAMP_HEADER: timestamp,
        }

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        payload = decode_body(request)
        if not isinstance(payload, list):
            raise BadRequest("HubSpot body is not a JSON array of events")
        if len(payload) > MAX_EVENTS:
            raise BadRequest(f"more than {MAX_EVENTS} events in one HubSpot request")
        headers = request.safe_headers()
        events = []
        for index, item in enumerate(payload):
            if not isinstance(item, dict):
                raise BadRequest(f"HubSpot event {index} is not a JSON object")
            events.append(
                Event(
                    source=self.key,
                    event_id=dedupe_id(item, index),
                    occurred_at=occurred_at(item.get("occurredAt"), received_at, unit="ms"),
                    received_at=received_at,
                    payload=item,
                    headers=headers,
                )
            )
        return events
