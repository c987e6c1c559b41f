"""Bulk delivery in PostgreSQL: claiming several leads' heads as requests, and settling a
batch's transitions in one transaction (bridge/bulk.py decides; this carries it out).

Async functions over one connection inside the caller's transaction, with queue.py's
lead locks: the scanned leads are locked FOR UPDATE SKIP LOCKED, as `claim_due` does,
so two claimers never take the same lead and never wait on each other.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from bridge.bulk import plan_claim, scan_size
from bridge.store.base import BatchRecord, BulkRules, Claim, QueuedTransition, Settle
from bridge.store.postgres import queue as q
from bridge.store.rows import queued

_PENDING = f"""
    SELECT {q.QUEUED} FROM {q.KEYS}
    JOIN transitions t ON t.account_id = k.a AND t.lead_id = k.l AND t.state = 'pending'
    JOIN events e ON e.pk = t.event_pk
    ORDER BY t.account_id, t.lead_id, t.occurred_at, t.id
"""  # noqa: S608 - constant fragments only


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
    leads = await conn.fetch(
        f"SELECT account_id, lead_id, last_delivered_at FROM leads"  # noqa: S608
        f" WHERE {column} <= $1 AND account_id <> ALL($3::bigint[])"
        f" ORDER BY {column}, account_id, lead_id LIMIT $2 FOR UPDATE SKIP LOCKED",
        now,
        scan_size(requests, bulk),
        sorted(skip_accounts),
    )
    pending: dict[tuple[int, int], list[QueuedTransition]] = {}
    if leads:
        rows = await conn.fetch(_PENDING, [r[0] for r in leads], [r[1] for r in leads])
        for row in rows:
            t = queued(row)
            pending.setdefault((t.account_id, t.lead_id), []).append(t)
    plan = plan_claim(
        [((r[0], r[1]), r[2]) for r in leads],
        pending,
        now,
        coalesce=coalesce,
        requests=requests,
        rules=bulk,
    )
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
