"""The interface every provider family implements: verify a raw request, split it into events.

Everything here is pure: bytes, dicts and a clock value in, events or errors out.
The aiohttp edge (`bridge/ingest.py`) builds a `WebhookRequest` and calls, in order,
`verify`, then `parse`, then `acknowledge` once the events are stored. A provider
module implements `split`; `parse` is `split` with every event's time bounded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qs

from pydantic import BaseModel, ConfigDict

from bridge.errors import BadRequest, RequestRejected, UnsupportedMediaType
from bridge.models import Event

# Headers that carry credentials: verified, never stored with an event nor logged.
SENSITIVE_HEADER_PARTS = ("authorization", "cookie", "signature", "token", "secret", "api-key")
_SENSITIVE = re.compile("|".join(map(re.escape, SENSITIVE_HEADER_PARTS)))  # one scan per name

# How far an event's own time may lie past its arrival before it is not believed.
# The newest event of a lead wins, so a time in the future (a drifted clock, or one
# forged where a provider leaves it unsigned) would make every genuine event until
# then `stale`. Clocks kept by NTP agree within milliseconds; 5 s absorbs a drifted one
# many times over and stays far below how fast a lead's status really changes (minutes),
# so a believed-but-wrong time can outrank five seconds of genuine events at most. Past
# it the event is ordered by when it arrived, the best time we know; the webhook's log
# line counts it (`clamped`), so a clock that drifted shows at once.
FUTURE_SKEW_S = 5.0


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """A received webhook request, as raw as verification needs it.

    `headers` has lower-cased names. `path` is the path as received (e.g.
    `/webhooks/hubspot`), `query_string` the raw query without `?`.
    """

    method: str
    path: str
    query_string: str
    headers: Mapping[str, str]
    body: bytes
    content_type: str = ""  # media type only, lower-cased, e.g. "application/json"

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def safe_headers(self) -> dict[str, str]:
        """Headers without credentials or signatures: what may be stored and shown to rules."""
        return {k: v for k, v in self.headers.items() if not _SENSITIVE.search(k)}


@dataclass(frozen=True, slots=True)
class WebhookResponse:
    """What the webhook's sender is answered: the acknowledgement, or a rejection."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"


# Answers are immutable: the usual acknowledgements are encoded once, not per request.
_ACKNOWLEDGEMENTS: dict[tuple[int, int], WebhookResponse] = {}
MAX_ACKNOWLEDGEMENTS = 1024


@dataclass(frozen=True, slots=True)
class IngestSummary:
    """What one request added to the store, for the answer and the log line."""

    events: int
    duplicates: int
    extra: dict[str, Any] = field(default_factory=dict)


class SourceSettings(BaseModel):
    """Base of each source module's own configuration model."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = None


class Source(ABC):
    """One configured source: `POST /webhooks/<key>` is verified and parsed by it."""

    #: The `preset:` name that selects this class in bridge.yaml.
    preset: ClassVar[str]
    #: The pydantic model that validates this source's YAML mapping.
    settings_model: ClassVar[type[SourceSettings]]

    def __init__(self, key: str, settings: SourceSettings, *, public_url: str) -> None:
        self.key = key
        self.settings = settings
        self.public_url = public_url.rstrip("/")

    @classmethod
    def parse_only(cls, key: str, entry: Mapping[str, Any], *, public_url: str) -> Source:
        """This preset built from none of its verification settings, for `dry-run`.

        It parses exactly as the configured source does, so a rule can be tried without
        the source's secrets; it cannot verify, and is never served. Presets whose `parse`
        reads their settings override this and read them from `entry`.
        """
        source = cls.__new__(cls)
        Source.__init__(source, key, SourceSettings(preset=cls.preset), public_url=public_url)
        return source

    def startup_warnings(self) -> list[str]:
        """Messages logged once at start (e.g. an unsigned source)."""
        return []

    @abstractmethod
    def verify(self, request: WebhookRequest, now: float) -> None:
        """Raise `Unauthorized` unless the request is authentic and fresh at `now`."""

    def sign(
        self,
        body: bytes,
        *,
        now: float,
        path: str,
        query_string: str = "",
        content_type: str = "application/json",
    ) -> dict[str, str]:
        """The headers a genuine sender attaches to `body` at `now` so that `verify` accepts it.

        `path` and `query_string` are what this bridge will receive (some schemes sign
        the URL); the first configured secret signs. Includes `Content-Type`.
        """
        raise NotImplementedError(f"preset {self.preset} cannot sign requests")

    def stamp(self, body: bytes, now: float) -> bytes:
        """The body a genuine sender sends at `now`: most send it as it is; a sender whose
        signed body carries the sending time (HighLevel) puts `now` in it."""
        return body

    def signed_query(self, query_string: str = "") -> str:
        """The query string a genuine sender uses: some carry a token there (Salesforce)."""
        return query_string

    def parse(self, request: WebhookRequest, received_at: float) -> list[Event]:
        """Split a verified request into events, none claiming a time past its arrival.

        What ingest and dry-run call, so that every source's events pass `bounded`.
        """
        return [bounded(event) for event in self.split(request, received_at)]

    @abstractmethod
    def split(self, request: WebhookRequest, received_at: float) -> list[Event]:
        """The events the request states, as it states them; `BadRequest` when malformed.

        Order and identity must come from what the signature covers (see
        docs/providers.md): an id or a time from an unsigned header lets anyone who
        captured one request make a new event of it, or date it in the future.
        """

    def reject(self, error: RequestRejected) -> WebhookResponse:
        """The 4xx answer to a request this source refused (a JSON error by default)."""
        body = {"ok": False, "error": error.reason}
        return WebhookResponse(status=error.status, body=json.dumps(body).encode())

    def acknowledge(self, summary: IngestSummary) -> WebhookResponse:
        """The 2xx answer sent once the request's events are committed."""
        key = (summary.events, summary.duplicates)
        answer = _ACKNOWLEDGEMENTS.get(key)
        if answer is None:
            body = {"ok": True, "events": summary.events, "duplicates": summary.duplicates}
            answer = WebhookResponse(body=json.dumps(body).encode())
            if len(_ACKNOWLEDGEMENTS) < MAX_ACKNOWLEDGEMENTS:
                _ACKNOWLEDGEMENTS[key] = answer
        return answer


def bounded(event: Event) -> Event:
    """`event`, or a copy ordered by arrival when it claims a time over FUTURE_SKEW_S ahead."""
    if event.occurred_at <= event.received_at + FUTURE_SKEW_S:
        return event
    return dataclasses.replace(event, occurred_at=event.received_at, claimed_at=event.occurred_at)


def clamped(events: Iterable[Event]) -> dict[str, Any]:
    """Fields for a webhook's log line: how many events had their time clamped, by how much."""
    ahead = [e.claimed_at - e.received_at for e in events if e.claimed_at is not None]
    if not ahead:
        return {}
    return {"clamped": len(ahead), "clamped_ahead_s": round(max(ahead), 1)}


def _not_json(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")  # RFC 8259 section 6; Python's json allows it


def _finite(literal: str) -> float:
    # A literal beyond a double's range decodes to infinity, which JSON cannot write back.
    value = float(literal)
    if math.isinf(value):
        raise ValueError("number out of range")
    return value


_DECODER = json.JSONDecoder(parse_constant=_not_json, parse_float=_finite)


def decode_body(request: WebhookRequest) -> Any:
    """Parse a JSON or form-encoded body; 400 when empty or malformed, 415 otherwise.

    NaN, Infinity and numbers beyond a double's range are malformed: RFC 8259 has no
    such values, and a payload is stored as JSON text that must read back the same.
    """
    if not request.body.strip():
        raise BadRequest("empty body")
    ctype = request.content_type
    if ctype in ("", "application/json") or ctype.endswith("+json"):
        try:
            # What json.loads does with bytes, with one decoder built once, not per call.
            body = request.body
            return _DECODER.decode(body.decode(json.detect_encoding(body), "surrogatepass"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise BadRequest("malformed JSON") from exc
    if ctype == "application/x-www-form-urlencoded":
        try:
            text = request.body.decode("utf-8")
            form = parse_qs(text, keep_blank_values=True, strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest("malformed form body") from exc
        return {k: v[0] if len(v) == 1 else v for k, v in form.items()}
    raise UnsupportedMediaType(f"unsupported content type {ctype!r}")


def decode_object(request: WebhookRequest, what: str) -> dict[str, Any]:
    """`decode_body` for senders whose body is one JSON object; 400 `<what> is not ...`."""
    payload = decode_body(request)
    if not isinstance(payload, dict):
        raise BadRequest(f"{what} is not a JSON object")
    return payload
