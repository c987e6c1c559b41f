"""Shared pieces of webhook verification: secrets, constant-time checks, timestamps, basic auth.

Every failure raises `Unauthorized` with a short reason that never contains a secret,
a signature or a credential.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import math
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
)

from bridge import strength
from bridge.config import parse_duration
from bridge.errors import Unauthorized
from bridge.sources.base import WebhookRequest

Algorithm = Literal["sha1", "sha256", "sha512"]

# Timestamps are at most this many digits: enough for microseconds until year 33658,
# and small enough that int() and float arithmetic on them cannot blow up.
_MAX_TIMESTAMP_DIGITS = 17


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str | SecretStr) else value


def _each(secrets: tuple[SecretStr, ...], problem: Callable[[str], str | None]) -> None:
    """Raise ValueError naming which secret of a rotation list has `problem`."""
    for index, secret in enumerate(secrets, 1):
        found = problem(secret.get_secret_value())
        if found is not None:
            which = f"secret {index} of {len(secrets)} " if len(secrets) > 1 else ""
            raise ValueError(which + found)


def _usable(secrets: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
    if not secrets:
        raise ValueError("give at least one secret")
    _each(secrets, strength.guessable)
    return secrets


def strong(*, minimum: int = strength.MIN_SECRET, prefix: str | None = None) -> AfterValidator:
    """A settings validator: every secret has `minimum` characters after its prefix, and
    starts with `prefix` when the provider's format has one."""

    def check(secrets: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        def problem(text: str) -> str | None:
            if prefix and not text.strip().startswith(prefix):
                return f"must start with {prefix}"
            return strength.too_short(text, minimum, prefix=prefix)

        _each(secrets, problem)
        return secrets

    return AfterValidator(check)


#: `secret:` in YAML: one string, or a list of strings while a secret is being rotated
#: (a request signed with any of them is accepted). None may be empty, a placeholder or
#: a bare prefix; `Secrets` also wants the usual minimum length.
SecretList = Annotated[
    tuple[SecretStr, ...], BeforeValidator(_one_or_many), AfterValidator(_usable)
]
Secrets = Annotated[SecretList, strong()]

#: How far a signed timestamp may be from now, either way: seconds or "5m".
Tolerance = Annotated[float, BeforeValidator(parse_duration), Field(gt=0)]

DEFAULT_TOLERANCE = 300.0


class BasicAuth(BaseModel):
    """HTTP basic credentials a sender must present (RFC 7617).

    The password needs `strength.MIN_PASSWORD` characters unless `allow_weak_password`
    says the sender cannot do better; it is never empty.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str = Field(min_length=1)
    # Before `password`: its validator reads this flag.
    allow_weak_password: bool = False
    password: SecretStr

    @field_validator("password")
    @classmethod
    def _strong_password(cls, password: SecretStr, info: ValidationInfo) -> SecretStr:
        text = password.get_secret_value()
        problem = strength.guessable(text)
        if problem is None and not info.data.get("allow_weak_password", False):
            problem = strength.too_short(text, strength.MIN_PASSWORD)
            if problem is not None:
                problem += " (or set allow_weak_password: true)"
        if problem is not None:
            raise ValueError(problem)
        return password


def secret_bytes(secrets: Iterable[SecretStr]) -> tuple[bytes, ...]:
    """The UTF-8 bytes of each secret, for use as HMAC keys or token values."""
    return tuple(s.get_secret_value().encode("utf-8") for s in secrets)


def hmac_digest(key: bytes, message: bytes, algorithm: Algorithm = "sha256") -> bytes:
    """The raw HMAC of `message` under `key`."""
    return hmac.new(key, message, getattr(hashlib, algorithm)).digest()


def matches_any(expected: Iterable[bytes], given: Iterable[bytes]) -> bool:
    """True when any given value equals any expected one, compared in constant time.

    Every pair is compared, so the time taken does not reveal which one matched.
    """
    given = list(given)
    found = False
    for want in expected:
        for got in given:
            found |= hmac.compare_digest(want, got)
    return found


def require_header(request: WebhookRequest, name: str) -> str:
    """The header's value; `Unauthorized("missing <name> header")` when absent or blank."""
    value = request.header(name)
    if value is None or not value.strip():
        raise Unauthorized(f"missing {name} header")
    return value.strip()


def parse_timestamp(text: str, what: str) -> int:
    """An integer timestamp as sent in a header; `Unauthorized("malformed <what>")` otherwise."""
    text = text.strip()
    if not text.isascii() or not text.isdigit() or len(text) > _MAX_TIMESTAMP_DIGITS:
        raise Unauthorized(f"malformed {what}")
    return int(text)


def check_freshness(timestamp: float, now: float, tolerance: float) -> None:
    """Refuse a signed timestamp further than `tolerance` seconds from `now`, past or future."""
    if not math.isfinite(timestamp) or abs(now - timestamp) > tolerance:
        raise Unauthorized("timestamp outside tolerance")


def decode_signature(text: str, encoding: Literal["hex", "base64"]) -> bytes | None:
    """A signature's raw bytes from its hex or base64 text; None when it is not valid."""
    try:
        if encoding == "hex":
            return bytes.fromhex(text.strip())
        return base64.b64decode(text.strip(), validate=True)
    except (ValueError, binascii.Error):
        return None


def basic_authorization(username: str, password: SecretStr) -> str:
    """The `Authorization: Basic` value a sender with these credentials sends (RFC 7617)."""
    pair = f"{username}:{password.get_secret_value()}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def check_basic_auth(request: WebhookRequest, credentials: BasicAuth) -> None:
    """Refuse a request whose `Authorization: Basic` credentials differ (RFC 7617)."""
    header = require_header(request, "Authorization")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        raise Unauthorized("Authorization header is not Basic")
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise Unauthorized("malformed Authorization header") from exc
    username, colon, password = decoded.partition(b":")
    if not colon:
        raise Unauthorized("malformed Authorization header")
    # Both halves are always compared, so timing does not tell which one was wrong.
    user_ok = hmac.compare_digest(username, credentials.username.encode("utf-8"))
    pass_ok = hmac.compare_digest(password, credentials.password.get_secret_value().encode("utf-8"))
    if not (user_ok & pass_ok):
        raise Unauthorized("invalid credentials")


def parse_keyed_header(
    header: str, *, name: str, separator: str, timestamp_key: str, signature_key: str
) -> tuple[str, list[str]]:
    """`t=…,v1=…,v1=…` style headers (Stripe, Paddle): the first timestamp's text and every
    signature under `signature_key`; other keys are ignored. Refuses a header without a
    timestamp, without a signature, or whose timestamp is not a number."""
    timestamp: str | None = None
    signatures: list[str] = []
    for item in header.split(separator):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == timestamp_key and timestamp is None:
            timestamp = value.strip()
        elif key == signature_key:
            signatures.append(value.strip())
    if timestamp is None:
        raise Unauthorized(f"no timestamp in {name} header")
    if not signatures:
        raise Unauthorized(f"no {signature_key} signature in {name} header")
    parse_timestamp(timestamp, f"{name} timestamp")
    return timestamp, signatures


def each_secret(decode: Callable[[str], object]) -> AfterValidator:
    """A settings validator: every configured secret must pass `decode` (hex, base64 …),
    so a malformed one is a config error at load, not a 401 for every request."""

    def check(secrets: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for secret in secrets:
            decode(secret.get_secret_value())
        return secrets

    return AfterValidator(check)
