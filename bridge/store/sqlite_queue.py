"""The delivery queue in SQLite: queueing, claiming per lead, and settling transitions.

Plain functions over a connection inside the writer's transaction. Each lead's row in
`leads` caches when the lead can next be claimed (see schema.py), and every function
that changes a lead's transitions recomputes that row, so `claim_due` reads only the
leads that are due instead of scanning the backlog.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any, Final

from bridge.models import Transition
from bridge.store.base import Claim
from bridge.store.rows import queued

LeadKey = tuple[int, int]

# A list of ids travels as one JSON parameter: no placeholder lists, no chunking.
IN_IDS: Final = "IN (SELECT value FROM json_each(?))"

QUEUED = (
    "t.id, e.source, e.event_id, t.rule, t.account_id, t.lead_id, t.status, t.notes,"
    " t.occurred_at, t.created_at, t.attempts, t.not_found_attempts, t.next_attempt_at"
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
) -> None:
    """`sql` with its `{values}` filled by `rows`, in as few statements as SQLite takes.

    One statement runs in one call into SQLite; `executemany` would step once per row,
    handing the GIL back and forth each time.
    """
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        values = [value for each in chunk for value in each]
        conn.execute(sql.format(values=placeholders(len(chunk), row)), values)


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


def insert_transitions(conn: sqlite3.Connection, rows: Sequence[TransitionRow]) -> set[LeadKey]:
    """Insert pending transitions and their leads' rows; return the leads touched."""
    if not rows:
        return set()
    execute_rows(conn, _INSERT_TRANSITIONS, "(?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)", rows)
    keys = {(row[2], row[3]) for row in rows}
    execute_rows(conn, _INSERT_LEADS, "(?, ?)", list(keys))
    return keys


def queue_transitions(
    conn: sqlite3.Connection,
    event_pk: int,
    occurred_at: float,
    transitions: Sequence[Transition],
    now: float,
) -> set[LeadKey]:
    """Insert an event's transitions as pending and due now; return the leads touched."""
    return insert_transitions(conn, transition_rows(event_pk, occurred_at, transitions, now))


def _settle(conn: sqlite3.Connection, rows: list[Any], state: str, now: float) -> None:
    conn.executemany(
        "UPDATE transitions SET state = ?, settled_at = ?, next_attempt_at = NULL WHERE id = ?",
        [(state, now, row[0]) for row in rows],
    )


def _pending(conn: sqlite3.Connection, key: LeadKey, limit: int = -1) -> list[Any]:
    return conn.execute(
        f"SELECT {QUEUED} {FROM} WHERE t.account_id = ? AND t.lead_id = ?"
        " AND t.state = 'pending' ORDER BY t.occurred_at, t.id LIMIT ?",
        (*key, limit),
    ).fetchall()


def _claim_lead(
    conn: sqlite3.Connection,
    key: LeadKey,
    last_delivered: float | None,
    now: float,
    coalesce: bool,
    out: Claim,
) -> None:
    """Settle one due lead's stale or superseded transitions and claim its head, if any."""

    def is_stale(row: Any) -> bool:
        return last_delivered is not None and row[8] < last_delivered

    if coalesce:
        rows = _pending(conn, key)
        if not rows or rows[-1][12] > now:
            return
        head, older = rows[-1], rows[:-1]
        if is_stale(head):  # then every older one is stale too
            _settle(conn, rows, "stale", now)
            out.stale.extend(map(queued, rows))
            return
        _settle(conn, older, "superseded", now)
        out.superseded.extend(map(queued, older))
        conn.execute("UPDATE transitions SET state = 'in_flight' WHERE id = ?", (head[0],))
        out.claimed.append(queued(head))
        return
    while rows := _pending(conn, key, 64):  # usually one row: only stale heads need more
        stale = []
        for row in rows:
            if row[12] > now:
                break
            if is_stale(row):
                stale.append(row)
                continue
            conn.execute("UPDATE transitions SET state = 'in_flight' WHERE id = ?", (row[0],))
            out.claimed.append(queued(row))
            break
        _settle(conn, stale, "stale", now)
        out.stale.extend(map(queued, stale))
        if len(stale) < len(rows):
            return


def claim_due(conn: sqlite3.Connection, now: float, limit: int, coalesce: bool) -> Claim:
    """Claim up to `limit` due leads' heads; see Store.claim_due for the rules."""
    column = "last_due_at" if coalesce else "first_due_at"
    out = Claim(claimed=[], superseded=[], stale=[], next_due_at=None)
    while len(out.claimed) < limit:
        # A processed lead drops out of this query: it is now in flight, due later, or
        # empty. So each round makes progress and the loop ends.
        leads = conn.execute(
            f"SELECT account_id, lead_id, last_delivered_at FROM leads"  # noqa: S608
            f" WHERE {column} <= ? ORDER BY {column} LIMIT ?",
            (now, limit - len(out.claimed)),
        ).fetchall()
        if not leads:
            break
        for account_id, lead_id, last_delivered in leads:
            key = (account_id, lead_id)
            _claim_lead(conn, key, last_delivered, now, coalesce, out)
            refresh_leads(conn, [key])
    (next_due_at,) = conn.execute(
        "SELECT min(next_attempt_at) FROM transitions"
        " WHERE state = 'pending' AND next_attempt_at > ?",
        (now,),
    ).fetchone()
    return Claim(out.claimed, out.superseded, out.stale, next_due_at)


def recover_claims(conn: sqlite3.Connection) -> int:
    """Put every in_flight transition back to pending."""
    keys = conn.execute(
        "SELECT DISTINCT account_id, lead_id FROM transitions WHERE state = 'in_flight'"
    ).fetchall()
    count = conn.execute(
        "UPDATE transitions SET state = 'pending' WHERE state = 'in_flight'"
    ).rowcount
    refresh_leads(conn, keys)
    return count


def _in_flight(conn: sqlite3.Connection, transition_id: int) -> Any:
    return conn.execute(
        "SELECT account_id, lead_id, occurred_at FROM transitions"
        " WHERE id = ? AND state = 'in_flight'",
        (transition_id,),
    ).fetchone()


_ATTEMPT = (
    "first_attempt_at = coalesce(first_attempt_at, :now), last_attempt_at = :now,"
    " http_status = :http_status, reason = :reason"
)


def settle_claim(
    conn: sqlite3.Connection,
    transition_id: int,
    assignments: str,
    params: dict[str, Any],
    *,
    delivered: bool = False,
) -> None:
    """Apply `assignments` to an in_flight transition and refresh its lead.

    A transition no longer in flight (its claim was recovered meanwhile) is left alone:
    a claim's outcome only applies to the claim.
    """
    row = _in_flight(conn, transition_id)
    if row is None:
        return
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
    "state = 'delivered', settled_at = :now, next_attempt_at = NULL,"
    f" attempts = attempts + 1, {_ATTEMPT}"
)
DEAD = (
    "state = 'dead', settled_at = :now, next_attempt_at = NULL,"
    f" attempts = attempts + 1, {_ATTEMPT}"
)
RETRY = (
    "state = 'pending', next_attempt_at = :next, attempts = attempts + :counts,"
    f" not_found_attempts = not_found_attempts + :not_found, {_ATTEMPT}"
)
RELEASE = "state = 'pending', next_attempt_at = :next"


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
