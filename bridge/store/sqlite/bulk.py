"""Bulk delivery in SQLite: claiming several leads' heads as requests, and settling a
batch's transitions in one transaction (bridge/bulk.py decides; this carries it out).

Plain functions over a connection inside the writer's transaction, like queue.py.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Sequence
from typing import Any

from bridge.bulk import LeadKey, look_further, plan_claim, scan_size
from bridge.store.base import BatchRecord, BulkRules, Claim, QueuedTransition, Settle
from bridge.store.rows import queued
from bridge.store.sqlite import queue as q

# The pending transitions of a set of leads (a JSON list of [account, lead]), per lead
# in (occurred_at, id) order: one statement for the whole scan.
_PENDING = f"""
    WITH k (a, l) AS (
        SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)
    )
    SELECT {q.QUEUED} FROM k
    JOIN transitions t ON t.account_id = k.a AND t.lead_id = k.l AND t.state = 'pending'
    JOIN events e ON e.pk = t.event_pk
    ORDER BY t.account_id, t.lead_id, t.occurred_at, t.id
"""  # noqa: S608 - constant fragments only

# Due leads past the scan whose head may go in bulk (bridge.bulk.eligible decides; this
# only finds candidates), oldest first, found from the head's side: `transitions_bulk`
# (migration 5) holds only pending transitions without notes and never answered 404,
# so the walk skips every PATCH-only head, however many. A transition is its lead's
# head when no pending transition of the lead comes after it (with coalescing: the
# newest) or before it (without), and the lead is due exactly when its cached due time
# is the head's. Without statistics SQLite would as soon walk transitions_due (every
# pending transition): INDEXED BY holds it to the smaller index (and fails loudly
# should the index go). The {fragments} are constants.
_FURTHER = """
    SELECT l.account_id, l.lead_id, l.last_delivered_at, l.{column}
    FROM transitions t {index}
    JOIN leads l ON l.account_id = t.account_id AND l.lead_id = t.lead_id
    WHERE t.state = 'pending' AND t.not_found_attempts = 0{notes}
      AND t.next_attempt_at >= :after_due AND t.next_attempt_at <= :now
      AND t.rule NOT IN (SELECT value FROM json_each(:patch_only))
      AND l.{column} = t.next_attempt_at
      AND (l.{column}, l.account_id, l.lead_id) > (:after_due, :after_account, :after_lead)
      AND l.account_id NOT IN (SELECT value FROM json_each(:skip))
      AND NOT EXISTS (
          SELECT 1 FROM transitions h
          WHERE h.account_id = t.account_id AND h.lead_id = t.lead_id AND h.state = 'pending'
            AND (h.occurred_at, h.id) {newer} (t.occurred_at, t.id)
      )
    ORDER BY t.next_attempt_at, t.id
    LIMIT :limit
"""


def further_leads(
    conn: sqlite3.Connection,
    now: float,
    after: Sequence[Any],
    limit: int,
    bulk: BulkRules,
    coalesce: bool,
    skip_accounts: Collection[int],
) -> list[Any]:
    """Up to `limit` due leads past `after` (the last scanned lead's row) whose head may
    go in bulk (not of an account skipped, nor of one whose bulk path answered 404), as
    the scan's rows."""
    sql = _FURTHER.format(
        column="last_due_at" if coalesce else "first_due_at",
        index="" if bulk.drop_notes else "INDEXED BY transitions_bulk",
        notes="" if bulk.drop_notes else " AND t.notes IS NULL",
        newer=">" if coalesce else "<",
    )
    return conn.execute(
        sql,
        {
            "now": now,
            "after_account": after[0],
            "after_lead": after[1],
            "after_due": after[3],
            "patch_only": json.dumps(sorted(bulk.patch_only_rules)),
            "skip": json.dumps(sorted({*skip_accounts, *bulk.patch_only_accounts})),
            "limit": limit,
        },
    ).fetchall()


def _read(
    conn: sqlite3.Connection,
    rows: Sequence[Any],
    pending: dict[LeadKey, list[QueuedTransition]],
) -> list[tuple[LeadKey, float | None]]:
    """Read the pending transitions of the leads in `rows` into `pending`; return the
    leads as `plan_claim` takes them."""
    for row in conn.execute(_PENDING, (json.dumps([(r[0], r[1]) for r in rows]),)).fetchall():
        t = queued(row)
        pending.setdefault((t.account_id, t.lead_id), []).append(t)
    return [((row[0], row[1]), row[2]) for row in rows]


def claim_requests(
    conn: sqlite3.Connection,
    now: float,
    requests: int,
    bulk: BulkRules,
    coalesce: bool,
    epoch: int,
    skip_accounts: Collection[int] = (),
) -> Claim:
    """Claim up to `requests` requests among the oldest due leads; see Store.claim_requests."""
    q.check_epoch(conn, epoch)
    column = "last_due_at" if coalesce else "first_due_at"
    where = f"{column} <= ?"
    params: list[Any] = [now]
    if skip_accounts:
        where += f" AND account_id NOT {q.IN_IDS}"
        params.append(json.dumps(sorted(skip_accounts)))
    rows = conn.execute(
        f"SELECT account_id, lead_id, last_delivered_at, {column} FROM leads"  # noqa: S608
        f" WHERE {where} ORDER BY {column}, account_id, lead_id LIMIT ?",
        (*params, scan_size(requests, bulk)),
    ).fetchall()
    pending: dict[LeadKey, list[QueuedTransition]] = {}
    leads = _read(conn, rows, pending)
    plan = plan_claim(leads, pending, now, coalesce=coalesce, requests=requests, rules=bulk)
    if more := look_further(plan, requests, len(rows), bulk):
        further = further_leads(conn, now, rows[-1], more, bulk, coalesce, skip_accounts)
        if further:
            leads += _read(conn, further, pending)
            plan = plan_claim(leads, pending, now, coalesce=coalesce, requests=requests, rules=bulk)
    out = Claim(claimed=[], superseded=[], stale=[], next_due_at=None)
    for lead_plan in plan.plans:
        q.apply_plan(conn, lead_plan, now, epoch, out)
    q.refresh_leads(conn, plan.leads())
    plan.sort_into(out)
    return q.next_times(conn, now, out)


def settle_many(
    conn: sqlite3.Connection,
    settles: Sequence[Settle],
    now: float,
    batch: BatchRecord | None,
    epoch: int,
) -> int | None:
    """Settle each claim as its own settle would, and record the batch; all or nothing
    (the writer rolls the transaction back when one raises LeaseLost)."""
    for s in settles:
        assignments, params = _assignments(s, now)
        q.settle_claim(
            conn,
            s.transition_id,
            assignments,
            params,
            epoch=epoch,
            delivered=s.outcome == "delivered",
        )
    if batch is None:
        return None
    batch_id = conn.execute(
        "INSERT INTO batches (account_id, status, size, http_status, sent_at)"
        " VALUES (?, ?, ?, ?, ?) RETURNING id",
        (batch.account_id, str(batch.status), batch.size, batch.http_status, batch.sent_at),
    ).fetchone()[0]
    attempted = [s.transition_id for s in settles if s.outcome != "release"]
    conn.execute(
        f"UPDATE transitions SET batch_id = ? WHERE id {q.IN_IDS}",  # noqa: S608
        (batch_id, json.dumps(attempted)),
    )
    return int(batch_id)


def _assignments(s: Settle, now: float) -> tuple[str, dict[str, Any]]:
    attempt = {"now": now, "http_status": s.http_status, "reason": q.text(s.reason)}
    if s.outcome == "delivered":
        return q.DELIVERED, attempt
    if s.outcome == "dead":
        return q.DEAD, attempt
    if s.outcome == "release":
        return q.RELEASE, {"next": s.next_attempt_at}
    retry = {"next": s.next_attempt_at, "counts": int(s.counts), "not_found": int(s.not_found)}
    return q.RETRY, {**attempt, **retry}
