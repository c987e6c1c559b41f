"""The delivery queue in PostgreSQL: queueing, claiming per lead, and settling transitions.

Async functions over one connection inside the caller's READ COMMITTED transaction.
Same rules as sqlite_queue.py, made safe for several connections and processes:

Lead lock. The lead's row in `leads` is its lock. Every function that changes a
lead's transitions holds that row (FOR UPDATE) before it reads them to decide or to
recompute the row's *_due_at cache, and takes several rows in (account_id, lead_id)
order, so writers of one lead are serialised and cannot deadlock one another. As each
statement of a READ COMMITTED transaction sees everything committed before it began,
whatever a lead-lock holder reads after taking the lock is the lead's current state.

Claiming. `claim_due` locks due leads with FOR UPDATE SKIP LOCKED: two claimers (in one
process or in two) never take the same lead, never wait on each other, and a lead that
has an in_flight transition has a NULL due time, so it is never claimed twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final

from bridge.models import Transition
from bridge.store.base import Claim
from bridge.store.rows import queued

LeadKey = tuple[int, int]

QUEUED: Final = (
    "t.id, e.source, e.event_id, t.rule, t.account_id, t.lead_id, t.status, t.notes,"
    " t.occurred_at, t.created_at, t.attempts, t.not_found_attempts, t.next_attempt_at"
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
) -> set[LeadKey]:
    """Insert transitions (one per event_pk/occurred_at) pending and due now; lock their leads.

    The caller refreshes the returned leads once everything is inserted.
    """
    if not transitions:
        return set()
    await conn.execute(
        "INSERT INTO transitions (event_pk, rule, account_id, lead_id, status, notes,"
        " occurred_at, created_at, state, next_attempt_at)"
        " SELECT *, $8::float8, 'pending', $8::float8 FROM unnest($1::bigint[], $2::text[],"
        " $3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::float8[])",
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
    return keys


async def _settle(conn: Any, rows: list[Any], state: str, now: float) -> None:
    if rows:
        await conn.execute(
            "UPDATE transitions SET state = $1, settled_at = $2, next_attempt_at = NULL"
            " WHERE id = ANY($3::bigint[])",
            state,
            now,
            [row[0] for row in rows],
        )


async def _pending(conn: Any, key: LeadKey, limit: int | None = None) -> list[Any]:
    rows: list[Any] = await conn.fetch(
        f"SELECT {QUEUED} {FROM} WHERE t.account_id = $1 AND t.lead_id = $2"
        " AND t.state = 'pending' ORDER BY t.occurred_at, t.id LIMIT $3",
        *key,
        limit,
    )
    return rows


async def _claim(conn: Any, row: Any, out: Claim) -> None:
    await conn.execute("UPDATE transitions SET state = 'in_flight' WHERE id = $1", row[0])
    out.claimed.append(queued(row))


async def _claim_lead(
    conn: Any, key: LeadKey, last_delivered: float | None, now: float, coalesce: bool, out: Claim
) -> None:
    """Settle one locked, due lead's stale or superseded transitions and claim its head."""

    def is_stale(row: Any) -> bool:
        return last_delivered is not None and row[8] < last_delivered

    if coalesce:
        rows = await _pending(conn, key)
        if not rows or rows[-1][12] > now:
            return
        head, older = rows[-1], rows[:-1]
        if is_stale(head):  # then every older one is stale too
            await _settle(conn, rows, "stale", now)
            out.stale.extend(map(queued, rows))
            return
        await _settle(conn, older, "superseded", now)
        out.superseded.extend(map(queued, older))
        await _claim(conn, head, out)
        return
    while rows := await _pending(conn, key, 64):  # usually one row: only stale heads need more
        stale = []
        for row in rows:
            if row[12] > now:
                break
            if is_stale(row):
                stale.append(row)
                continue
            await _claim(conn, row, out)
            break
        await _settle(conn, stale, "stale", now)
        out.stale.extend(map(queued, stale))
        if len(stale) < len(rows):
            return


async def claim_due(conn: Any, now: float, limit: int, coalesce: bool) -> Claim:
    """Claim up to `limit` due leads' heads; see Store.claim_due for the rules."""
    column = "last_due_at" if coalesce else "first_due_at"
    out = Claim(claimed=[], superseded=[], stale=[], next_due_at=None)
    while len(out.claimed) < limit:
        # Leads locked by another claimer (or by a writer) are skipped, not waited for;
        # a lead processed here drops out of this query, so each round makes progress.
        leads = await conn.fetch(
            f"SELECT account_id, lead_id, last_delivered_at FROM leads"  # noqa: S608
            f" WHERE {column} <= $1 ORDER BY {column} LIMIT $2 FOR UPDATE SKIP LOCKED",
            now,
            limit - len(out.claimed),
        )
        if not leads:
            break
        for account_id, lead_id, last_delivered in leads:
            key = (account_id, lead_id)
            await _claim_lead(conn, key, last_delivered, now, coalesce, out)
            await refresh_leads(conn, [key])
    next_due_at = await conn.fetchval(
        "SELECT min(next_attempt_at) FROM transitions"
        " WHERE state = 'pending' AND next_attempt_at > $1",
        now,
    )
    return Claim(out.claimed, out.superseded, out.stale, next_due_at)


async def recover_claims(conn: Any) -> int:
    """Put every in_flight transition back to pending."""
    rows = await conn.fetch(
        "SELECT DISTINCT account_id, lead_id FROM transitions WHERE state = 'in_flight'"
    )
    keys = [(row[0], row[1]) for row in rows]
    await lock_leads(conn, keys)
    accounts, leads = _arrays(keys)
    # Only the leads locked above: an in_flight claimed since is a live claim.
    status = await conn.execute(
        f"UPDATE transitions t SET state = 'pending' FROM {KEYS}"  # noqa: S608
        " WHERE t.account_id = k.a AND t.lead_id = k.l AND t.state = 'in_flight'",
        accounts,
        leads,
    )
    await refresh_leads(conn, keys)
    return _count(status)


def _count(status: str) -> int:
    """The row count of a command status such as 'UPDATE 3'."""
    return int(status.rsplit(" ", 1)[-1])


_ATTEMPT = (
    "first_attempt_at = coalesce(first_attempt_at, $2), last_attempt_at = $2,"
    " http_status = $3, reason = $4"
)
# $1 id, $2 now, $3 http_status, $4 reason, then per statement $5...
DELIVERED: Final = (
    "state = 'delivered', settled_at = $2, next_attempt_at = NULL,"
    f" attempts = attempts + 1, {_ATTEMPT}"
)
DEAD: Final = (
    f"state = 'dead', settled_at = $2, next_attempt_at = NULL, attempts = attempts + 1, {_ATTEMPT}"
)
RETRY: Final = (  # $5 next, $6 counts, $7 not_found
    "state = 'pending', next_attempt_at = $5, attempts = attempts + $6,"
    f" not_found_attempts = not_found_attempts + $7, {_ATTEMPT}"
)


async def settle_claim(
    conn: Any, transition_id: int, assignments: str, params: Sequence[Any], *, delivered: bool
) -> None:
    """Apply `assignments` to an in_flight transition, under its lead's lock; refresh the lead.

    `params` fill $2... of `assignments`. A transition no longer in flight (its claim
    was recovered meanwhile) is left alone: a claim's outcome only applies to the claim.
    """
    key = await conn.fetchrow(
        "SELECT account_id, lead_id FROM transitions WHERE id = $1 AND state = 'in_flight'",
        transition_id,
    )
    if key is None:
        return
    await lock_leads(conn, [(key[0], key[1])])
    occurred_at = await conn.fetchval(  # state re-checked now that the lead is locked
        f"UPDATE transitions SET {assignments}"  # noqa: S608 (a constant above)
        " WHERE id = $1 AND state = 'in_flight' RETURNING occurred_at",
        transition_id,
        *params,
    )
    if occurred_at is None:
        return
    if delivered:  # the lead's newest delivered time only moves forward
        await conn.execute(
            "UPDATE leads SET last_delivered_at = greatest(last_delivered_at, $1)"
            " WHERE account_id = $2 AND lead_id = $3",
            occurred_at,
            key[0],
            key[1],
        )
    await refresh_leads(conn, [(key[0], key[1])])


async def release(conn: Any, transition_id: int, next_attempt_at: float) -> None:
    """Back to pending at `next_attempt_at` without recording an attempt."""
    # RELEASE has no attempt columns, so its parameters are $1 id and $2 next.
    key = await conn.fetchrow(
        "SELECT account_id, lead_id FROM transitions WHERE id = $1 AND state = 'in_flight'",
        transition_id,
    )
    if key is None:
        return
    await lock_leads(conn, [(key[0], key[1])])
    await conn.execute(
        "UPDATE transitions SET state = 'pending', next_attempt_at = $2"
        " WHERE id = $1 AND state = 'in_flight'",
        transition_id,
        next_attempt_at,
    )
    await refresh_leads(conn, [(key[0], key[1])])


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
