"""Any other sender: a source with `verify:` and no `preset:`, one event per request.

```yaml
custom:
  verify: {type: hmac, header: X-Signature, algorithm: sha256, encoding: hex,
           prefix: "sha256=", timestamp_header: X-Timestamp, tolerance: 5m,
           signed: "{timestamp}.{body}"}
  secret: ${CUSTOM_SECRET}          # or a list while rotating
  event_id: "{{ event.id }}"        # Jinja2 (sandboxed); default: SHA-256 of the body
  occurred_at: "{{ event.created_at }}"
```

Where credentials live: a shared `secret` (string or list) sits at the source level,
as in every preset, and is used by `hmac` (as the UTF-8 HMAC key) and by `token` (as the
expected value). `basic` carries its `username`/`password` inside `verify`. `none`
accepts anyone and is refused unless `allow_unsigned: true`.

What each `verify:` type checks is `generic_verify.py`'s part.

`sign` (for `voxys-bridge send`) returns headers only; a token carried in the query is
added by `signed_query`, which a sender applies to the query string before signing.

Templates see `event` (the decoded body) and `headers` (without credentials). With
`hmac`, `event_id` and `occurred_at` may not read `headers`: the signature covers the body
(and the timestamp header's value), never the other headers. With `basic`, `token` or
`none` nothing is signed; whoever holds the credential can send any body and headers.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlencode

import jinja2
from jinja2 import meta
from pydantic import SecretStr, ValidationInfo, field_validator

from bridge import strength
from bridge.errors import BadRequest, ConfigError
from bridge.models import Event
from bridge.rules.sandbox import BoundedSandbox
from bridge.sources import GENERIC_PRESET
from bridge.sources.base import Source, SourceSettings, WebhookRequest, decode_body
from bridge.sources.fields import body_sha256, epoch_seconds
from bridge.sources.generic_verify import (
    BasicVerify,
    HmacVerify,
    NoneVerify,
    SignedParts,
    TokenVerify,
    Verifier,
    VerifyConfig,
    hmac_verifier,
    signed_message,
    signed_parts,
    token_verifier,
)
from bridge.sources.signing import (
    SecretList,
    basic_authorization,
    check_basic_auth,
    hmac_digest,
    secret_bytes,
)


class GenericSettings(SourceSettings):
    """A source configured by `verify:` rather than a preset.

    A `secret` needs `strength.MIN_SECRET` characters unless `allow_weak_secret: true`
    says the sender issues shorter ones; it is never empty, a placeholder or a bare prefix.
    """

    verify: VerifyConfig
    # Before `secret`: its validator reads this flag.
    allow_weak_secret: bool = False
    secret: SecretList | None = None
    event_id: str | None = None
    occurred_at: str | None = None
    allow_unsigned: bool = False

    @field_validator("secret")
    @classmethod
    def _strong(
        cls, secrets: tuple[SecretStr, ...] | None, info: ValidationInfo
    ) -> tuple[SecretStr, ...] | None:
        for text in (s.get_secret_value() for s in secrets or ()):
            problem = strength.too_short(text, strength.MIN_SECRET)
            if problem is not None and not info.data.get("allow_weak_secret", False):
                raise ValueError(f"{problem} (or set allow_weak_secret: true)")
        return secrets


# The rules' sandbox class: immutable, `*` and `**` bounded (bridge/rules/sandbox.py). Its
# undefined stays Jinja's default, so a template reading past a missing field fails the
# request instead of rendering empty.
_env = BoundedSandbox(autoescape=False)


def _refuse_unsigned_identity(settings: GenericSettings) -> None:
    """An `hmac` signature covers the body (and the timestamp header's value), never the
    other headers: an id or a time read from them would let a captured request be
    replayed as a new event, or dated in the future. Without `event_id` the id is the
    body's SHA-256; without `occurred_at` the time is the time of receipt."""
    for key, template in (("event_id", settings.event_id), ("occurred_at", settings.occurred_at)):
        if template and "headers" in meta.find_undeclared_variables(_env.parse(template)):
            raise ConfigError(
                "reads headers, which an hmac signature does not cover; read the signed "
                f"body (event.…) or remove {key} to use the "
                + ("body's SHA-256" if key == "event_id" else "time of receipt"),
                key=key,
            )


def _compile(source: str, key: str) -> jinja2.Template:
    try:
        return _env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"template syntax error: {exc.message}", key=key) from exc


class GenericSource(Source):
    """A source verified by a `verify:` block (`hmac`, `basic`, `token` or `none`)."""

    preset: ClassVar[str] = GENERIC_PRESET
    settings_model: ClassVar[type[SourceSettings]] = GenericSettings

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        super().__init__(key, settings, public_url=public_url)
        if not isinstance(settings, GenericSettings):
            raise TypeError("GenericSource needs GenericSettings")
        self.config = settings
        self._signed_parts: SignedParts = []
        self._verify = self._build_verifier(settings)
        self._event_id = _compile(settings.event_id, "event_id") if settings.event_id else None
        self._occurred_at = (
            _compile(settings.occurred_at, "occurred_at") if settings.occurred_at else None
        )
        if isinstance(settings.verify, HmacVerify):
            _refuse_unsigned_identity(settings)
        # Headers that carry this source's credentials, never stored with an event.
        self._credential_headers = {
            h.lower() for h in (getattr(settings.verify, "header", None),) if isinstance(h, str)
        }

    @classmethod
    def parse_only(cls, key: str, entry: Mapping[str, Any], *, public_url: str) -> Source:
        """The templates that name and time an event, and which header holds credentials."""
        source = cls.__new__(cls)
        Source.__init__(source, key, SourceSettings(preset=cls.preset), public_url=public_url)
        event_id, when = entry.get("event_id"), entry.get("occurred_at")
        source._event_id = _compile(event_id, "event_id") if isinstance(event_id, str) else None
        source._occurred_at = _compile(when, "occurred_at") if isinstance(when, str) else None
        verify = entry.get("verify")
        header = verify.get("header") if isinstance(verify, Mapping) else None
        source._credential_headers = {header.lower()} if isinstance(header, str) else set()
        return source

    def _build_verifier(self, settings: GenericSettings) -> Verifier:
        verify = settings.verify
        needs_secret = isinstance(verify, HmacVerify | TokenVerify)
        if needs_secret and settings.secret is None:
            raise ConfigError(f"verify type {verify.type} needs a secret", key="secret")
        if not needs_secret and settings.secret is not None:
            raise ConfigError(f"verify type {verify.type} does not use a secret", key="secret")
        keys = secret_bytes(settings.secret or ())
        if isinstance(verify, HmacVerify):
            self._signed_parts = signed_parts(verify)
            return hmac_verifier(verify, keys, self._signed_parts, self._url)
        if isinstance(verify, TokenVerify):
            return token_verifier(verify, keys)
        if isinstance(verify, BasicVerify):
            return lambda request, now: check_basic_auth(request, verify)
        if not settings.allow_unsigned:
            raise ConfigError(
                "verify type none accepts requests from anyone; "
                "set allow_unsigned: true to allow it",
                key="verify.type",
            )
        return lambda request, now: None

    def _url(self, path: str, query_string: str) -> str:
        query = f"?{query_string}" if query_string else ""
        return f"{self.public_url}{path}{query}"

    def sign(
        self,
        body: bytes,
        *,
        now: float,
        path: str,
        query_string: str = "",
        content_type: str = "application/json",
    ) -> dict[str, str]:
        """Headers per `verify:`; a query token is not among them (see `signed_query`)."""
        verify = self.config.verify
        headers = {"Content-Type": content_type}
        if isinstance(verify, HmacVerify):
            timestamp = ""
            if verify.timestamp_header:
                timestamp = str(int(now))
                headers[verify.timestamp_header] = timestamp
            message = signed_message(
                self._signed_parts,
                body=body,
                timestamp=timestamp,
                method="POST",
                url=self._url(path, query_string),
            )
            digest = hmac_digest(self._first_secret().encode("utf-8"), message, verify.algorithm)
            text = digest.hex() if verify.encoding == "hex" else base64.b64encode(digest).decode()
            headers[verify.header] = verify.prefix + text
        elif isinstance(verify, BasicVerify):
            headers["Authorization"] = basic_authorization(verify.username, verify.password)
        elif isinstance(verify, TokenVerify) and verify.header is not None:
            headers[verify.header] = verify.prefix + self._first_secret()
        return headers

    def signed_query(self, query_string: str = "") -> str:
        """The query a sender uses: `query_string`, plus the token when `verify.query` holds it."""
        verify = self.config.verify
        if not isinstance(verify, TokenVerify) or verify.query is None:
            return query_string
        token = urlencode({verify.query: self._first_secret()})
        return f"{query_string}&{token}" if query_string else token

    def _first_secret(self) -> str:
        assert self.config.secret is not None  # hmac and token need one, checked at build
        return self.config.secret[0].get_secret_value()

    def startup_warnings(self) -> list[str]:
        if isinstance(self.config.verify, NoneVerify):
            return [f"source {self.key!r} accepts unsigned requests from anyone"]
        return []

    def verify(self, request: WebhookRequest, now: float) -> None:
        self._verify(request, now)

    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        payload = decode_body(request)
        headers = {
            k: v for k, v in request.safe_headers().items() if k not in self._credential_headers
        }
        context = {"event": payload, "headers": headers}
        if self._event_id is None:
            event_id = body_sha256(request.body)
        else:
            event_id = _render(self._event_id, context, "event_id")
            if not event_id:
                raise BadRequest("event_id template rendered empty")
        when = received_at
        if self._occurred_at is not None:
            seconds = epoch_seconds(_render(self._occurred_at, context, "occurred_at"))
            when = received_at if seconds is None else seconds
        return [
            Event(
                source=self.key,
                event_id=event_id,
                occurred_at=when,
                received_at=received_at,
                payload=payload,
                headers=headers,
            )
        ]


def _render(template: jinja2.Template, context: dict[str, Any], key: str) -> str:
    """A template's text; a template that fails on this event makes it a bad request."""
    try:
        return template.render(context).strip()
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
        raise BadRequest(f"{key} template failed on this event") from exc
