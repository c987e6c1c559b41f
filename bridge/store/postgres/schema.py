"""The PostgreSQL schema as numbered migrations, applied in order at open.

`schema_migrations` has one row per migration applied. Every missing migration is
applied in ONE transaction that first takes `pg_advisory_xact_lock(MIGRATION_LOCK)`:
replicas starting at once queue on the lock, and each one that gets it re-reads the
version, so each step is applied exactly once; DDL is transactional in PostgreSQL, so
a crash mid-migration leaves the previous version intact. The tables mirror SQLite's
(sqlite/schema.py), with the same meaning; never edit a released migration: append one.
"""

from __future__ import annotations

from typing import Any, Final

from bridge.errors import StorageError

# An arbitrary constant naming "bridge schema migration" among the database's advisory
# locks; the lock is per database, so migrations of different schemas also queue on it.
MIGRATION_LOCK: Final = 0x766F_7879_735F_6D67  # "voxys_mg"

Migration = tuple[str, ...]

MIGRATIONS: tuple[Migration, ...] = (
    # 1: events, the transitions they cause, and per-lead queue state.
    (
        """
        CREATE TABLE events (
            pk bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            source text NOT NULL,
            event_id text NOT NULL,
            occurred_at double precision NOT NULL,
            received_at double precision NOT NULL,
            payload text NOT NULL,  -- JSON as text: keeps \\u0000, which jsonb refuses
            headers text NOT NULL,  -- JSON object
            outcome text NOT NULL,
            rule text,
            reason text,
            UNIQUE (source, event_id)
        )
        """,
        "CREATE INDEX events_outcome_received ON events (outcome, received_at, pk)",
        "CREATE INDEX events_received ON events (received_at, pk)",
        """
        CREATE TABLE transitions (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused
            event_pk bigint NOT NULL REFERENCES events (pk) ON DELETE CASCADE,
            rule text NOT NULL,
            account_id bigint NOT NULL,
            lead_id bigint NOT NULL,
            status text NOT NULL,
            notes text,
            occurred_at double precision NOT NULL,
            created_at double precision NOT NULL,
            state text NOT NULL CHECK (
                state IN ('pending', 'in_flight', 'delivered', 'dead', 'superseded', 'stale')
            ),
            attempts integer NOT NULL DEFAULT 0,
            not_found_attempts integer NOT NULL DEFAULT 0,
            next_attempt_at double precision,
            first_attempt_at double precision,
            last_attempt_at double precision,
            settled_at double precision,  -- when it became delivered, dead, superseded or stale
            http_status integer,
            reason text
        )
        """,
        "CREATE INDEX transitions_lead"
        " ON transitions (account_id, lead_id, state, occurred_at, id)",
        "CREATE INDEX transitions_due ON transitions (state, next_attempt_at)",
        "CREATE INDEX transitions_event ON transitions (event_pk)",
        "CREATE INDEX transitions_dead ON transitions (settled_at, id) WHERE state = 'dead'",
        # One row per lead ever seen; *_due_at cache when the lead can next be claimed
        # without / with coalescing (see sqlite/schema.py). The row is also the lead's lock:
        # whoever changes a lead's transitions holds it (queue.py).
        """
        CREATE TABLE leads (
            account_id bigint NOT NULL,
            lead_id bigint NOT NULL,
            last_delivered_at double precision,
            first_due_at double precision,
            last_due_at double precision,
            PRIMARY KEY (account_id, lead_id)
        )
        """,
        "CREATE INDEX leads_first_due ON leads (first_due_at) WHERE first_due_at IS NOT NULL",
        "CREATE INDEX leads_last_due ON leads (last_due_at) WHERE last_due_at IS NOT NULL",
        "CREATE TABLE meta (key text PRIMARY KEY, value bigint NOT NULL)",
    ),
    # 2: the fenced delivery lease; claims carry its epoch; one transition per (event, rule).
    (
        # One row. `expires_at` is POSIX seconds by the database's clock (see lease.py).
        """
        CREATE TABLE lease (
            name text PRIMARY KEY,
            holder text,
            epoch bigint NOT NULL,
            expires_at double precision NOT NULL
        )
        """,
        "INSERT INTO lease (name, holder, epoch, expires_at) VALUES ('delivery', NULL, 0, 0)",
        "ALTER TABLE transitions ADD COLUMN claim_epoch bigint",  # the term that claimed it
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
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused
            event_pk bigint NOT NULL REFERENCES events (pk) ON DELETE CASCADE,
            rule text NOT NULL,
            account_id bigint NOT NULL,
            lead_id bigint NOT NULL,
            status text NOT NULL,
            notes text,
            occurred_at double precision NOT NULL,  -- of the event that scheduled it
            due_at double precision NOT NULL,
            created_at double precision NOT NULL,
            state text NOT NULL CHECK (state IN ('scheduled', 'fired', 'cancelled')),
            settled_at double precision,  -- when it fired or was cancelled
            transition_id bigint,  -- the transition it fired
            cause text,  -- why it was cancelled
            UNIQUE (event_pk, rule)
        )
        """,
        # Only scheduled ones wait: the delivery worker reads the earliest of this index.
        "CREATE INDEX followups_due ON followups (due_at, id) WHERE state = 'scheduled'",
        # Storing a transition looks up its lead's scheduled ones; the ledger all of them.
        "CREATE INDEX followups_lead ON followups (account_id, lead_id, state)",
        "ALTER TABLE transitions ADD COLUMN origin text NOT NULL DEFAULT 'event'"
        " CHECK (origin IN ('event', 'followup'))",
        "CREATE UNIQUE INDEX transitions_event_rule_origin ON transitions (event_pk, rule, origin)",
        "DROP INDEX transitions_event_rule",  # the wider key keeps its guarantee
    ),
    # Bulk delivery (bridge/bulk.py): each bulk request that got an answer, and the one a
    # transition's last attempt went in. Self-contained: relies on migrations 1 and 2 only.
    (
        """
        CREATE TABLE batches (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- never reused
            account_id bigint NOT NULL,
            status text NOT NULL,
            size integer NOT NULL,  -- leads in the request
            http_status integer,
            sent_at double precision NOT NULL
        )
        """,
        "ALTER TABLE transitions ADD COLUMN batch_id bigint",
    ),
    # 5: the pending transitions that may go in bulk under `notes: keep`, oldest due
    # first: a bulk claim finds them past a front of PATCH-only leads (bulk.py, FURTHER)
    # without walking that front. Under `notes: drop` transitions_due serves instead.
    (
        "CREATE INDEX transitions_bulk ON transitions (next_attempt_at, id)"
        " WHERE state = 'pending' AND notes IS NULL AND not_found_attempts = 0",
    ),
)

SCHEMA_VERSION: Final = len(MIGRATIONS)

_VERSIONS = """
    CREATE TABLE IF NOT EXISTS schema_migrations (
        version integer PRIMARY KEY,
        applied_at timestamptz NOT NULL DEFAULT now()
    )
"""


async def schema_version(conn: Any) -> int:
    """The number of migrations applied in the connection's current schema (0 if none)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))


def _too_new(version: int) -> StorageError:
    return StorageError(
        f"postgresql open: database schema version {version} is newer than this "
        f"bridge's ({SCHEMA_VERSION}); upgrade the bridge"
    )


async def migrate(conn: Any, *, schema: str | None, read_only: bool = False) -> int:
    """Apply the missing migrations under the advisory lock; return the version.

    `schema` (already validated as an identifier) is created when missing. A read-only
    store only checks that the schema is current.
    """
    if read_only:
        version = await schema_version(conn)
        if version > SCHEMA_VERSION:
            raise _too_new(version)
        if version < SCHEMA_VERSION:
            raise StorageError(
                f"postgresql open: database schema version {version} needs migrating to "
                f"{SCHEMA_VERSION}, which a read-only store cannot do"
            )
        return version
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        if schema is not None:
            await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            current = await conn.fetchval("SELECT current_schema()")
            if current != schema:  # search_path is set from the same validated name
                raise StorageError(f"postgresql open: search_path does not start at {schema}")
        await conn.execute(_VERSIONS)
        version = await schema_version(conn)
        if version > SCHEMA_VERSION:
            raise _too_new(version)
        for number in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[number - 1]:
                await conn.execute(statement)
            await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", number)
    return SCHEMA_VERSION
