"""The delivery queue in SQLite: queueing, claiming per lead, and settling transitions.

Plain functions over a connection inside the writer's transaction. Each lead's row in
`leads` caches when the lead can next be claimed (see schema.py), and every function
that changes a lead's transitions recomputes that row, so `claim_due` reads only the
leads that are due instead of scanning the backlog.

One concept: the delivery queue's SQL on this backend: queueing, claiming per
lead and settling are statements over the same tables.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from functools import lru_cache
from typing import Any, Final

from bridge.claims import LeadPlan, plan_lead
from bridge.errors import LeaseLost
from bridge.models import Transition
from bridge.store.base import Claim, QueuedTransition
from bridge.store.rows import queued

LeadKey = tuple[int, int]

# A list of ids travels as one JSON parameter: no placeholder lists, no chunking.
IN_IDS: Final = "IN (SELECT value FROM json_each(?))"

QUEUED = (
    "t.id, e.source, e.event_id, t.rule, t.account_id, t.lead_id, t.status, t.notes,"
    " t.occurred_at, t.created_at, t.attempts, t.not_found_attempts, t.next_attempt_at,"
    " t.origin"
)
FROM = "FROM transitions t JOIN events e ON e.pk = t.event_pk"

_SAME_LEAD = "t.account_id = leads.account_id AND t.lead_id = leads.lead_id"
_HEAD = f"""
    SELECT t.next_attempt_at FROM transitions t
    WHERE {_SAME_LEAD} AND t.state = 'pending'
    ORDER BY t.occurred_at {{order}}, t.id {{order}} LIMIT 1
"""  # noqa: S608
_BUSY = f"""
    EXISTS (SELECT 1 FROM transitions t WHERE {_SAME_LEAD} AND t.state = 'in_flight')
"""  # noqa: S608
# f-strings below join constant SQL fragments only; every value is a bound parameter.
# One statement for a set of leads (`{values}`: `(?, ?)` per lead), joined on the key.
_REFRESH = f"""
    UPDATE leads SET
        first_due_at = CASE WHEN {_BUSY} THEN NULL ELSE ({_HEAD.format(order="ASC")}) END,
        last_due_at = CASE WHEN {_BUSY} THEN NULL ELSE ({_HEAD.format(order="DESC")}) END
    FROM (VALUES {{values}}) AS k
    WHERE leads.account_id = k.column1 AND leads.lead_id = k.column2
"""  # noqa: S608
_INSERT_TRANSITIONS = (
    "INSERT INTO transitions (event_pk, rule, account_id, lead_id, status, notes,"
    " occurred_at, created_at, state, next_attempt_at) VALUES {values}"
    " ON CONFLICT (event_pk, rule, origin) DO NOTHING"
)
_INSERT_LEADS = "INSERT INTO leads (account_id, lead_id) VALUES {values} ON CONFLICT DO NOTHING"
ROWS_PER_STATEMENT: Final = 500  # rows of a multi-row statement (SQLite binds <= 32766 values)

TransitionRow = tuple[Any, ...]  # event_pk, rule, account, lead, status, notes, occurred, now, due


def text(value: str | None) -> str | None:
    """`value` as storable UTF-8: a lone surrogate (valid in JSON, not in UTF-8) is escaped."""
    if value is None or value.isascii():
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


@lru_cache(maxsize=64)
def placeholders(rows: int, row: str) -> str:
    """`row, row, ...` `rows` times: the VALUES of a multi-row statement."""
    return ", ".join([row] * rows)


def execute_rows(
    conn: sqlite3.Connection, sql: str, row: str, rows: Sequence[Sequence[Any]]
) -> int:
    """`sql` with its `{values}` filled by `rows`, in as few statements as SQLite takes;
    returns the rows changed.

    One statement runs in one call into SQLite; `executemany` would step once per row,
    handing the GIL back and forth each time.
    """
    changed = 0
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        values = [value for each in chunk for value in each]
        changed += conn.execute(sql.format(values=placeholders(len(chunk), row)), values).rowcount
    return changed


def refresh_leads(conn: sqlite3.Connection, keys: Iterable[LeadKey]) -> None:
    """Recompute when each lead can next be claimed, after its transitions changed."""
    execute_rows(conn, _REFRESH, "(?, ?)", list(keys))


def transition_rows(
    event_pk: int, occurred_at: float, transitions: Sequence[Transition], now: float
) -> list[TransitionRow]:
    """An event's transitions as rows for `insert_transitions`: pending and due now."""
    tail = (occurred_at, now, now)
    return [
        (event_pk, text(t.rule), t.account_id, t.lead_id, str(t.status), text(t.notes), *tail)
        for t in transitions
    ]


def insert_transitions(
    conn: sqlite3.Connection, rows: Sequence[TransitionRow]
) -> tuple[set[LeadKey], int]:
    """Insert pending transitions and their leads' rows; return the leads touched and how
    many transitions were new (an (event, rule) already queued is skipped)."""
    if not rows:
        return set(), 0
    row = "(?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)"
    inserted = execute_rows(conn, _INSERT_TRANSITIONS, row, rows)
    keys = {(row[2], row[3]) for row in rows}
    execute_rows(conn, _INSERT_LEADS, "(?, ?)", list(keys))
    return keys, inserted


def queue_transitions(
    conn: sqlite3.Connection,
    event_pk: int,
    occurred_at: float,
    transitions: Sequence[Transition],
    now: float,
) -> tuple[set[LeadKey], int]:
    """Insert an event's transitions as pending and due now; return the leads touched and
    how many were new (an (event, rule) already queued is never queued again)."""
    return insert_transitions(conn, transition_rows(event_pk, occurred_at, transitions, now))


def check_epoch(conn: sqlite3.Connection, epoch: int) -> None:
    """Raise LeaseLost unless `epoch` is the delivery lease's current, held epoch."""
    row = conn.execute(
        "SELECT holder IS NOT NULL AND epoch = ? FROM lease WHERE name = 'delivery'", (epoch,)
    ).fetchone()
    if row is None or not row[0]:
        raise LeaseLost(epoch)


def _settle(
    conn: sqlite3.Connection, rows: Sequence[QueuedTransition], state: str, now: float
) -> None:
    conn.executemany(
        "UPDATE transitions SET state = ?, settled_at = ?, next_attempt_at = NULL WHERE id = ?",
        [(state, now, t.id) for t in rows],
    )


def _pending(
    conn: sqlite3.Connection, key: LeadKey, limit: int = -1, after: Any = None
) -> list[QueuedTransition]:
    rows = conn.execute(
        f"SELECT {QUEUED} {FROM} WHERE t.account_id = ? AND t.lead_id = ?"
        " AND t.state = 'pending' AND (t.occurred_at, t.id) > (?, ?)"
        " ORDER BY t.occurred_at, t.id LIMIT ?",
        (*key, *(after or (float("-inf"), 0)), limit),
    ).fetchall()
    return [queued(row) for row in rows]


PAGE: Final = 64  # pending transitions read at a time without coalescing


def apply_plan(
    conn: sqlite3.Connection, plan: LeadPlan, now: float, epoch: int, out: Claim
) -> QueuedTransition | None:
    """Settle a lead plan's stale and superseded transitions (listed in `out`) and put
    its claim in flight under `epoch`; return the claim. The caller refreshes the lead."""
    _settle(conn, plan.stale, "stale", now)
    _settle(conn, plan.superseded, "superseded", now)
    out.stale.extend(plan.stale)
    out.superseded.extend(plan.superseded)
    if plan.claim is not None:
        conn.execute(
            "UPDATE transitions SET state = 'in_flight', claim_epoch = ? WHERE id = ?",
            (epoch, plan.claim.id),
        )
    return plan.claim


def _claim_lead(
    conn: sqlite3.Connection,
    key: LeadKey,
    last_delivered: float | None,
    now: float,
    coalesce: bool,
    epoch: int,
    out: Claim,
) -> None:
    """Settle one due lead's stale or superseded transitions and claim its head, if any."""
    after = None
    while True:
        # With coalescing the plan needs every pending transition; without, one page
        # usually decides (only a run of stale heads needs the next).
        page = _pending(conn, key, -1 if coalesce else PAGE, after)
        plan = plan_lead(page, last_delivered, now, coalesce=coalesce)
        claimed = apply_plan(conn, plan, now, epoch, out)
        if claimed is not None:
            out.claimed.append(claimed)
            return
        if coalesce or len(plan.stale) < PAGE:
            return
        after = (page[-1].occurred_at, page[-1].id)


def claim_due(
    conn: sqlite3.Connection,
    now: float,
    limit: int,
    coalesce: bool,
    epoch: int,
    skip_accounts: Collection[int] = (),
    only_account: int | None = None,
) -> Claim:
    """Claim up to `limit` due leads' heads; see Store.claim_due for the rules."""
    check_epoch(conn, epoch)
    column = "last_due_at" if coalesce else "first_due_at"
    where = f"{column} <= ?"
    params: list[Any] = [now]
    if skip_accounts:
        where += f" AND account_id NOT {IN_IDS}"
        params.append(json.dumps(sorted(skip_accounts)))
    if only_account is not None:
        where += " AND account_id = ?"
        params.append(only_account)
    out = Claim(claimed=[], superseded=[], stale=[], next_due_at=None)
    while len(out.claimed) < limit:
        # A processed lead drops out of this query: it is now in flight, due later, or
        # empty. So each round makes progress and the loop ends.
        leads = conn.execute(
            f"SELECT account_id, lead_id, last_delivered_at FROM leads"  # noqa: S608
            f" WHERE {where} ORDER BY {column} LIMIT ?",
            (*params, limit - len(out.claimed)),
        ).fetchall()
        if not leads:
            break
        for account_id, lead_id, last_delivered in leads:
            key = (account_id, lead_id)
            _claim_lead(conn, key, last_delivered, now, coalesce, epoch, out)
            refresh_leads(conn, [key])
    return next_times(conn, now, out)


def next_times(conn: sqlite3.Connection, now: float, out: Claim) -> Claim:
    """`out` with the earliest future retry and the earliest scheduled follow-up."""
    (next_due_at,) = conn.execute(
        "SELECT min(next_attempt_at) FROM transitions"
        " WHERE state = 'pending' AND next_attempt_at > ?",
        (now,),
    ).fetchone()
    (followup_due_at,) = conn.execute(
        "SELECT min(due_at) FROM followups WHERE state = 'scheduled'"
    ).fetchone()
    return Claim(out.claimed, out.superseded, out.stale, next_due_at, followup_due_at, out.batches)


def expire_pending(
    conn: sqlite3.Connection,
    account_id: int,
    created_before: float,
    now: float,
    reason: str,
    http_status: int | None,
    epoch: int,
) -> list[QueuedTransition]:
    """Dead-letter an account's pending transitions created before `created_before`."""
    check_epoch(conn, epoch)
    rows = conn.execute(
        f"SELECT {QUEUED} {FROM} WHERE t.account_id = ? AND t.state = 'pending'"
        " AND t.created_at < ?",
        (account_id, created_before),
    ).fetchall()
    expired = [queued(row) for row in rows]
    conn.executemany(
        "UPDATE transitions SET state = 'dead', settled_at = ?, next_attempt_at = NULL,"
        " reason = ?, http_status = ? WHERE id = ?",
        [(now, text(reason), http_status, t.id) for t in expired],
    )
    refresh_leads(conn, {(t.account_id, t.lead_id) for t in expired})
    return expired


def recover_claims(conn: sqlite3.Connection, epoch: int) -> int:
    """Put every in_flight transition claimed in an earlier term back to pending."""
    check_epoch(conn, epoch)
    earlier = "state = 'in_flight' AND coalesce(claim_epoch, -1) <> ?"
    keys = conn.execute(
        f"SELECT DISTINCT account_id, lead_id FROM transitions WHERE {earlier}",  # noqa: S608
        (epoch,),
    ).fetchall()
    count = conn.execute(
        f"UPDATE transitions SET state = 'pending', claim_epoch = NULL WHERE {earlier}",  # noqa: S608
        (epoch,),
    ).rowcount
    refresh_leads(conn, keys)
    return count


def _in_flight(conn: sqlite3.Connection, transition_id: int, epoch: int) -> Any:
    return conn.execute(
        "SELECT account_id, lead_id, occurred_at FROM transitions"
        " WHERE id = ? AND state = 'in_flight' AND claim_epoch = ?",
        (transition_id, epoch),
    ).fetchone()


_ATTEMPT = (
    "first_attempt_at = coalesce(first_attempt_at, :now), last_attempt_at = :now,"
    " http_status = :http_status, reason = :reason, batch_id = NULL"
)


def settle_claim(
    conn: sqlite3.Connection,
    transition_id: int,
    assignments: str,
    params: dict[str, Any],
    *,
    epoch: int,
    delivered: bool = False,
) -> None:
    """Apply `assignments` to a transition in flight under `epoch` and refresh its lead.

    Raises LeaseLost when the epoch is no longer current or the claim is no longer this
    term's (a newer holder recovered it): a claim's outcome only applies to the claim.
    """
    check_epoch(conn, epoch)
    row = _in_flight(conn, transition_id, epoch)
    if row is None:
        raise LeaseLost(epoch)
    sql = f"UPDATE transitions SET {assignments} WHERE id = :id"  # noqa: S608 (a constant below)
    conn.execute(sql, {**params, "id": transition_id})
    if delivered:  # the lead's newest delivered time only moves forward
        conn.execute(
            "UPDATE leads SET last_delivered_at = max(coalesce(last_delivered_at, :o), :o)"
            " WHERE account_id = :a AND lead_id = :l",
            {"o": row[2], "a": row[0], "l": row[1]},
        )
    refresh_leads(conn, [(row[0], row[1])])


DELIVERED = (
    "state = 'delivered', settled_at = :now, next_attempt_at = NULL, claim_epoch = NULL,"
    f" attempts = attempts + 1, {_ATTEMPT}"
)
DEAD = (
    "state = 'dead', settled_at = :now, next_attempt_at = NULL, claim_epoch = NULL,"
    f" attempts = attempts + 1, {_ATTEMPT}"
)
RETRY = (
    "state = 'pending', next_attempt_at = :next, claim_epoch = NULL, attempts = attempts + :counts,"
    f" not_found_attempts = not_found_attempts + :not_found, {_ATTEMPT}"
)
RELEASE = "state = 'pending', next_attempt_at = :next, claim_epoch = NULL"


def retry_dead(conn: sqlite3.Connection, ids: Sequence[int] | None, now: float) -> int:
    """Dead transitions back to pending, due now, with fresh attempt counts."""
    select = "SELECT id, account_id, lead_id FROM transitions WHERE state = 'dead'"
    if ids is None:
        rows = conn.execute(select).fetchall()
    else:
        rows = conn.execute(f"{select} AND id {IN_IDS}", (json.dumps(list(ids)),)).fetchall()
    # first_attempt_at and last_attempt_at stay: they are the transition's history.
    conn.executemany(
        "UPDATE transitions SET state = 'pending', next_attempt_at = ?, attempts = 0,"
        " not_found_attempts = 0, settled_at = NULL, http_status = NULL, reason = NULL"
        " WHERE id = ?",
        [(now, row[0]) for row in rows],
    )
    refresh_leads(conn, {(row[1], row[2]) for row in rows})
    return len(rows)
