"""The SQLite schema as numbered migrations, applied in order at open.

`PRAGMA user_version` holds the number of migrations applied. Each migration runs in
its own `BEGIN IMMEDIATE` transaction together with the version bump, so a crash
mid-migration leaves the previous version intact, and two processes opening the same
file at once apply each step exactly once. Never edit a released migration: append one.
"""

from __future__ import annotations

import sqlite3

from bridge.errors import StorageError

Migration = tuple[str, ...]

MIGRATIONS: tuple[Migration, ...] = (
    # 1: events, the transitions they cause, and per-lead queue state.
    (
        """
        CREATE TABLE events (
            pk INTEGER PRIMARY KEY AUTOINCREMENT,
            source TEXT NOT NULL,
            event_id TEXT NOT NULL,
            occurred_at REAL NOT NULL,
            received_at REAL NOT NULL,
            payload TEXT NOT NULL,  -- JSON
            headers TEXT NOT NULL,  -- JSON object
            outcome TEXT NOT NULL,
            rule TEXT,
            reason TEXT,
            UNIQUE (source, event_id)
        )
        """,
        "CREATE INDEX events_outcome_received ON events (outcome, received_at)",
        "CREATE INDEX events_received ON events (received_at)",
        """
        CREATE TABLE transitions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids are shown to operators
            event_pk INTEGER NOT NULL REFERENCES events (pk) ON DELETE CASCADE,
            rule TEXT NOT NULL,
            account_id INTEGER NOT NULL,
            lead_id INTEGER NOT NULL,
            status TEXT NOT NULL,
            notes TEXT,
            occurred_at REAL NOT NULL,
            created_at REAL NOT NULL,
            state TEXT NOT NULL CHECK (
                state IN ('pending', 'in_flight', 'delivered', 'dead', 'superseded', 'stale')
            ),
            attempts INTEGER NOT NULL DEFAULT 0,
            not_found_attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            first_attempt_at REAL,
            last_attempt_at REAL,
            settled_at REAL,  -- when it became delivered, dead, superseded or stale
            http_status INTEGER,
            reason TEXT
        )
        """,
        # Per-lead queue order (occurred_at, id) and the ledger; rowid ends every index.
        "CREATE INDEX transitions_lead ON transitions (account_id, lead_id, state, occurred_at)",
        "CREATE INDEX transitions_due ON transitions (state, next_attempt_at)",
        "CREATE INDEX transitions_event ON transitions (event_pk)",
        "CREATE INDEX transitions_dead ON transitions (settled_at) WHERE state = 'dead'",
        # One row per lead ever seen. The *_due_at columns say when the lead can next be
        # claimed without / with coalescing: the next_attempt_at of its oldest / newest
        # pending transition, NULL when nothing is pending or one is in flight. They are
        # recomputed whenever a lead's transitions change, so that claiming reads a few
        # index entries instead of scanning every pending transition.
        """
        CREATE TABLE leads (
            account_id INTEGER NOT NULL,
            lead_id INTEGER NOT NULL,
            last_delivered_at REAL,  -- occurred_at of the newest delivered transition
            first_due_at REAL,
            last_due_at REAL,
            PRIMARY KEY (account_id, lead_id)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX leads_first_due ON leads (first_due_at) WHERE first_due_at IS NOT NULL",
        "CREATE INDEX leads_last_due ON leads (last_due_at) WHERE last_due_at IS NOT NULL",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value)",
    ),
    # 2: the fenced delivery lease; claims carry its epoch; one transition per (event, rule).
    (
        # One row. `expires_at` is POSIX seconds by the database's clock (see lease.py).
        """
        CREATE TABLE lease (
            name TEXT PRIMARY KEY,
            holder TEXT,
            epoch INTEGER NOT NULL,
            expires_at REAL NOT NULL
        )
        """,
        "INSERT INTO lease (name, holder, epoch, expires_at) VALUES ('delivery', NULL, 0, 0)",
        "ALTER TABLE transitions ADD COLUMN claim_epoch INTEGER",  # the term that claimed it
        # Two concurrent replays could queue an event's transitions twice before this
        # version. Such copies keep their history under a distinct rule name, so that the
        # unique key can hold from now on.
        """
        UPDATE transitions SET rule = rule || ' (duplicate ' || id || ')'
        WHERE id NOT IN (SELECT min(id) FROM transitions GROUP BY event_pk, rule)
        """,
        "CREATE UNIQUE INDEX transitions_event_rule ON transitions (event_pk, rule)",
        "DROP INDEX transitions_event",  # the unique index serves lookups by event_pk
    ),
    # Follow-ups (bridge/followups.py): scheduled here, fired into transitions of origin
    # 'followup', so a transition is unique per (event, rule, origin). Self-contained: it
    # relies on no migration but 1 and 2, whatever number it ends up with.
    (
        """
        CREATE TABLE followups (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids are shown to operators
            event_pk INTEGER NOT NULL REFERENCES events (pk) ON DELETE CASCADE,
            rule TEXT NOT NULL,
            account_id INTEGER NOT NULL,
            lead_id INTEGER NOT NULL,
            status TEXT NOT NULL,
            notes TEXT,
            occurred_at REAL NOT NULL,  -- of the event that scheduled it
            due_at REAL NOT NULL,
            created_at REAL NOT NULL,
            state TEXT NOT NULL CHECK (state IN ('scheduled', 'fired', 'cancelled')),
            settled_at REAL,  -- when it fired or was cancelled
            transition_id INTEGER,  -- the transition it fired
            cause TEXT,  -- why it was cancelled
            UNIQUE (event_pk, rule)
        )
        """,
        # Only scheduled ones wait: the delivery worker reads the earliest of this index.
        "CREATE INDEX followups_due ON followups (due_at) WHERE state = 'scheduled'",
        # Storing a transition looks up its lead's scheduled ones; the ledger all of them.
        "CREATE INDEX followups_lead ON followups (account_id, lead_id, state)",
        "ALTER TABLE transitions ADD COLUMN origin TEXT NOT NULL DEFAULT 'event'"
        " CHECK (origin IN ('event', 'followup'))",
        "CREATE UNIQUE INDEX transitions_event_rule_origin ON transitions (event_pk, rule, origin)",
        "DROP INDEX transitions_event_rule",  # the wider key keeps its guarantee
    ),
    # Bulk delivery (bridge/bulk.py): each bulk request that got an answer, and the one a
    # transition's last attempt went in. Self-contained: relies on migrations 1 and 2 only.
    (
        """
        CREATE TABLE batches (
            id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: ids are shown to operators
            account_id INTEGER NOT NULL,
            status TEXT NOT NULL,
            size INTEGER NOT NULL,  -- leads in the request
            http_status INTEGER,
            sent_at REAL NOT NULL
        )
        """,
        "ALTER TABLE transitions ADD COLUMN batch_id INTEGER",
    ),
    # 5: the pending transitions that may go in bulk under `notes: keep`, oldest due
    # first: a bulk claim finds them past a front of PATCH-only leads (bulk.py, FURTHER)
    # without walking that front. Under `notes: drop` transitions_due serves instead.
    (
        "CREATE INDEX transitions_bulk ON transitions (next_attempt_at)"
        " WHERE state = 'pending' AND notes IS NULL AND not_found_attempts = 0",
    ),
)

SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """The number of migrations applied to the database behind `conn`."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, *, read_only: bool = False) -> int:
    """Apply the missing migrations (the connection is in autocommit mode); return the version.

    A database newer than this code is refused rather than guessed at. A read-only
    store only checks that the schema is current.
    """
    version = schema_version(conn)
    if version > SCHEMA_VERSION:
        raise StorageError(
            f"sqlite open: database schema version {version} is newer than this "
            f"bridge's ({SCHEMA_VERSION}); upgrade the bridge"
        )
    if version == SCHEMA_VERSION:
        return version
    if read_only:
        raise StorageError(
            f"sqlite open: database schema version {version} needs migrating to "
            f"{SCHEMA_VERSION}, which a read-only store cannot do"
        )
    while True:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = schema_version(conn)  # another process may have migrated meanwhile
            if version >= SCHEMA_VERSION:
                conn.execute("COMMIT")
                return version
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
            # PRAGMA user_version is written to the database header inside this
            # transaction, so it commits or rolls back together with the step.
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
