"""Standard Webhooks (Svix and others): `webhook-*` headers, symmetric `v1` signatures.

Follows the Standard Webhooks spec 1.0, "Verifying webhook authenticity": the content
signed is `"{webhook-id}.{webhook-timestamp}.{raw body}"`, HMAC-SHA256 keyed by the
base64-decoded part of the `whsec_...` secret; `webhook-signature` is a space-delimited
list of `v1,<base64>` (one per active secret during a rotation; `v1a` asymmetric
entries are skipped); `webhook-timestamp` is epoch seconds and must be within the
tolerance either way. Svix sends the same headers named `svix-*`, accepted too.
`webhook-id` stays the same across retries, so it is the dedupe id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Annotated, ClassVar

from bridge.errors import BadRequest, Unauthorized
from bridge.models import Event
from bridge.sources.base import Source, SourceSettings, WebhookRequest, decode_object
from bridge.sources.fields import occurred_at
from bridge.sources.signing import (
    DEFAULT_TOLERANCE,
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

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format marker, not a secret)
# The spec: symmetric secrets are "random, at least 24 bytes (192 bits)".
MIN_KEY_BYTES = 24


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix is optional)."""
    text = secret.strip().removeprefix(SECRET_PREFIX)
    # Like the reference libraries, accept base64 whose "=" padding was dropped.
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise ValueError("a Standard Webhooks secret is whsec_ followed by base64") from exc
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"a Standard Webhooks secret holds at least {MIN_KEY_BYTES} bytes "
            f"(this one holds {len(key)})"
        )
    return key


class StandardWebhooksSettings(SourceSettings):
    """`{preset: standard-webhooks, secret: whsec_<base64> | [...], tolerance: 300}`."""

    secret: Annotated[SecretList, each_secret(signing_key)]
    tolerance: Tolerance = DEFAULT_TOLERANCE


def header_prefix(request: WebhookRequest) -> str:
    """ "webhook" for spec headers, "svix" when the sender uses Svix's names."""
    if request.header("webhook-signature") is None and request.header("svix-signature"):
        return "svix"
    return "webhook"


def v1_signatures(header: str) -> list[bytes]:
    """The decoded `v1` signatures of a signature header; other versions are skipped."""
    found = []
    for entry in header.split():
        version, comma, value = entry.partition(",")
        if comma and version == "v1":
            decoded = decode_signature(value, "base64")
            if decoded is not None:
                found.append(decoded)
    return found


class StandardWebhooksSource(Source):
    """A Standard Webhooks endpoint (`preset: standard-webhooks`)."""

    preset: ClassVar[str] = "standard-webhooks"
    settings_model: ClassVar[type[SourceSettings]] = StandardWebhooksSettings

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        super().__init__(key, settings, public_url=public_url)
        if not isinstance(settings, StandardWebhooksSettings):
            raise TypeError("StandardWebhooksSource needs StandardWebhooksSettings")
        self._keys = tuple(signing_key(s.get_secret_value()) for s in settings.secret)
        self._tolerance = settings.tolerance

    def verify(self, request: WebhookRequest, now: float) -> None:
        prefix = header_prefix(request)
        msg_id = require_header(request, f"{prefix}-id")
        timestamp_text = require_header(request, f"{prefix}-timestamp")
        signature_header = require_header(request, f"{prefix}-signature")
        timestamp = parse_timestamp(timestamp_text, f"{prefix}-timestamp header")
        signatures = v1_signatures(signature_header)
        if not signatures:
            raise Unauthorized(f"no valid v1 signature in {prefix}-signature header")
        message = f"{msg_id}.{timestamp_text}.".encode() + request.body
        expected = [hmac_digest(k, message) for k in self._keys]
        if not matches_any(expected, signatures):
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
        """`webhook-id`, `-timestamp` and `-signature: v1,<base64>` under the first secret.

        The id is derived from the body, so re-sending the same payload is a redelivery
        of the same message (and deduplicated as one), while any other body is a new one.
        """
        msg_id = "msg_" + hashlib.sha256(body).hexdigest()[:32]
        timestamp = str(int(now))
        message = f"{msg_id}.{timestamp}.".encode() + body
        signature = base64.b64encode(hmac_digest(self._keys[0], message)).decode("ascii")
        return {
            "Content-Type": content_type,
            "webhook-id": msg_id,
            "webhook-timestamp": timestamp,
            "webhook-signature": f"v1,{signature}",
        }

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        msg_id = request.header(f"{header_prefix(request)}-id")
        if msg_id is None or not msg_id.strip():
            raise BadRequest("missing webhook-id header")
        payload = decode_object(request, "Standard Webhooks payload")
        return [
            Event(
                source=self.key,
                event_id=msg_id.strip(),
                # The payload's `timestamp` is when the event happened (ISO 8601, per the
                # spec); the header's is the attempt's, which changes on every retry.
                occurred_at=occurred_at(payload.get("timestamp"), received_at),
                received_at=received_at,
                payload=payload,
                headers=request.safe_headers(),
            )
        ]
