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

- `hmac`: the header holds `prefix` + the hex or base64 HMAC (sha1/sha256/sha512) of the
  `signed` template, whose fields are `{body}` (raw bytes), `{timestamp}` (the
  `timestamp_header` value as sent), `{method}` and `{url}` (public URL + path + query).
  Default: `{timestamp}.{body}` with a timestamp header, else `{body}`. Timestamps
  are epoch seconds, or milliseconds above 1e11, and must be within `tolerance`.
- `token`: `header` (after an optional `prefix` such as "Bearer ") or `query` parameter
  equals the secret.

`sign` (for `voxys-bridge send`) returns headers only; a token carried in the query is
added by `signed_query`, which a sender applies to the query string before signing.

Templates see `event` (the decoded body) and `headers` (without credentials). With
`hmac`, `event_id` and `occurred_at` may not read `headers`: the signature covers the body
(and the timestamp header's value), never the other headers. With `basic`, `token` or
`none` nothing is signed; whoever holds the credential can send any body and headers.
"""

from __future__ import annotations

import base64
import string
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar, Literal
from urllib.parse import parse_qs, urlencode

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge import strength
from bridge.errors import BadRequest, ConfigError, Unauthorized
from bridge.models import Event
from bridge.sources import GENERIC_PRESET
from bridge.sources.base import Source, SourceSettings, WebhookRequest, decode_body
from bridge.sources.fields import body_sha256, epoch_seconds
from bridge.sources.signing import (
    DEFAULT_TOLERANCE,
    Algorithm,
    BasicAuth,
    SecretList,
    Tolerance,
    basic_authorization,
    check_basic_auth,
    check_freshness,
    decode_signature,
    hmac_digest,
    matches_any,
    require_header,
    secret_bytes,
)

_SIGNED_FIELDS = frozenset({"body", "timestamp", "method", "url"})


class _Verify(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HmacVerify(_Verify):
    type: Literal["hmac"]
    header: str = Field(min_length=1)
    algorithm: Algorithm = "sha256"
    encoding: Literal["hex", "base64"] = "hex"
    prefix: str = ""
    timestamp_header: str | None = None
    tolerance: Tolerance = DEFAULT_TOLERANCE
    signed: str | None = None


class BasicVerify(_Verify, BasicAuth):
    type: Literal["basic"]


class TokenVerify(_Verify):
    type: Literal["token"]
    header: str | None = None
    query: str | None = None
    prefix: str = ""

    @model_validator(mode="after")
    def _one_place(self) -> TokenVerify:
        if (self.header is None) == (self.query is None):
            raise ValueError("give exactly one of header or query")
        return self


class NoneVerify(_Verify):
    type: Literal["none"]


VerifyConfig = Annotated[
    HmacVerify | BasicVerify | TokenVerify | NoneVerify, Field(discriminator="type")
]


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


def compile_signed(template: str) -> list[str | tuple[str]]:
    """The `signed` template as literal strings and (field,) tuples; ValueError if invalid."""
    parts: list[str | tuple[str]] = []
    for literal, field, spec, conversion in string.Formatter().parse(template):
        if literal:
            parts.append(literal)
        if field is None:
            continue
        if field not in _SIGNED_FIELDS or spec or conversion:
            known = ", ".join(f"{{{f}}}" for f in sorted(_SIGNED_FIELDS))
            raise ValueError(f"unknown field {{{field}}} (known: {known})")
        parts.append((field,))
    return parts


_env = SandboxedEnvironment(autoescape=False)


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
        self._signed_parts: list[str | tuple[str]] = []
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

    def _build_verifier(self, settings: GenericSettings) -> Callable[[WebhookRequest, float], None]:
        verify = settings.verify
        needs_secret = isinstance(verify, HmacVerify | TokenVerify)
        if needs_secret and settings.secret is None:
            raise ConfigError(f"verify type {verify.type} needs a secret", key="secret")
        if not needs_secret and settings.secret is not None:
            raise ConfigError(f"verify type {verify.type} does not use a secret", key="secret")
        keys = secret_bytes(settings.secret or ())
        if isinstance(verify, HmacVerify):
            return self._hmac_verifier(verify, keys)
        if isinstance(verify, TokenVerify):
            return _token_verifier(verify, keys)
        if isinstance(verify, BasicVerify):
            return lambda request, now: check_basic_auth(request, verify)
        if not settings.allow_unsigned:
            raise ConfigError(
                "verify type none accepts requests from anyone; "
                "set allow_unsigned: true to allow it",
                key="verify.type",
            )
        return lambda request, now: None

    def _hmac_verifier(
        self, verify: HmacVerify, keys: tuple[bytes, ...]
    ) -> Callable[[WebhookRequest, float], None]:
        default = "{timestamp}.{body}" if verify.timestamp_header else "{body}"
        try:
            parts = compile_signed(verify.signed if verify.signed is not None else default)
        except ValueError as exc:
            raise ConfigError(str(exc), key="verify.signed") from exc
        if ("timestamp",) in parts and not verify.timestamp_header:
            raise ConfigError("{timestamp} needs verify.timestamp_header", key="verify.signed")
        self._signed_parts = parts

        def check(request: WebhookRequest, now: float) -> None:
            header = require_header(request, verify.header)
            if not header.startswith(verify.prefix):
                raise Unauthorized(f"malformed {verify.header} header")
            signature = decode_signature(header[len(verify.prefix) :], verify.encoding)
            if signature is None:
                raise Unauthorized(f"malformed {verify.header} header")
            timestamp, seconds = "", None
            if verify.timestamp_header:
                timestamp = require_header(request, verify.timestamp_header)
                seconds = epoch_seconds(timestamp, "auto")
                if seconds is None:
                    raise Unauthorized(f"malformed {verify.timestamp_header} header")
            message = _signed_message(
                parts,
                body=request.body,
                timestamp=timestamp,
                method=request.method.upper(),
                url=self._url(request.path, request.query_string),
            )
            expected = [hmac_digest(k, message, verify.algorithm) for k in keys]
            if not matches_any(expected, [signature]):
                raise Unauthorized("signature mismatch")
            if seconds is not None:
                check_freshness(seconds, now, verify.tolerance)

        return check

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
            message = _signed_message(
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


def _signed_message(
    parts: list[str | tuple[str]], *, body: bytes, timestamp: str, method: str, url: str
) -> bytes:
    """The bytes an `hmac` signature covers: the `signed` template filled in."""
    values = {
        "body": body,
        "timestamp": timestamp.encode("utf-8"),
        "method": method.encode("utf-8"),
        "url": url.encode("utf-8"),
    }
    return b"".join(values[p[0]] if isinstance(p, tuple) else p.encode("utf-8") for p in parts)


def _token_verifier(
    verify: TokenVerify, keys: tuple[bytes, ...]
) -> Callable[[WebhookRequest, float], None]:
    def check(request: WebhookRequest, now: float) -> None:
        if verify.header is not None:
            value = require_header(request, verify.header)
            if not value.startswith(verify.prefix):
                raise Unauthorized(f"malformed {verify.header} header")
            given = value[len(verify.prefix) :].strip()
        else:
            assert verify.query is not None  # one of the two, by TokenVerify's validator
            found = parse_qs(request.query_string, keep_blank_values=True).get(verify.query)
            if not found:
                raise Unauthorized(f"missing {verify.query} query parameter")
            given = found[0]
        if not matches_any(keys, [given.encode("utf-8")]):
            raise Unauthorized("invalid token")

    return check


def _render(template: jinja2.Template, context: dict[str, Any], key: str) -> str:
    """A template's text; a template that fails on this event makes it a bad request."""
    try:
        return template.render(context).strip()
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
        raise BadRequest(f"{key} template failed on this event") from exc
