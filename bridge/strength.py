"""How strong a configured secret must be: the empty, the placeholder, the bare prefix and
the short are refused at load, so a guessable secret can never verify a request.

An unedited `.env.example` must fail `check`, and a secret that is only its format's
prefix (`whsec_`) is as guessable as an empty one. Messages name what is wrong and
never quote the value.
"""

from __future__ import annotations

from typing import Final

from bridge.validation import is_placeholder

#: Characters a shared secret needs beyond its known prefix: 16 random characters are
#: ~95 bits, and every provider-issued secret we know is longer.
MIN_SECRET: Final = 16
#: Characters of an HTTP basic password we accept without `allow_weak_password: true`.
MIN_PASSWORD: Final = 12
#: Prefixes that mark a secret's format, not its secret part (Stripe and Standard
#: Webhooks, Paddle notification settings, Shopify app secrets).
KNOWN_PREFIXES: Final = ("whsec_", "pdl_ntfset_", "shpss_")


def guessable(text: str) -> str | None:
    """Why `text` cannot be a secret at all (empty, placeholder, a bare prefix), or None."""
    stripped = text.strip()
    if not stripped:
        return "is empty"
    if is_placeholder(stripped):
        return "is a placeholder (<…>): set the real value"
    for prefix in KNOWN_PREFIXES:
        if stripped == prefix:
            return f"is only the prefix {prefix}: paste the whole secret"
    return None


def too_short(text: str, minimum: int, *, prefix: str | None = None) -> str | None:
    """Why `text` is too short (counted after its known prefix), or None."""
    body = text.strip()
    used = None
    for known in (prefix, *KNOWN_PREFIXES):
        if known and body.startswith(known):
            body, used = body[len(known) :], known
            break
    if len(body) >= minimum:
        return None
    after = f" after {used}" if used else ""
    return f"is too short: {len(body)} characters{after}, at least {minimum} needed"


def check(text: str, *, minimum: int = MIN_SECRET, prefix: str | None = None) -> None:
    """Raise ValueError unless `text` is a usable secret of at least `minimum` characters
    (after its prefix) that starts with `prefix` when one is given."""
    problem = guessable(text)
    if problem is None and prefix and not text.strip().startswith(prefix):
        problem = f"must start with {prefix}"
    if problem is None:
        problem = too_short(text, minimum, prefix=prefix)
    if problem is not None:
        raise ValueError(problem)
