"""Console sessions: a signed cookie, CSRF tokens bound to it, and sign-in throttling. Pure.

Key. The signing key is derived from the admin token (HMAC-SHA256 of a fixed label,
keyed by the token), not drawn at random per process, because:
- a reload that changes `admin.token` changes the key, so every session signed with the
  old one stops verifying at its next request, with nothing to remember or clear;
- the workers of `server.workers: N` and the replicas behind one load balancer hold the
  same token, so a session works whichever of them answers (a random per-process key
  would sign the operator out whenever the kernel or the balancer picked another one);
- a restart keeps the on-call operator signed in.
Nothing new is stored: whoever can read the token can already do all the console does.
The cost: sign-out cannot reach into other processes, so a copied cookie stays valid
until it expires (12 h) or the token changes; the cookie is HttpOnly, SameSite=Strict
and Secure over https to keep it from being copied.

Cookie value: `<session id>.<issued at>.<mac>`, all URL-safe. The session id is random
(128 bits) and is what CSRF tokens and sign-out refer to; the MAC covers id and time.
Expiry is absolute: `issued at + 12 h`, whatever the activity.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Final

SESSION_TTL_S: Final = 12 * 3600.0
CLOCK_SKEW_S: Final = 60.0  # a cookie issued this far in the future still counts (workers)
_KEY_LABEL: Final = b"voxys-bridge console session key v1"
_CSRF_LABEL: Final = b"csrf:"
_SIGN_IN_LABEL: Final = b"sign-in:"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def derive_key(admin_token: str) -> bytes:
    """The console's signing key for one admin token (see the module docstring)."""
    return hmac.new(admin_token.encode("utf-8"), _KEY_LABEL, hashlib.sha256).digest()


def same_secret(given: str, expected: str) -> bool:
    """Constant-time equality that does not leak the expected length either."""
    a = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    b = hashlib.sha256(expected.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(a, b)


@dataclass(frozen=True, slots=True)
class Session:
    """A verified session: its id and when it was issued (POSIX seconds)."""

    sid: str
    issued_at: float

    @property
    def expires_at(self) -> float:
        return self.issued_at + SESSION_TTL_S


@dataclass(frozen=True, slots=True)
class Signer:
    """Issues and verifies session cookies and CSRF tokens with one key."""

    key: bytes

    @classmethod
    def for_token(cls, admin_token: str) -> Signer:
        return cls(derive_key(admin_token))

    def _mac(self, *parts: bytes) -> str:
        return _b64(hmac.new(self.key, b".".join(parts), hashlib.sha256).digest())

    def issue(self, now: float) -> tuple[Session, str]:
        """A new session and its cookie value."""
        sid = _b64(secrets.token_bytes(16))
        issued = int(now)
        value = f"{sid}.{issued}.{self._mac(sid.encode(), str(issued).encode())}"
        return Session(sid, float(issued)), value

    def verify(self, value: str | None, now: float) -> Session | None:
        """The session a cookie value carries, or None: absent, forged, signed with
        another key (the token changed), or expired."""
        if not value or len(value) > 200:
            return None
        sid, _, rest = value.partition(".")
        issued_text, _, mac = rest.partition(".")
        if not (sid and issued_text.isdigit() and mac):
            return None
        expected = self._mac(sid.encode(), issued_text.encode())
        if not hmac.compare_digest(mac.encode(), expected.encode()):
            return None
        issued = float(issued_text)
        if issued > now + CLOCK_SKEW_S or now >= issued + SESSION_TTL_S:
            return None
        return Session(sid, issued)

    def csrf(self, session: Session) -> str:
        """The CSRF token of a session: every form of the session carries it."""
        return self._mac(_CSRF_LABEL, session.sid.encode())

    def csrf_ok(self, session: Session, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(
            given.encode("utf-8", "surrogatepass"), self.csrf(session).encode()
        )

    def sign_in_nonce(self) -> tuple[str, str]:
        """Before a session exists: a nonce for a cookie and the form token bound to it."""
        nonce = _b64(secrets.token_bytes(16))
        return nonce, self._mac(_SIGN_IN_LABEL, nonce.encode())

    def sign_in_ok(self, nonce: str | None, given: str | None) -> bool:
        if not nonce or given is None or len(nonce) > 64:
            return False
        expected = self._mac(_SIGN_IN_LABEL, nonce.encode())
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())


@dataclass
class Revoked:
    """Session ids signed out in this process, kept until they would have expired."""

    until: dict[str, float] = field(default_factory=dict)

    def add(self, session: Session) -> None:
        self.until[session.sid] = session.expires_at

    def __contains__(self, session: object) -> bool:
        return isinstance(session, Session) and session.sid in self.until

    def forget_expired(self, now: float) -> None:
        for sid in [s for s, t in self.until.items() if t <= now]:
            del self.until[sid]


@dataclass
class Throttle:
    """Wrong tokens per client address: after `limit` within `window` seconds, sign-in is
    refused for that address until the oldest of them leaves the window.

    Behind a reverse proxy every client shares the proxy's address: a guesser then locks
    everyone out for a minute, which is the lesser evil. At most `max_clients` addresses
    are remembered; the longest idle is forgotten first.
    """

    limit: int = 5
    window: float = 60.0
    max_clients: int = 10_000
    failures: dict[str, deque[float]] = field(default_factory=dict)

    def wait(self, client: str, now: float) -> float:
        """Seconds until `client` may try again (0 when it may now)."""
        times = self.failures.get(client)
        if times is None:
            return 0.0
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self.failures[client]
            return 0.0
        if len(times) < self.limit:
            return 0.0
        return times[0] + self.window - now

    def failed(self, client: str, now: float) -> None:
        times = self.failures.pop(client, None) or deque(maxlen=self.limit)
        times.append(now)
        self.failures[client] = times  # re-inserted: the dict's order is last use
        while len(self.failures) > self.max_clients:
            del self.failures[next(iter(self.failures))]

    def succeeded(self, client: str) -> None:
        self.failures.pop(client, None)
