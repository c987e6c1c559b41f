"""What the console's pages show, computed from what the store and the runtime hold. Pure.

Times in, text out: ages, UTC times, masked headers, pretty bodies, the dead-letter
filter and the overview's figures. Templates only lay these out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from bridge.config import parse_duration
from bridge.sources.base import SENSITIVE_HEADER_PARTS
from bridge.store.base import LedgerEntry

MAX_SHOWN_CHARS: Final = 200_000  # of a pretty-printed body; the rest is cut
MASK: Final = "•••• masked"

# The ledger fields each timeline entry lays out itself; any other field an entry
# carries (a bulk batch, a schedule) is listed under it by name, so a field added to
# `LedgerEntry.as_json` shows without touching the console.
LEDGER_LAID_OUT: Final = frozenset(
    {
        "batch",
        "notes_dropped",
        "id",
        "event_pk",
        "source",
        "event_id",
        "rule",
        "account_id",
        "lead_id",
        "status",
        "notes",
        "state",
        "occurred_at",
        "created_at",
        "attempts",
        "first_attempt_at",
        "last_attempt_at",
        "next_attempt_at",
        "http_status",
        "reason",
    }
)


def utc(ts: float | None) -> str:
    """POSIX seconds as `2026-11-01 12:00:03Z`; `-` for none."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def age(seconds: float | None) -> str:
    """A duration as people read it: `42 s`, `5 min`, `3 h 10 min`, `2 d 4 h`."""
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172_800:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


def sensitive(name: str) -> bool:
    """A header that carries a credential or a signature (what sources never store)."""
    lowered = name.lower()
    return any(part in lowered for part in SENSITIVE_HEADER_PARTS)


def masked_headers(headers: Mapping[str, str], secrets: Iterable[str]) -> list[tuple[str, str]]:
    """Headers sorted by name, each credential, signature or configured secret masked.

    Sources drop such headers before an event is stored; this is the second line, for
    rows stored otherwise (an older version, a hand import) and for a secret that turns
    up under a harmless name.
    """
    known = [s for s in secrets if len(s) >= 4]
    shown = []
    for name, value in sorted(headers.items()):
        text = str(value)
        if sensitive(name) or any(s in text for s in known):
            text = MASK
        shown.append((name, text))
    return shown


def pretty(payload: Any) -> str:
    """The payload as indented JSON (text, for a `<pre>`), cut at MAX_SHOWN_CHARS."""
    try:
        text = json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError, RecursionError):
        text = repr(payload)
    if len(text) > MAX_SHOWN_CHARS:
        text = text[:MAX_SHOWN_CHARS] + f"\n… cut at {MAX_SHOWN_CHARS} characters"
    return text


def extra_fields(entry: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """The fields of a ledger entry the timeline does not lay out itself, by name."""
    return [
        (k, v)
        for k, v in entry.items()
        if k not in LEDGER_LAID_OUT and not k.endswith("_iso") and v is not None
    ]


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """The dead-letter page's filter; an empty field filters nothing."""

    source: str = ""
    rule: str = ""
    status: str = ""
    reason: str = ""  # a case-insensitive part of the reason
    http: str = ""  # an HTTP status, e.g. 422
    older: str = ""  # at least this old (a duration: 30m, 2h)
    newer: str = ""  # at most this old

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> DeadFilter:
        return cls(**{k: query.get(k, "").strip()[:200] for k in cls.__slots__})

    def problems(self) -> list[str]:
        out = []
        if self.http and not self.http.isdigit():
            out.append("HTTP status: a number, e.g. 422")
        for key in ("older", "newer"):
            try:
                if getattr(self, key):
                    parse_duration(getattr(self, key))
            except ValueError as exc:
                out.append(f"{key} than: {exc}")
        return out

    def keeps(self, entry: LedgerEntry, now: float) -> bool:
        """True when `entry` passes every filled-in field (call only without problems)."""
        at = entry.last_attempt_at or entry.created_at
        checks = (
            not self.source or entry.source == self.source,
            not self.rule or entry.rule == self.rule,
            not self.status or str(entry.status) == self.status,
            not self.reason or self.reason.lower() in (entry.reason or "").lower(),
            not self.http or entry.http_status == int(self.http),
            not self.older or now - at >= parse_duration(self.older),
            not self.newer or now - at <= parse_duration(self.newer),
        )
        return all(checks)

    @property
    def active(self) -> bool:
        return any(getattr(self, k) for k in self.__slots__)


def per_minute(requests: int, per_seconds: float) -> int:
    """The configured rate limit as requests per minute."""
    return int(requests * 60 / per_seconds)


def reload_summary(outcome: str, detail: Mapping[str, Any]) -> list[str]:
    """The lines the overview shows for the last reload."""
    if outcome == "failed":
        return [str(e) for e in detail.get("errors", [])]
    if outcome == "restart_required":
        return ["needs a restart: " + ", ".join(detail.get("keys", []))]
    lines = []
    for part in ("rules", "sources"):
        for how in ("added", "removed", "changed"):
            names = detail.get(part, {}).get(how, [])
            if names:
                lines.append(f"{part} {how}: {', '.join(names)}")
    if detail.get("lookups"):
        lines.append("lookups changed: " + ", ".join(detail["lookups"]))
    return lines or ["nothing changed"]
