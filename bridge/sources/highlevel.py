"""HighLevel (GoHighLevel) webhooks: an Ed25519 `X-GHL-Signature` over the raw body.

Follows HighLevel's webhook authentication guide (marketplace.gohighlevel.com, "Webhook
Integration Guide"): HighLevel signs the exact body bytes with its private Ed25519 key
and sends the base64 signature in `X-GHL-Signature`; receivers verify it with the public
key HighLevel publishes (configured here as PEM). The body carries `webhookId` and an ISO
8601 `timestamp`, which are signed with it: the id deduplicates redeliveries, and the
`tolerance` (5 minutes by default, as HighLevel recommends) refuses a body whose
timestamp is older, or missing, as a replay. `tolerance: null` turns that check off.

HighLevel's private key is not ours, so `sign` works only when a `private_key` is
configured, which is for tests and the demo with a key pair of their own.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
    load_pem_private_key,
    load_pem_public_key,
)
from pydantic import AfterValidator, BeforeValidator, SecretStr, model_validator

from bridge.errors import BadRequest, Unauthorized
from bridge.models import Event
from bridge.sources.base import Source, SourceSettings, WebhookRequest, decode_body, decode_object
from bridge.sources.fields import body_sha256, epoch_seconds, id_text, occurred_at
from bridge.sources.signing import (
    DEFAULT_TOLERANCE,
    Tolerance,
    check_freshness,
    decode_signature,
    require_header,
)

HEADER = "X-GHL-Signature"


def _pem_text(value: Any) -> Any:
    # A PEM passed through an environment variable often has its newlines written as "\n".
    if isinstance(value, str):
        return value.strip().replace("\\n", "\n")
    return value


def _blank_is_none(value: Any) -> Any:
    if isinstance(value, str):
        value = _pem_text(value)
        return value or None
    return value


def load_public_key(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM, or from the base64 DER between its armour lines."""
    try:
        if "-----BEGIN" in text:
            key = load_pem_public_key(text.encode("ascii"))
        else:
            key = load_der_public_key(base64.b64decode("".join(text.split()), validate=True))
    except (ValueError, TypeError, UnicodeEncodeError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise ValueError("not a PEM public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key (HighLevel signs X-GHL-Signature with Ed25519)")
    return key


def load_private_key(text: str) -> Ed25519PrivateKey:
    """An unencrypted Ed25519 private key from PEM (PKCS#8)."""
    try:
        key = load_pem_private_key(text.encode("ascii"), password=None)
    except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise ValueError("not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("not an Ed25519 private key")
    return key


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _valid_public(text: str) -> str:
    if not text:
        raise ValueError("is empty: paste the Ed25519 public key HighLevel publishes (PEM)")
    load_public_key(text)
    return text


def _valid_private(secret: SecretStr | None) -> SecretStr | None:
    if secret is not None:
        load_private_key(secret.get_secret_value())
    return secret


class HighLevelSettings(SourceSettings):
    """`{preset: highlevel, public_key: <PEM>, tolerance: 5m}`; `private_key` for tests only.

    `tolerance: null` accepts bodies of any age (and without a timestamp).
    """

    public_key: Annotated[str, BeforeValidator(_pem_text), AfterValidator(_valid_public)]
    private_key: Annotated[
        SecretStr | None, BeforeValidator(_blank_is_none), AfterValidator(_valid_private)
    ] = None
    tolerance: Tolerance | None = DEFAULT_TOLERANCE

    @model_validator(mode="after")
    def _keys_are_a_pair(self) -> HighLevelSettings:
        if self.private_key is not None:
            private = load_private_key(self.private_key.get_secret_value())
            if _raw(private.public_key()) != _raw(load_public_key(self.public_key)):
                raise ValueError("private_key does not belong to public_key")
        return self


def signed_timestamp(payload: Any) -> float | None:
    """The body's `timestamp` in POSIX seconds; None when absent or unreadable."""
    return epoch_seconds(payload.get("timestamp")) if isinstance(payload, dict) else None


class HighLevelSource(Source):
    """A HighLevel webhook endpoint (`preset: highlevel`)."""

    preset: ClassVar[str] = "highlevel"
    settings_model: ClassVar[type[SourceSettings]] = HighLevelSettings

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        super().__init__(key, settings, public_url=public_url)
        if not isinstance(settings, HighLevelSettings):
            raise TypeError("HighLevelSource needs HighLevelSettings")
        self._public = load_public_key(settings.public_key)
        secret = settings.private_key
        self._private = load_private_key(secret.get_secret_value()) if secret else None
        self._tolerance = settings.tolerance

    def startup_warnings(self) -> list[str]:
        if self._private is not None:
            return [
                f"source {self.key!r}: private_key is set; it is for tests and the demo, "
                "HighLevel never hands out its signing key"
            ]
        return []

    def verify(self, request: WebhookRequest, now: float) -> None:
        signature = decode_signature(require_header(request, HEADER), "base64")
        if signature is None:
            raise Unauthorized(f"malformed {HEADER} header")
        try:
            self._public.verify(signature, request.body)
        except InvalidSignature as exc:
            raise Unauthorized("signature mismatch") from exc
        if self._tolerance is not None:
            # The timestamp is inside the body the signature covers, so it can be trusted.
            try:
                timestamp = signed_timestamp(decode_body(request))
            except BadRequest:
                timestamp = None
            if timestamp is None:
                raise Unauthorized("no timestamp in the signed body")
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
        """`X-GHL-Signature`: base64 Ed25519 of the body under the configured `private_key`."""
        if self._private is None:
            raise NotImplementedError(
                "preset highlevel signs only with a private_key configured: HighLevel keeps "
                "its own signing key, so only a test key pair can sign"
            )
        signature = base64.b64encode(self._private.sign(body)).decode("ascii")
        return {"Content-Type": content_type, HEADER: signature}

    def stamp(self, body: bytes, now: float) -> bytes:
        """A JSON object body with its `timestamp` set to `now` (ISO 8601), as HighLevel
        stamps each delivery; any other body as it is."""
        try:
            payload = json.loads(body)
        except ValueError:
            return body
        if not isinstance(payload, dict) or "timestamp" not in payload:
            return body
        when = datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds")
        payload["timestamp"] = when.replace("+00:00", "Z")
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        payload = decode_object(request, "HighLevel event")
        # Workflow webhooks may lack a webhookId; the body hash still deduplicates retries.
        event_id = id_text(payload.get("webhookId")) or body_sha256(request.body)
        return [
            Event(
                source=self.key,
                event_id=event_id,
                occurred_at=occurred_at(payload.get("timestamp"), received_at),
                received_at=received_at,
                payload=payload,
                headers=request.safe_headers(),
            )
        ]
