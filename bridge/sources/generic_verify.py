"""The `verify:` language of a generic source: how a request proves who sent it.

- `hmac`: the header holds `prefix` + the hex or base64 HMAC (sha1/sha256/sha512) of the
  `signed` template, whose fields are `{body}` (raw bytes), `{timestamp}` (the
  `timestamp_header` value as sent), `{method}` and `{url}` (public URL + path + query).
  Default: `{timestamp}.{body}` with a timestamp header, else `{body}`. Timestamps
  are epoch seconds, or milliseconds above 1e11, and must be within `tolerance`.
- `token`: `header` (after an optional `prefix` such as "Bearer ") or `query` parameter
  equals the secret.
- `basic`: `username`/`password` inside `verify`.
- `none`: anyone (the source refuses it unless `allow_unsigned: true`).

`generic.py` holds the source itself: its settings, secrets and event templates.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Annotated, Literal
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.errors import ConfigError, Unauthorized
from bridge.sources.base import WebhookRequest
from bridge.sources.fields import epoch_seconds
from bridge.sources.signing import (
    DEFAULT_TOLERANCE,
    Algorithm,
    BasicAuth,
    Tolerance,
    check_freshness,
    decode_signature,
    hmac_digest,
    matches_any,
    require_header,
)

_SIGNED_FIELDS = frozenset({"body", "timestamp", "method", "url"})

SignedParts = list[str | tuple[str]]  # literal text and (field,) placeholders
Verifier = Callable[[WebhookRequest, float], None]  # raises Unauthorized, else accepts


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


def compile_signed(template: str) -> SignedParts:
    """The `signed` template as literal strings and (field,) tuples; ValueError if invalid."""
    parts: SignedParts = []
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


def signed_parts(verify: HmacVerify) -> SignedParts:
    """`verify.signed` (or its default) compiled; a ConfigError naming verify.signed."""
    default = "{timestamp}.{body}" if verify.timestamp_header else "{body}"
    try:
        parts = compile_signed(verify.signed if verify.signed is not None else default)
    except ValueError as exc:
        raise ConfigError(str(exc), key="verify.signed") from exc
    if ("timestamp",) in parts and not verify.timestamp_header:
        raise ConfigError("{timestamp} needs verify.timestamp_header", key="verify.signed")
    return parts


def hmac_verifier(
    verify: HmacVerify,
    keys: tuple[bytes, ...],
    parts: SignedParts,
    url: Callable[[str, str], str],
) -> Verifier:
    """Checks the signature over `parts`; `url(path, query)` is the public URL signed."""

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
        message = signed_message(
            parts,
            body=request.body,
            timestamp=timestamp,
            method=request.method.upper(),
            url=url(request.path, request.query_string),
        )
        expected = [hmac_digest(k, message, verify.algorithm) for k in keys]
        if not matches_any(expected, [signature]):
            raise Unauthorized("signature mismatch")
        if seconds is not None:
            check_freshness(seconds, now, verify.tolerance)

    return check


def token_verifier(verify: TokenVerify, keys: tuple[bytes, ...]) -> Verifier:
    """Checks the token in its header (after `prefix`) or query parameter."""

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


def signed_message(
    parts: SignedParts, *, body: bytes, timestamp: str, method: str, url: str
) -> bytes:
    """The bytes an `hmac` signature covers: the `signed` template filled in."""
    values = {
        "body": body,
        "timestamp": timestamp.encode("utf-8"),
        "method": method.encode("utf-8"),
        "url": url.encode("utf-8"),
    }
    return b"".join(values[p[0]] if isinstance(p, tuple) else p.encode("utf-8") for p in parts)
