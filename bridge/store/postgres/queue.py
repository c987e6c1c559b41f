"""The delivery queue in PostgreSQL: queueing, claiming per lead, and settling transitions.

Async functions over one connection inside the caller's READ COMMITTED transaction.
Same rules as sqlite/queue.py, made safe for several connections and processes:

Lead lock. The lead's row in `leads` is its lock. Every function that changes a
lead's transitions holds that row (FOR UPDATE) before it reads them to decide or to
recompute the row's *_due_at cache, and takes several rows in (account_id, lead_id)
order, so writers of one lead are serialised and cannot deadlock one another. As each
statement of a READ COMMITTED transaction sees everything committed before it began,
whatever a lead-lock holder reads after taking the lock is the lead's current state.

Claiming. `claim_due` locks due leads with FOR UPDATE SKIP LOCKED: two claimers (in one
process or in two) never take the same lead, never wait on each other, and a lead that
has an in_flight transition has a NULL due time, so it is never claimed twice.

One concept: the delivery queue's SQL on this backend: queueing, claiming per
lead and settling are statements over the same tables.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any, Final

from bridge.claims import LeadPlan, plan_lead
from bridge.errors import LeaseLost
from bridge.models import Transition
from bridge.store.base import Claim, QueuedTransition
from bridge.store.rows import queued

LeadKey = tuple[int, int]

QUEUED: Final = (
    "t.id, e.source, e.event_id, t.rule, t.account_id, t.lead_id, t.status, t.notes,"
    " t.occurred_at, t.created_at, t.attempts, t.not_found_attempts, t.next_attempt_at,"
    " t.origin"
)
FROM: Final = "FROM transitions t JOIN events e ON e.pk = t.event_pk"
# A set of leads travels as two parallel arrays: one statement for any number of leads.
KEYS: Final = "unnest($1::bigint[], $2::bigint[]) AS k (a, l)"

_HEAD = """
    (SELECT t.next_attempt_at FROM transitions t
     WHERE t.account_id = leads.account_id AND t.lead_id = leads.lead_id
       AND t.state = 'pending'
     ORDER BY t.occurred_at {order}, t.id {order} LIMIT 1)
"""
_BUSY = """
    EXISTS (SELECT 1 FROM transitions t
            WHERE t.account_id = leads.account_id AND t.lead_id = leads.lead_id
              AND t.state = 'in_flight')
"""
# f-strings here join constant SQL fragments only; every value is a bound parameter.
_REFRESH: Final = f"""
    UPDATE leads SET
        first_due_at = CASE WHEN {_BUSY} THEN NULL ELSE {_HEAD.format(order="ASC")} END,
        last_due_at = CASE WHEN {_BUSY} THEN NULL ELSE {_HEAD.format(order="DESC")} END
    FROM {KEYS}
    WHERE leads.account_id = k.a AND leads.lead_id = k.l
"""  # noqa: S608
# The no-op DO UPDATE makes the upsert lock existing rows too, in the input's order.
_LOCK: Final = f"""
    INSERT INTO leads (account_id, lead_id)
    SELECT a, l FROM {KEYS} ORDER BY a, l
    ON CONFLICT (account_id, lead_id) DO UPDATE SET account_id = excluded.account_id
"""  # noqa: S608


def text(value: str | None) -> str | None:
    """`value` as storable PostgreSQL text: lone surrogates and NUL characters escaped."""
    if value is None or (value.isascii() and "\x00" not in value):
        return value
    value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value.replace("\x00", "\\x00")  # text values cannot contain NUL


def _arrays(keys: Iterable[LeadKey]) -> tuple[list[int], list[int]]:
    ordered = sorted(set(keys))
    return [a for a, _ in ordered], [lead for _, lead in ordered]


async def lock_leads(conn: Any, keys: Iterable[LeadKey]) -> None:
    """Create the leads' rows if new and lock them, in key order (no deadlock cycles)."""
    accounts, leads = _arrays(keys)
    if accounts:
        await conn.execute(_LOCK, accounts, leads)


async def refresh_leads(conn: Any, keys: Iterable[LeadKey]) -> None:
    """Recompute when each (locked) lead can next be claimed, after its transitions changed."""
    accounts, leads = _arrays(keys)
    if accounts:
        await conn.execute(_REFRESH, accounts, leads)


async def queue_transitions(
    conn: Any,
    event_pks: Sequence[int],
    occurred: Sequence[float],
    transitions: Sequence[Transition],
    now: float,
) -> tuple[set[LeadKey], int]:
    """Insert transitions (one per event_pk/occurred_at) pending and due now; lock their leads.

    Returns the leads touched and how many transitions were new: an (event, rule)
    already queued is never queued again. The caller refreshes the returned leads once
    everything is inserted.
    """
    if not transitions:
        return set(), 0
    status = await conn.execute(
        "INSERT INTO transitions (event_pk, rule, account_id, lead_id, status, notes,"
        " occurred_at, created_at, state, next_attempt_at)"
        " SELECT *, $8::float8, 'pending', $8::float8 FROM unnest($1::bigint[], $2::text[],"
        " $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::float8[])"
        " ON CONFLICT (event_pk, rule, origin) DO NOTHING",
        list(event_pks),
        [text(t.rule) for t in transitions],
        [t.account_id for t in transitions],
        [t.lead_id for t in transitions],
        [str(t.status) for t in transitions],
        [text(t.notes) for t in transitions],
        list(occurred),
        now,
    )
    keys = {(t.account_id, t.lead_id) for t in transitions}
    await lock_leads(conn, keys)
    return keys, _count(status)


async def check_epoch(conn: Any, epoch: int) -> None:
    """Raise LeaseLost unless `epoch` is the delivery lease's current, held epoch.

    The lease row stays share-locked until the caller's transaction ends, so a new
    holder's acquisition (an UPDATE of the row) waits for this claim or settle to commit
    and cannot slip in between the check and the write.
    """
    current = await conn.fetchval(
        "SELECT holder IS NOT NULL AND epoch = $1 FROM lease WHERE name = 'delivery' FOR SHARE",
        epoch,
    )
    if not current:
        raise LeaseLost(epoch)


async def _settle(conn: Any, rows: Sequence[QueuedTransition], state: str, now: float) -> None:
    if rows:
        await conn.execute(
            "UPDATE transitions SET state = $1, settled_at = $2, next_attempt_at = NULL"
            " WHERE id = ANY($3::bigint[])",
            state,
            now,
            [t.id for t in rows],
        )


async def _pending(
    conn: Any, key: LeadKey, limit: int | None, after: tuple[float, int] | None
) -> list[QueuedTransition]:
    low = after or (float("-inf"), 0)
    rows = await conn.fetch(
        f"SELECT {QUEUED} {FROM} WHERE t.account_id = $1 AND t.lead_id = $2"
        " AND t.state = 'pending' AND (t.occurred_at, t.id) > ($3, $4)"
        " ORDER BY t.occurred_at, t.id LIMIT $5",
        *key,
        *low,
        limit,
    )
    return [queued(row) for row in rows]


PAGE: Final = 64  # pending transitions read at a time without coalescing


async def apply_plan(
    conn: Any, plan: LeadPlan, now: float, epoch: int, out: Claim
) -> QueuedTransition | None:
    """Settle a (locked) lead plan's stale and superseded transitions (listed in `out`)
    and put its claim in flight under `epoch`; return the claim. The caller refreshes
    the lead."""
    await _settle(conn, plan.stale, "stale", now)
    await _settle(conn, plan.superseded, "superseded", now)
    out.stale.extend(plan.stale)
    out.superseded.extend(plan.superseded)
    if plan.claim is not None:
        await conn.execute(
            "UPDATE transitions SET state = 'in_flight', claim_epoch = $2 WHERE id = $1",
            plan.claim.id,
            epoch,
        )
    return plan.claim


async def _claim_lead(
    conn: Any,
    key: LeadKey,
    last_delivered: float | None,
    now: float,
    coalesce: bool,
    epoch: int,
    out: Claim,
) -> None:
    """Settle one locked, due lead's stale or superseded transitions and claim its head."""
    after = None
    while True:
        # With coalescing the plan needs every pending transition; without, one page
        # usually decides (only a run of stale heads needs the next).
        page = await _pending(conn, key, None if coalesce else PAGE, after)
        plan = plan_lead(page, last_delivered, now, coalesce=coalesce)
        claimed = await apply_plan(conn, plan, now, epoch, out)
        if claimed is not None:
            out.claimed.append(claimed)
            return
        if coalesce or len(plan.stale) < PAGE:
            return
        after = (page[-1].occurred_at, page[-1].id)


async def claim_due(
    conn: Any,
    now: float,
    limit: int,
    coalesce: bool,
    epoch: int,
    skip_accounts: Collection[int] = (),
    only_account: int | None = None,
) -> Claim:
    """Claim up to `limit` due leads' heads; see Store.claim_due for the rules."""
    await check_epoch(conn, epoch)
    column = "last_due_at" if coalesce else "first_due_at"
    out = Claim(claimed=[], superseded=[], stale=[], next_due_at=None)
    while len(out.claimed) < limit:
        # Leads locked by another claimer (or by a writer) are skipped, not waited for;
        # a lead processed here drops out of this query, so each round makes progress.
        leads = await conn.fetch(
            f"SELECT account_id, lead_id, last_delivered_at FROM leads"  # noqa: S608
            f" WHERE {column} <= $1 AND account_id <> ALL($3::bigint[])"
            " AND ($4::bigint IS NULL OR account_id = $4)"
            f" ORDER BY {column} LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit - len(out.claimed),
            sorted(skip_accounts),
            only_account,
        )
        if not leads:
            break
        for account_id, lead_id, last_delivered in leads:
            key = (account_id, lead_id)
            await _claim_lead(conn, key, last_delivered, now, coalesce, epoch, out)
            await refresh_leads(conn, [key])
    return await next_times(conn, now, out)


async def next_times(conn: Any, now: float, out: Claim) -> Claim:
    """`out` with the earliest future retry and the earliest scheduled follow-up."""
    next_due_at = await conn.fetchval(
        "SELECT min(next_attempt_at) FROM transitions"
        " WHERE state = 'pending' AND next_attempt_at > $1",
        now,
    )
    followup_due_at = await conn.fetchval(
        "SELECT min(due_at) FROM followups WHERE state = 'scheduled'"
    )
    return Claim(out.claimed, out.superseded, out.stale, next_due_at, followup_due_at, out.batches)


async def expire_pending(
    conn: Any,
    account_id: int,
    created_before: float,
    now: float,
    reason: str,
    http_status: int | None,
    epoch: int,
) -> list[QueuedTransition]:
    """Dead-letter an account's pending transitions created before `created_before`."""
    await check_epoch(conn, epoch)
    keys = await conn.fetch(
        "SELECT DISTINCT account_id, lead_id FROM transitions"
        " WHERE account_id = $1 AND state = 'pending' AND created_at < $2",
        account_id,
        created_before,
    )
    await lock_leads(conn, [(k[0], k[1]) for k in keys])
    rows = await conn.fetch(  # re-read under the leads' locks
        f"SELECT {QUEUED} {FROM} WHERE t.account_id = $1 AND t.state = 'pending'"
        " AND t.created_at < $2",
        account_id,
        created_before,
    )
    expired = [queued(row) for row in rows]
    if expired:
        await conn.execute(
            "UPDATE transitions SET state = 'dead', settled_at = $1, next_attempt_at = NULL,"
            " reason = $2, http_status = $3 WHERE id = ANY($4::bigint[])",
            now,
            text(reason),
            http_status,
            [t.id for t in expired],
        )
    await refresh_leads(conn, {(t.account_id, t.lead_id) for t in expired})
    return expired


async def recover_claims(conn: Any, epoch: int) -> int:
    """Put every in_flight transition claimed in an earlier term back to pending."""
    await check_epoch(conn, epoch)
    rows = await conn.fetch(
        "SELECT DISTINCT account_id, lead_id FROM transitions"
        " WHERE state = 'in_flight' AND claim_epoch IS DISTINCT FROM $1",
        epoch,
    )
    keys = [(row[0], row[1]) for row in rows]
    await lock_leads(conn, keys)
    accounts, leads = _arrays(keys)
    # Only the leads locked above, and only earlier terms' claims.
    status = await conn.execute(
        f"UPDATE transitions t SET state = 'pending', claim_epoch = NULL FROM {KEYS}"  # noqa: S608
        " WHERE t.account_id = k.a AND t.lead_id = k.l AND t.state = 'in_flight'"
        " AND t.claim_epoch IS DISTINCT FROM $3",
        accounts,
        leads,
        epoch,
    )
    await refresh_leads(conn, keys)
    return _count(status)


def _count(status: str) -> int:
    """The row count of a command status such as 'UPDATE 3'."""
    return int(status.rsplit(" ", 1)[-1])


_ATTEMPT = (
    "first_attempt_at = coalesce(first_attempt_at, $3), last_attempt_at = $3,"
    " http_status = $4, reason = $5, batch_id = NULL"
)
# $1 id, $2 epoch, $3 now, $4 http_status, $5 reason, then per statement $6...
DELIVERED: Final = (
    "state = 'delivered', settled_at = $3, next_attempt_at = NULL, claim_epoch = NULL,"
    f" attempts = attempts + 1, {_ATTEMPT}"
)
DEAD: Final = (
    "state = 'dead', settled_at = $3, next_attempt_at = NULL, claim_epoch = NULL,"
    f" attempts = attempts + 1, {_ATTEMPT}"
)
RETRY: Final = (  # $6 next, $7 counts, $8 not_found
    "state = 'pending', next_attempt_at = $6, claim_epoch = NULL, attempts = attempts + $7,"
    f" not_found_attempts = not_found_attempts + $8, {_ATTEMPT}"
)


async def settle_claim(
    conn: Any,
    transition_id: int,
    assignments: str,
    params: Sequence[Any],
    *,
    epoch: int,
    delivered: bool,
) -> None:
    """Apply `assignments` to a transition in flight under `epoch`, under its lead's lock;
    refresh the lead.

    `params` fill $3... of `assignments`. Raises LeaseLost when the epoch is no longer
    current or the claim is no longer this term's (a newer holder recovered it).
    """
    await check_epoch(conn, epoch)
    key = await conn.fetchrow(
        "SELECT account_id, lead_id FROM transitions"
        " WHERE id = $1 AND state = 'in_flight' AND claim_epoch = $2",
        transition_id,
        epoch,
    )
    if key is None:
        raise LeaseLost(epoch)
    await lock_leads(conn, [(key[0], key[1])])
    occurred_at = await conn.fetchval(  # state re-checked now that the lead is locked
        f"UPDATE transitions SET {assignments}"  # noqa: S608 (a constant above)
        " WHERE id = $1 AND state = 'in_flight' AND claim_epoch = $2 RETURNING occurred_at",
        transition_id,
        epoch,
        *params,
    )
    if occurred_at is None:
        raise LeaseLost(epoch)
    if delivered:  # the lead's newest delivered time only moves forward
        await conn.execute(
            "UPDATE leads SET last_delivered_at = greatest(last_delivered_at, $1)"
            " WHERE account_id = $2 AND lead_id = $3",
            occurred_at,
            key[0],
            key[1],
        )
    await refresh_leads(conn, [(key[0], key[1])])


# Releasing records no attempt: $3 is the time it is due again.
RELEASE: Final = "state = 'pending', next_attempt_at = $3, claim_epoch = NULL"


async def retry_dead(conn: Any, ids: Sequence[int] | None, now: float) -> int:
    """Dead transitions back to pending, due now, with fresh attempt counts."""
    select = "SELECT id, account_id, lead_id FROM transitions WHERE state = 'dead'"
    if ids is None:
        rows = await conn.fetch(select)
    else:
        wanted = [i for i in ids if -(2**63) <= i < 2**63]  # others cannot be ids
        rows = await conn.fetch(f"{select} AND id = ANY($1::bigint[])", wanted)
    keys = {(row[1], row[2]) for row in rows}
    await lock_leads(conn, keys)
    # first_attempt_at and last_attempt_at stay: they are the transition's history.
    status = await conn.execute(
        "UPDATE transitions SET state = 'pending', next_attempt_at = $1, attempts = 0,"
        " not_found_attempts = 0, settled_at = NULL, http_status = NULL, reason = NULL"
        " WHERE id = ANY($2::bigint[]) AND state = 'dead'",
        now,
        [row[0] for row in rows],
    )
    await refresh_leads(conn, keys)
    return _count(status)
