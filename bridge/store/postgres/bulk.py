"""Bulk delivery in PostgreSQL: claiming several leads' heads as requests, and settling a
batch's transitions in one transaction (bridge/bulk.py decides; this carries it out).

Async functions over one connection inside the caller's transaction, with queue.py's
lead locks: the scanned leads are locked FOR UPDATE SKIP LOCKED, as `claim_due` does,
so two claimers never take the same lead and never wait on each other.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from bridge.bulk import LeadKey, look_further, plan_claim, scan_size
from bridge.store.base import BatchRecord, BulkRules, Claim, QueuedTransition, Settle
from bridge.store.postgres import queue as q
from bridge.store.rows import queued

_PENDING = f"""
    SELECT {q.QUEUED} FROM {q.KEYS}
    JOIN transitions t ON t.account_id = k.a AND t.lead_id = k.l AND t.state = 'pending'
    JOIN events e ON e.pk = t.event_pk
    ORDER BY t.account_id, t.lead_id, t.occurred_at, t.id
"""  # noqa: S608 - constant fragments only

# Due leads past the scan whose head may go in bulk, locked as the scan's are: see
# sqlite/bulk.py for how the head and its due time are found. `transitions_bulk`
# (migration 5) holds only pending transitions without notes and never answered 404.
_FURTHER = """
    SELECT l.account_id, l.lead_id, l.last_delivered_at, l.{column}
    FROM transitions t
    JOIN leads l ON l.account_id = t.account_id AND l.lead_id = t.lead_id
    WHERE t.state = 'pending' AND t.not_found_attempts = 0{notes}
      AND t.next_attempt_at >= $2 AND t.next_attempt_at <= $1
      AND t.rule <> ALL($5::text[])
      AND l.{column} = t.next_attempt_at
      AND (l.{column}, l.account_id, l.lead_id) > ($2, $3, $4)
      AND l.account_id <> ALL($6::bigint[])
      AND NOT EXISTS (
          SELECT 1 FROM transitions h
          WHERE h.account_id = t.account_id AND h.lead_id = t.lead_id AND h.state = 'pending'
            AND (h.occurred_at, h.id) {newer} (t.occurred_at, t.id)
      )
    ORDER BY t.next_attempt_at, t.id
    LIMIT $7
    FOR UPDATE OF l SKIP LOCKED
"""


async def further_leads(
    conn: Any,
    now: float,
    after: Sequence[Any],
    limit: int,
    bulk: BulkRules,
    coalesce: bool,
    skip_accounts: Collection[int],
) -> list[Any]:
    """Up to `limit` due leads past `after` (the last scanned lead's row) whose head may
    go in bulk (not of an account skipped, nor of one whose bulk path answered 404), as
    the scan's rows, locked FOR UPDATE SKIP LOCKED."""
    sql = _FURTHER.format(
        column="last_due_at" if coalesce else "first_due_at",
        notes="" if bulk.drop_notes else " AND t.notes IS NULL",
        newer=">" if coalesce else "<",
    )
    rows: list[Any] = await conn.fetch(
        sql,
        now,
        after[3],
        after[0],
        after[1],
        sorted(bulk.patch_only_rules),
        sorted({*skip_accounts, *bulk.patch_only_accounts}),
        limit,
    )
    return rows


async def _read(
    conn: Any, rows: Sequence[Any], pending: dict[LeadKey, list[QueuedTransition]]
) -> list[tuple[LeadKey, float | None]]:
    """Read the pending transitions of the leads in `rows` into `pending`; return the
    leads as `plan_claim` takes them."""
    if rows:
        for row in await conn.fetch(_PENDING, [r[0] for r in rows], [r[1] for r in rows]):
            t = queued(row)
            pending.setdefault((t.account_id, t.lead_id), []).append(t)
    return [((row[0], row[1]), row[2]) for row in rows]


async def claim_requests(
    conn: Any,
    now: float,
    requests: int,
    bulk: BulkRules,
    coalesce: bool,
    epoch: int,
    skip_accounts: Collection[int] = (),
) -> Claim:
    """Claim up to `requests` requests among the oldest due leads; see Store.claim_requests."""
    await q.check_epoch(conn, epoch)
    column = "last_due_at" if coalesce else "first_due_at"
    rows = await conn.fetch(
        f"SELECT account_id, lead_id, last_delivered_at, {column} FROM leads"  # noqa: S608
        f" WHERE {column} <= $1 AND account_id <> ALL($3::bigint[])"
        f" ORDER BY {column}, account_id, lead_id LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        scan_size(requests, bulk),
        sorted(skip_accounts),
    )
    pending: dict[LeadKey, list[QueuedTransition]] = {}
    leads = await _read(conn, rows, pending)
    plan = plan_claim(leads, pending, now, coalesce=coalesce, requests=requests, rules=bulk)
    if more := look_further(plan, requests, len(rows), bulk):
        further = await further_leads(conn, now, rows[-1], more, bulk, coalesce, skip_accounts)
        if further:
            leads += await _read(conn, further, pending)
            plan = plan_claim(leads, pending, now, coalesce=coalesce, requests=requests, rules=bulk)
    out = Claim(claimed=[], superseded=[], stale=[], next_due_at=None)
    for lead_plan in plan.plans:
        await q.apply_plan(conn, lead_plan, now, epoch, out)
    await q.refresh_leads(conn, plan.leads())
    plan.sort_into(out)
    return await q.next_times(conn, now, out)


async def settle_many(
    conn: Any,
    settles: Sequence[Settle],
    now: float,
    batch: BatchRecord | None,
    epoch: int,
) -> int | None:
    """Settle each claim as its own settle would, and record the batch; all or nothing
    (one transaction: a LeaseLost rolls every settle back)."""
    # Every lead locked first, in key order, as every writer takes several: no cycles.
    keys = await conn.fetch(
        "SELECT account_id, lead_id FROM transitions WHERE id = ANY($1::bigint[])",
        [s.transition_id for s in settles],
    )
    await q.lock_leads(conn, [(k[0], k[1]) for k in keys])
    for s in settles:
        assignments, params = _assignments(s, now)
        await q.settle_claim(
            conn,
            s.transition_id,
            assignments,
            params,
            epoch=epoch,
            delivered=s.outcome == "delivered",
        )
    if batch is None:
        return None
    batch_id = await conn.fetchval(
        "INSERT INTO batches (account_id, status, size, http_status, sent_at)"
        " VALUES ($1, $2, $3, $4, $5) RETURNING id",
        batch.account_id,
        str(batch.status),
        batch.size,
        batch.http_status,
        batch.sent_at,
    )
    await conn.execute(
        "UPDATE transitions SET batch_id = $1 WHERE id = ANY($2::bigint[])",
        batch_id,
        [s.transition_id for s in settles if s.outcome != "release"],
    )
    return int(batch_id)


def _assignments(s: Settle, now: float) -> tuple[str, tuple[Any, ...]]:
    attempt = (now, s.http_status, q.text(s.reason))
    if s.outcome == "delivered":
        return q.DELIVERED, attempt
    if s.outcome == "dead":
        return q.DEAD, attempt
    if s.outcome == "release":
        return q.RELEASE, (s.next_attempt_at,)
    return q.RETRY, (*attempt, s.next_attempt_at, int(s.counts), int(s.not_found))
