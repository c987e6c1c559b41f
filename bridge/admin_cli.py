"""The store commands: `events list`, `dead-letters list|retry`, `replay`, `explain`,
`followups list|cancel`, `stats`.

They open the store named by the config directly, so they work while the server is
down (and beside it: SQLite's WAL and PostgreSQL both allow that). Each prints a table,
or JSON with `--json`; the operations themselves are `bridge.admin`'s.

One concept: the store commands. Each is a short function over the same
argument parsing and output helpers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, TextIO, TypeVar

from pydantic import BaseModel, ValidationError

from bridge import followups
from bridge.admin import (
    REPLAY_LIMIT,
    CancelResult,
    EventQuery,
    ReplayRequest,
    cancel_followups,
    dead_letter_json,
    event_json,
    explain,
    followup_json,
    ledger_json,
    list_dead,
    list_events,
    list_followups,
    replay,
    retry,
    stats,
    validation_summary,
)
from bridge.bundle import Bundle
from bridge.delivery import IDLE_POLL_S
from bridge.errors import ConfigError, StorageError
from bridge.store import open_backend
from bridge.store.base import FollowUpEntry, FollowUpState, LedgerEntry, Store, StoredEvent, Wakeup

M = TypeVar("M", bound=BaseModel)


class UsageError(Exception):
    """A command-line argument the operation cannot use."""


def parse_lead(value: str, default_account: int | None) -> tuple[int, int]:
    """`ACCOUNT/LEAD`, or `LEAD` in the configured voxys.account_id."""
    account, sep, lead = value.rpartition("/")
    if not sep and default_account is None:
        raise UsageError("--lead wants ACCOUNT/LEAD: voxys.account_id is not configured")
    try:
        return (int(account) if sep else default_account or 0), int(lead)
    except ValueError:
        raise UsageError(f"--lead wants ACCOUNT/LEAD or LEAD as integers, not {value!r}") from None


def cli_main(
    command: str,
    args: argparse.Namespace,
    bundle: Bundle,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Run `dead-letters | replay | explain | followups | stats` on the configured store;
    the exit code."""
    try:
        return asyncio.run(_run(command, args, bundle, out, err))
    except UsageError as exc:
        print(f"error: {exc}", file=err)
        return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=err)
        return 2
    except StorageError as exc:
        print(f"error: storage unavailable: {exc}", file=err)
        return 1


async def _run(
    command: str, args: argparse.Namespace, bundle: Bundle, out: TextIO, err: TextIO
) -> int:
    as_json: bool = getattr(args, "json", False)
    selection: ReplayRequest | None = None
    query: EventQuery | None = None
    lead: tuple[int, int] | None = None
    if command == "replay":  # validate before touching the store
        fields = {"ids": args.id, "outcome": args.outcome, "since": args.since}
        selection = _validated(ReplayRequest, fields)
    elif command == "events":
        fields = {"outcome": args.outcome, "source": args.source, "since": args.since}
        query = _validated(EventQuery, {**fields, "limit": args.limit})
    elif command == "explain" or (command == "followups" and args.lead):
        lead = parse_lead(args.lead, bundle.config.voxys.account_id)
    elif command not in ("dead-letters", "stats", "followups"):
        raise UsageError(f"unknown command {command!r}")
    backend = open_backend(bundle.config.storage.url)
    store = backend.store
    await store.open()
    try:
        now = time.time()
        if command == "dead-letters" and args.action == "retry":
            count = await retry(store, args.id or None, now)
            await _wake(backend.wakeup, count, err)
            _emit(out, as_json, {"ok": True, "queued": count}, f"re-queued {count} dead letter(s)")
        elif command == "dead-letters":
            entries = await list_dead(store)
            rows = [dead_letter_json(e) for e in entries]
            _emit(out, as_json, rows, _dead_table(entries))
        elif command == "replay":
            assert selection is not None
            result = (await replay(store, bundle.rules, selection, now)).as_json()
            await _wake(backend.wakeup, result["transitions"], err)
            _emit(out, as_json, result, _replay_text(result))
        elif command == "events":
            assert query is not None
            stored = await list_events(store, query)
            text = _events_table(stored) if stored else "no events"
            _emit(out, as_json, [event_json(e) for e in stored], text)
        elif command == "explain":
            assert lead is not None
            entries = await explain(store, *lead)
            text = (
                _ledger_table(entries, now)
                if entries
                else f"no transitions for lead {lead[0]}/{lead[1]}"
            )
            _emit(out, as_json, [ledger_json(e) for e in entries], text)
        elif command == "followups":
            return await _followups(store, args, lead, now, as_json, out)
        else:
            body = await stats(store, now)
            _emit(out, as_json, body, _stats_text(body))
    finally:
        await backend.wakeup.close()
        await store.close()
    return 0


async def _wake(wakeup: Wakeup, queued: int, err: TextIO) -> None:
    """A server running on this store delivers what was queued at once, not at its next
    safety-net poll (the same wake-up its replicas use)."""
    if not queued:
        return
    try:
        await wakeup.notify()
    except StorageError as exc:
        print(
            f"note: could not wake a running server ({exc}); it finds the work "
            f"within {IDLE_POLL_S:.0f} s",
            file=err,
        )


def _validated(model: type[M], fields: dict[str, Any]) -> M:
    try:
        return model.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        raise UsageError(validation_summary(exc)) from None


async def _followups(
    store: Store,
    args: argparse.Namespace,
    lead: tuple[int, int] | None,
    now: float,
    as_json: bool,
    out: TextIO,
) -> int:
    """`followups list` (exit 0) and `followups cancel` (exit 1 when an asked-for one could
    not be cancelled: it fired, was cancelled already, or does not exist)."""
    if args.action == "list":
        state = None if args.state == "all" else FollowUpState(args.state)
        entries = await list_followups(store, lead=lead, state=state)
        text = _followup_table(entries, now) if entries else f"no {args.state} follow-ups"
        _emit(out, as_json, [followup_json(e) for e in entries], text)
        return 0
    if not args.id and lead is None:
        raise UsageError("followups cancel wants --id N (repeatable) or --lead ACCOUNT/LEAD")
    if args.id and lead is not None:
        raise UsageError("followups cancel takes --id or --lead, not both")
    result = await cancel_followups(store, now, ids=args.id or None, lead=lead)
    _emit(out, as_json, result.as_json(), _cancel_text(result, lead))
    return 0 if result.as_json()["ok"] else 1


def _emit(out: TextIO, as_json: bool, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if as_json else text, file=out)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned columns, `-` for missing values."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _when(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _dead_table(entries: Sequence[LedgerEntry]) -> str:
    if not entries:
        return "no dead letters"
    headers = [
        "id",
        "event",
        "lead",
        "status",
        "rule",
        "source/event_id",
        "attempts",
        "http",
        "last attempt",
        "reason",
    ]
    rows = [
        [
            e.id,
            e.event_pk,
            f"{e.account_id}/{e.lead_id}",
            e.status,
            e.rule,
            f"{e.source}/{e.event_id}",
            e.attempts,
            e.http_status,
            _when(e.last_attempt_at),
            e.reason,
        ]
        for e in entries
    ]
    return table(headers, rows)


def _rule_label(e: LedgerEntry) -> str:
    if e.origin == "event":
        return e.rule
    return f"{e.rule} (follow-up {e.follow_up.id})" if e.follow_up else f"{e.rule} (follow-up)"


def _reason(e: LedgerEntry) -> str | None:
    """The reason, after the bulk request the last attempt went in, if any."""
    if e.batch_id is None:
        return e.reason
    text = f"batch {e.batch_id} of {e.batch_size} leads"
    if e.notes_dropped:
        text += ", notes not sent (voxys.bulk.notes: drop)"
    return f"{text}; {e.reason}" if e.reason else text


def _ledger_table(entries: Sequence[LedgerEntry], now: float) -> str:
    headers = [
        "time",
        "id",
        "event",
        "status",
        "state",
        "rule",
        "source/event_id",
        "attempts",
        "reason",
    ]
    rows = [
        [
            _when(e.occurred_at),
            e.id,
            e.event_pk,
            e.status,
            e.state,
            _rule_label(e),
            f"{e.source}/{e.event_id}",
            e.attempts,
            _reason(e),
        ]
        for e in entries
    ]
    text = table(headers, rows)
    scheduled = {e.follow_up.id: e.follow_up for e in entries if e.follow_up is not None}
    if scheduled:
        by_due = sorted(scheduled.values(), key=lambda f: (f.due_at, f.id), reverse=True)
        text += "\n\nfollow-ups\n" + _followup_table(by_due, now, lead=False)
    return text


def _followup_table(entries: Sequence[FollowUpEntry], now: float, *, lead: bool = True) -> str:
    headers = ["id", "due", "", "status", "state", "rule", "source/event_id", "cause"]
    if lead:
        headers.insert(3, "lead")
    rows = []
    for e in entries:
        when = _due_in(e, now)
        row: list[Any] = [e.id, _when(e.due_at), when, e.status, e.state, e.rule]
        row += [f"{e.source}/{e.event_id}", _settled(e)]
        if lead:
            row.insert(3, f"{e.account_id}/{e.lead_id}")
        rows.append(row)
    return table(headers, rows)


def _events_table(stored: Sequence[StoredEvent]) -> str:
    headers = ["event", "received", "source/event_id", "outcome", "rule", "reason"]
    rows = [
        [
            s.pk,
            _when(s.event.received_at),
            f"{s.event.source}/{s.event.event_id}",
            s.outcome,
            s.rule,
            s.reason,
        ]
        for s in stored
    ]
    return table(headers, rows)


def _due_in(e: FollowUpEntry, now: float) -> str:
    if e.state is not FollowUpState.SCHEDULED:
        return ""
    if e.due_at <= now:
        return f"due {followups.span(now - e.due_at)} ago"
    return f"in {followups.span(e.due_at - now)}"


def _settled(e: FollowUpEntry) -> str | None:
    if e.state is FollowUpState.FIRED:
        return f"fired {_when(e.settled_at)} as transition {e.transition_id}"
    if e.state is FollowUpState.CANCELLED:
        return f"{e.cause} ({_when(e.settled_at)})"
    return None


def _cancel_text(result: CancelResult, lead: tuple[int, int] | None) -> str:
    lines = [
        f"cancelled follow-up {e.id} ({e.status} due {_when(e.due_at)})" for e in result.cancelled
    ]
    for e in result.not_cancelled:
        lines.append(f"follow-up {e.id} was not cancelled: it is {e.state} ({_settled(e)})")
    lines += [f"follow-up {i} does not exist" for i in result.unknown]
    if not lines:
        return f"no scheduled follow-ups for lead {lead[0]}/{lead[1]}" if lead else "nothing to do"
    return "\n".join(lines)


def _replay_text(result: dict[str, Any]) -> str:
    outcomes = ", ".join(f"{k} {v}" for k, v in result["outcomes"].items())
    lines = [
        f"replayed {result['events']} event(s): {outcomes}",
        f"queued {result['transitions']} transition(s)",
    ]
    if result["skipped_matched"]:
        lines.append(f"skipped {result['skipped_matched']} already matched event(s)")
    if result["truncated"]:
        lines.append(f"stopped at {REPLAY_LIMIT} events: run again for the rest")
    return "\n".join(lines)


def _stats_text(body: dict[str, Any]) -> str:
    age = body["oldest_pending_age_s"]
    rows = [[f"transitions {k}", v] for k, v in body["transitions"].items()]
    rows += [[f"events {k}", v] for k, v in body["events"].items()]
    rows += [[f"follow-ups {k}", v] for k, v in body["followups"].items()]
    rows += [
        ["retrying", body["retrying"]],
        ["oldest pending", None if age is None else f"{age:.1f}s"],
        ["next follow-up", body["next_followup_iso"]],
    ]
    return table(["counter", "value"], rows)
