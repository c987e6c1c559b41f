"""Operating the bridge: dead letters, replay, a lead's ledger, follow-ups and stats, over HTTP.

The operations are plain async functions over a Store (and a rules evaluator); the
`/admin` routes here and the `dead-letters | replay | explain | followups | stats`
commands (`admin_cli.py`) are thin edges over them. The routes exist only when `admin.token`
is set, and every request must carry it as `Authorization: Bearer <token>`.

One concept: the admin HTTP API. Each route is a thin handler over one store call
and its request model; they share the validation and the answers' shapes.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from bridge import followups, validation
from bridge.errors import BadRequest, RequestRejected, StorageError
from bridge.models import Evaluation, Event, Outcome
from bridge.runtime import RUNTIME, Runtime
from bridge.store.base import (
    FollowUpChanges,
    FollowUpEntry,
    FollowUpState,
    LedgerEntry,
    Store,
    StoredEvent,
)

log = structlog.get_logger("bridge.admin")

REPLAY_LIMIT = 10_000
LIST_LIMIT = 10_000  # events one `events list` shows at most


class Evaluator(Protocol):
    """What replay needs of the rules: the current verdict on one event."""

    def evaluate(self, event: Event) -> Evaluation: ...


# --- requests -------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetryRequest(_Body):
    """`{}` re-queues every dead letter; `{"ids": [...]}` only those."""

    ids: list[StrictInt] | None = Field(default=None, min_length=1)


class ReplayRequest(_Body):
    """Events by primary key, or every event with an outcome (received since a time, when
    `since` is given; all of them otherwise)."""

    ids: list[StrictInt] | None = Field(default=None, min_length=1)
    outcome: Literal["unmapped", "ignored"] | None = None
    since: datetime | None = None  # a time without an offset is UTC

    @model_validator(mode="after")
    def _one_selection(self) -> ReplayRequest:
        by_query = self.outcome is not None or self.since is not None
        if self.ids is not None and by_query:
            raise ValueError("give either ids or an outcome, not both")
        if self.ids is None and self.outcome is None:
            raise ValueError("give ids, or an outcome (and optionally since)")
        return self

    @property
    def since_epoch(self) -> float | None:
        return _epoch(self.since)


class EventQuery(_Body):
    """Which stored events to list: newest first, optionally by outcome, source and time."""

    outcome: Literal["matched", "ignored", "unmapped"] | None = None
    source: str | None = None
    since: datetime | None = None  # a time without an offset is UTC
    limit: int = Field(default=50, ge=1, le=LIST_LIMIT)

    @property
    def since_epoch(self) -> float | None:
        return _epoch(self.since)


def _epoch(when: datetime | None) -> float | None:
    if when is None:
        return None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def validation_summary(exc: ValidationError) -> str:
    """A validation error as one line naming each field, never quoting the input."""
    parts = []
    for error in exc.errors(include_url=False):
        where = ".".join(str(p) for p in error["loc"]) or "body"
        text = validation.message(error)
        if where == "body" and error["type"] == "model_type":
            text = "must be a JSON object"
        parts.append(f"{where}: {text}")
    return "; ".join(parts)


class CancelRequest(_Body):
    """`{"ids": [...]}` cancels those follow-ups; `{"account_id": A, "lead_id": L}` every
    scheduled one of the lead."""

    ids: list[StrictInt] | None = Field(default=None, min_length=1)
    account_id: StrictInt | None = None
    lead_id: StrictInt | None = None

    @model_validator(mode="after")
    def _one_selection(self) -> CancelRequest:
        lead = self.account_id is not None or self.lead_id is not None
        if self.ids is not None and lead:
            raise ValueError("give either ids or account_id and lead_id, not both")
        if self.ids is None and (self.account_id is None or self.lead_id is None):
            raise ValueError("give ids, or both account_id and lead_id")
        return self

    @property
    def lead(self) -> tuple[int, int] | None:
        if self.account_id is None or self.lead_id is None:
            return None
        return self.account_id, self.lead_id


# --- operations -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What one replay did: events re-evaluated per new outcome, transitions queued."""

    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(map(str, Outcome), 0))
    transitions: int = 0
    skipped_matched: int = 0  # already matched: replaying would queue their transitions twice
    truncated: bool = False  # REPLAY_LIMIT events were chosen; run again for the rest
    changes: list[FollowUpChanges] = field(default_factory=list)  # follow-ups, per event

    @property
    def followups(self) -> dict[str, int]:
        return {
            "scheduled": sum(len(c.scheduled) for c in self.changes),
            "cancelled": sum(len(c.cancelled) for c in self.changes),
        }

    def as_json(self) -> dict[str, Any]:
        return {
            "events": sum(self.outcomes.values()),
            "outcomes": self.outcomes,
            "transitions": self.transitions,
            "skipped_matched": self.skipped_matched,
            "truncated": self.truncated,
            "followups": self.followups,
        }


@dataclass(frozen=True, slots=True)
class CancelResult:
    """What one cancel did: the follow-ups cancelled, and the asked-for ones it could not."""

    cancelled: list[FollowUpEntry]
    not_cancelled: list[FollowUpEntry]  # fired or cancelled already
    unknown: list[int]  # ids of no follow-up

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": not (self.not_cancelled or self.unknown),
            "cancelled": [followup_json(e) for e in self.cancelled],
            "not_cancelled": [followup_json(e) for e in self.not_cancelled],
            "unknown": self.unknown,
        }


async def list_dead(store: Store, limit: int = 1000) -> list[LedgerEntry]:
    """Dead transitions, newest first."""
    return await store.dead_letters(limit)


async def retry(store: Store, ids: Sequence[int] | None, now: float) -> int:
    """Re-queue dead transitions (all when `ids` is None); returns how many."""
    return await store.retry_dead(ids, now)


async def replay(
    store: Store, rules: Evaluator, selection: ReplayRequest, now: float
) -> ReplayResult:
    """Run the current rules again on stored events that did not match and queue the result."""
    chosen = await store.events_for_replay(
        ids=selection.ids,
        outcome=Outcome(selection.outcome) if selection.outcome else None,
        since=selection.since_epoch,
        limit=REPLAY_LIMIT,
    )
    outcomes = dict.fromkeys(map(str, Outcome), 0)
    changes: list[FollowUpChanges] = []
    skipped = queued = 0
    for stored in chosen:
        if stored.outcome is Outcome.MATCHED:
            skipped += 1
            continue
        evaluation = rules.evaluate(stored.event)
        replayed = await store.apply_replay(stored.pk, evaluation, now)
        queued += replayed.transitions
        if replayed.followups.scheduled or replayed.followups.cancelled:
            changes.append(replayed.followups)
        outcomes[str(evaluation.outcome)] += 1
    truncated = len(chosen) >= REPLAY_LIMIT
    return ReplayResult(outcomes, queued, skipped, truncated, changes)


async def list_events(store: Store, query: EventQuery) -> list[StoredEvent]:
    """Stored events with their ids (what replay takes), newest first."""
    return await store.list_events(
        outcome=Outcome(query.outcome) if query.outcome else None,
        source=query.source,
        since=query.since_epoch,
        limit=query.limit,
    )


async def explain(store: Store, account_id: int, lead_id: int) -> list[LedgerEntry]:
    """Every transition of one lead, newest first."""
    return await store.ledger(account_id, lead_id)


async def list_followups(
    store: Store,
    *,
    lead: tuple[int, int] | None = None,
    state: FollowUpState | None = FollowUpState.SCHEDULED,
    limit: int = 1000,
) -> list[FollowUpEntry]:
    """Follow-ups of one lead or of every lead, in one state or all (None); earliest due
    first."""
    return await store.followups(lead=lead, state=state, limit=limit)


async def cancel_followups(
    store: Store,
    now: float,
    *,
    ids: Sequence[int] | None = None,
    lead: tuple[int, int] | None = None,
) -> CancelResult:
    """Cancel scheduled follow-ups by id or every one of a lead; safe beside a firing."""
    cancelled = await store.cancel_followups(now, ids=ids, lead=lead, cause=followups.OPERATOR)
    if ids is None:
        return CancelResult(cancelled, [], [])
    done = {e.id for e in cancelled}
    rest = [i for i in dict.fromkeys(ids) if i not in done]
    found = await store.followups(ids=rest) if rest else []
    unknown = sorted(set(rest) - {e.id for e in found})
    return CancelResult(cancelled, found, unknown)


async def stats(store: Store, now: float) -> dict[str, Any]:
    """Counts per transition state, event outcome and follow-up state, retrying, oldest
    pending age, the next follow-up due."""
    s = await store.stats(now)
    return {
        "transitions": s.transitions,
        "events": s.events,
        "retrying": s.retrying,
        "oldest_pending_age_s": s.oldest_pending_age_s,
        "followups": s.followups,
        "next_followup_at": s.next_followup_at,
        "next_followup_iso": iso(s.next_followup_at),
        "store": s.extra,
    }


def iso(ts: float | None) -> str | None:
    """POSIX seconds as ISO 8601 UTC with milliseconds, e.g. 2024-05-01T12:00:00.000Z."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_json(stored: StoredEvent) -> dict[str, Any]:
    """A stored event without its payload and headers (they may hold personal data)."""
    event = stored.event
    return {
        "event_pk": stored.pk,
        "source": event.source,
        "event_id": event.event_id,
        "outcome": str(stored.outcome),
        "rule": stored.rule,
        "reason": stored.reason,
        "received_at": event.received_at,
        "received_iso": iso(event.received_at),
        "occurred_at": event.occurred_at,
        "occurred_iso": iso(event.occurred_at),
    }


def dead_letter_json(entry: LedgerEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "event_pk": entry.event_pk,
        "source": entry.source,
        "rule": entry.rule,
        "event_id": entry.event_id,
        "account_id": entry.account_id,
        "lead_id": entry.lead_id,
        "status": str(entry.status),
        "reason": entry.reason,
        "http_status": entry.http_status,
        "attempts": entry.attempts,
        "first_attempt_at": entry.first_attempt_at,
        "first_attempt_iso": iso(entry.first_attempt_at),
        "last_attempt_at": entry.last_attempt_at,
        "last_attempt_iso": iso(entry.last_attempt_at),
    }


def ledger_json(entry: LedgerEntry) -> dict[str, Any]:
    body = entry.as_json()
    for key in ("occurred_at", "created_at", "first_attempt_at", "last_attempt_at"):
        body[key.removesuffix("_at") + "_iso"] = iso(body[key])
    if entry.follow_up is not None:
        body["follow_up"] = followup_json(entry.follow_up)
    return body


def followup_json(entry: FollowUpEntry) -> dict[str, Any]:
    body = entry.as_json()
    for key in ("occurred_at", "due_at", "created_at", "settled_at"):
        body[key.removesuffix("_at") + "_iso"] = iso(body[key])
    return body


# --- HTTP -----------------------------------------------------------------------------


def _error(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="voxys-bridge admin"'} if status == 401 else None
    return web.json_response({"ok": False, "error": message}, status=status, headers=headers)


def authorized(header: str, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    token = request.config_dict[RUNTIME].bundle.config.admin.token
    if token is None:  # removed by a reload: the admin API is off again
        return _error(404, "admin API is off (no admin.token)")
    if not authorized(request.headers.get("Authorization", ""), token.get_secret_value()):
        log.warning("admin.unauthorized", path=request.path, remote=request.remote)
        return _error(401, "missing or wrong admin token")
    try:
        return await handler(request)
    except RequestRejected as exc:
        return _error(exc.status, exc.reason)
    except StorageError as exc:
        log.error("admin.storage_unavailable", path=request.path, error=str(exc))
        return _error(503, "storage unavailable, retry later")


_B = TypeVar("_B", bound=_Body)


async def _body(request: web.Request, model: type[_B]) -> _B:
    raw = await request.read()
    if not raw.strip():
        raise BadRequest("the body must be a JSON object, e.g. {}")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise BadRequest(validation_summary(exc)) from None


def _wake(runtime: Runtime, queued: int) -> None:
    if queued:
        runtime.new_work.stored(queued)


async def handle_dead_letters(request: web.Request) -> web.Response:
    entries = await list_dead(request.config_dict[RUNTIME].store)
    return web.json_response([dead_letter_json(e) for e in entries])


async def handle_retry(request: web.Request) -> web.Response:
    runtime = request.config_dict[RUNTIME]
    body = await _body(request, RetryRequest)
    count = await retry(runtime.store, body.ids, runtime.clock())
    log.info("admin.retry", requested=len(body.ids) if body.ids else "all", queued=count)
    _wake(runtime, count)
    return web.json_response({"ok": True, "queued": count})


async def handle_replay(request: web.Request) -> web.Response:
    runtime = request.config_dict[RUNTIME]
    body = await _body(request, ReplayRequest)
    now = runtime.clock()
    result = await replay(runtime.store, runtime.bundle.rules, body, now)
    for changes in result.changes:
        for level, name, fields in followups.log_lines(changes, now):
            getattr(log, level)(name, **fields)
    log.info("admin.replay", **result.as_json())
    _wake(runtime, result.transitions)
    return web.json_response({"ok": True, **result.as_json()})


async def handle_events(request: web.Request) -> web.Response:
    try:
        query = EventQuery.model_validate(dict(request.query))
    except ValidationError as exc:
        raise BadRequest(validation_summary(exc)) from None
    stored = await list_events(request.config_dict[RUNTIME].store, query)
    return web.json_response([event_json(e) for e in stored])


async def handle_lead(request: web.Request) -> web.Response:
    try:
        account_id = int(request.match_info["account_id"])
        lead_id = int(request.match_info["lead_id"])
    except ValueError:
        raise BadRequest("account_id and lead_id must be integers") from None
    entries = await explain(request.config_dict[RUNTIME].store, account_id, lead_id)
    return web.json_response([ledger_json(e) for e in entries])


async def handle_followups(request: web.Request) -> web.Response:
    query = request.query
    state_text = query.get("state", "scheduled")
    if state_text not in (*map(str, FollowUpState), "all"):
        raise BadRequest("state must be scheduled, fired, cancelled or all")
    lead = None
    if "account_id" in query or "lead_id" in query:
        try:
            lead = int(query["account_id"]), int(query["lead_id"])
        except (KeyError, ValueError):
            raise BadRequest("account_id and lead_id must both be integers") from None
    state = None if state_text == "all" else FollowUpState(state_text)
    entries = await list_followups(request.config_dict[RUNTIME].store, lead=lead, state=state)
    return web.json_response([followup_json(e) for e in entries])


async def handle_cancel(request: web.Request) -> web.Response:
    runtime = request.config_dict[RUNTIME]
    body = await _body(request, CancelRequest)
    result = await cancel_followups(runtime.store, runtime.clock(), ids=body.ids, lead=body.lead)
    for entry in result.cancelled:
        log.info("followup.cancelled", cause=entry.cause, **followups.fields(entry))
    return web.json_response(result.as_json())


async def handle_stats(request: web.Request) -> web.Response:
    runtime = request.config_dict[RUNTIME]
    body = await stats(runtime.store, runtime.clock())
    # Delivery owns the auth pause; it may not be wired into this runtime.
    delivery = runtime.delivery
    body["paused_tokens"] = 1 if delivery.pauses.token_wide else 0
    body["paused"] = delivery.paused_json()
    body["delivery_role"] = delivery.role
    body["lease_epoch"] = delivery.epoch
    return web.json_response(body)


def admin_app() -> web.Application:
    """The `/admin` sub-application; mount it with `app.add_subapp("/admin", admin_app())`."""
    app = web.Application(middlewares=[_guard])
    app.router.add_get("/dead-letters", handle_dead_letters)
    app.router.add_post("/dead-letters/retry", handle_retry)
    app.router.add_get("/events", handle_events)
    app.router.add_post("/events/replay", handle_replay)
    app.router.add_get("/leads/{account_id}/{lead_id}", handle_lead)
    app.router.add_get("/followups", handle_followups)
    app.router.add_post("/followups/cancel", handle_cancel)
    app.router.add_get("/stats", handle_stats)
    return app


def mount(app: web.Application, runtime: Runtime) -> None:
    """Add the `/admin` routes to `app` when `admin.token` is set; without it they do not exist."""
    if runtime.bundle.config.admin.token is not None:
        app.add_subapp("/admin", admin_app())
