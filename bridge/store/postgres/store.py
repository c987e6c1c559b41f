"""PostgresStore: the Store protocol on PostgreSQL, for several bridge replicas on one database.

Connections. An asyncpg pool (1 to 10 connections by default). Every call runs in its
own transaction on one pooled connection: `ingest` is one transaction per call (the
server's own group commit shares WAL flushes between concurrent commits). A
transaction aborted by a deadlock or serialization failure is retried a few times.

Concurrency. Several processes may use one database at once: migrations are applied
under an advisory lock (schema.py) and the queue locks per lead, claiming with
FOR UPDATE SKIP LOCKED (queue.py).

URL. `postgresql://user:password@host:5432/db` (or `postgres://`), with the bridge's own
options taken out of the query string before it reaches asyncpg:
    ?schema=NAME   keep every table in schema NAME (created if missing; the search_path
                   of every pooled connection): several bridges, or tests, share one database
    ?mode=ro       read-only (default_transaction_read_only): writes raise StorageError
    ?pool_max=N    at most N pooled connections (default 10)
Other query parameters (sslmode, ...) are asyncpg's. Error messages never quote the URL.

One concept: the Store protocol on this backend. Each method is one transaction
over the modules beside it (queue, followups, schema, wakeup).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

from bridge.errors import ConfigError, LeaseLost, StorageError
from bridge.models import Evaluation, Event, Outcome
from bridge.store.base import (
    BatchRecord,
    BulkRules,
    Claim,
    Firing,
    FollowUpEntry,
    FollowUpState,
    IngestResult,
    LedgerEntry,
    QueuedTransition,
    Replayed,
    Settle,
    Stats,
    StoredEvent,
    TransitionState,
)
from bridge.store.postgres import bulk as b
from bridge.store.postgres import followups as f
from bridge.store.postgres import queue as q
from bridge.store.postgres.schema import migrate
from bridge.store.rows import FOLLOWUP, LEDGER, json_text, ledger_entry, stored_event

T = TypeVar("T")

PURGE_CHUNK: Final = 1000  # events per purge transaction, so ingest is not held up
RETRIES: Final = 5  # attempts of a transaction that lost a deadlock or serialization race
CONNECT_TIMEOUT: Final = 10.0  # seconds
# No statement of ours runs long; one that does is waiting on a dead connection (a
# network that drops packets instead of refusing them). Bounded, it fails as a
# StorageError the caller retries, instead of hanging its caller for TCP's timeouts.
COMMAND_TIMEOUT: Final = 30.0  # seconds
MESSAGE_MAX: Final = 300  # characters of a driver's error message kept in a StorageError
# Our transactions wait on nothing but this database, so one left idle this long has a
# client that is frozen (SIGSTOP, a stalled VM) or cut off without the server noticing.
# Its locks must not outlive that: a claim's or settle's share lock on the lease row
# would keep every standby from taking the lease over, for as long as the client stays
# frozen or until TCP keepalive gives up on it (hours). The server ends such a session.
IDLE_IN_TRANSACTION_MS: Final = 2000
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_ARGUMENT: Final = re.compile(r"(query argument \$\d+): .*( \([^()]*\))$", re.DOTALL)
_RETRYABLE: Final = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_FAILURES: Final = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,  # includes connection refused and timeouts
)
_BIGINT: Final = range(-(2**63), 2**63)

EVENT: Final = (
    "pk, source, event_id, occurred_at, received_at, payload, headers, outcome, rule, reason"
)


class PostgresStore:
    """The Store protocol on a PostgreSQL database reached at `dsn` (an asyncpg DSN).

    `schema`: keep the tables in this schema (see the module docstring); `read_only`:
    refuse every write with StorageError.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        read_only: bool = False,
        pool_min: int = 1,
        pool_max: int = 10,
    ) -> None:
        if schema is not None and not _IDENTIFIER.fullmatch(schema):
            raise ConfigError(
                "postgresql schema must be a plain identifier (letters, digits, _)",
                key="storage.url",
            )
        self._dsn = dsn
        parts = urlsplit(dsn)
        secret = parts.password or dict(parse_qsl(parts.query)).get("password") or ""
        self._secrets = {secret, unquote(secret)} - {""}  # never shown in a message
        self._schema = schema
        self._read_only = read_only
        self._pool_min, self._pool_max = pool_min, max(pool_min, pool_max)
        self._pool: Any = None
        self._resolved_schema: str | None = None

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """A store for `postgresql://...` with the options of the module docstring."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("postgresql", "postgres"):
            raise ConfigError("not a postgresql:// URL", key="storage.url")
        options: dict[str, Any] = {}
        rest: list[tuple[str, str]] = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name == "schema":
                options["schema"] = value
            elif name == "mode" and value in ("ro", "rw"):
                options["read_only"] = value == "ro"
            elif name == "pool_max" and value.isdigit() and int(value) > 0:
                options["pool_max"] = int(value)
            elif name in ("mode", "pool_max"):
                raise ConfigError(
                    f"bad postgresql URL option {name}={value!r}; "
                    "expected mode=rw|ro, pool_max=<positive integer>",
                    key="storage.url",
                )
            else:
                rest.append((name, value))
        dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), ""))
        return cls(dsn, **options)

    @property
    def dsn(self) -> str:
        """The asyncpg DSN: the URL without this store's own options."""
        return self._dsn

    @property
    def schema(self) -> str | None:
        return self._schema

    @property
    def pool_max(self) -> int:
        """The most connections the store's own pool opens (`?pool_max=`)."""
        return self._pool_max

    @property
    def settings(self) -> dict[str, str]:
        """The session settings of every connection to this store (its own or the lease's)."""
        settings = {
            "application_name": "voxys-bridge",
            "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
        }
        if self._schema is not None:
            settings["search_path"] = f'"{self._schema}"'
        if self._read_only:
            settings["default_transaction_read_only"] = "on"
        return settings

    def resolved_schema(self) -> str:
        """The schema the store's tables are in, as PostgreSQL resolved it at `open`."""
        if self._resolved_schema is None:
            raise StorageError("postgresql store is not open")
        return self._resolved_schema

    # --- lifecycle ------------------------------------------------------------------

    def _error(self, op: str, exc: BaseException) -> StorageError:
        """A StorageError naming `op`, without the password or the values of arguments.

        Raised `from None` by callers: the driver's exception is not chained, because
        its text may quote what this message leaves out.
        """
        detail = str(exc)
        # asyncpg's DataError quotes the argument ("... argument $4: [values] (why)"),
        # which may be a webhook payload: keep only the argument number and the why.
        detail = _ARGUMENT.sub(r"\1\2", detail)[:MESSAGE_MAX]
        for secret in self._secrets:
            detail = detail.replace(secret, "***")
        return StorageError(f"postgresql {op} failed: {type(exc).__name__}: {detail}")

    async def open(self) -> None:
        """Create the pool and apply the missing migrations (under the advisory lock)."""
        if self._pool is not None:
            return
        settings = self.settings
        pool: Any = None
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=self._pool_min,
                max_size=self._pool_max,
                timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT,
                server_settings=settings,
            )
            async with pool.acquire() as conn:
                await migrate(conn, schema=self._schema, read_only=self._read_only)
                # Where `events` really is: identity for the wake-up channel, whatever
                # the URL said (`?schema=public` and no schema are the same tables).
                self._resolved_schema = await conn.fetchval(
                    "SELECT n.nspname FROM pg_class c JOIN pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE c.oid = 'events'::regclass"
                )
        except _FAILURES as exc:
            await _terminate(pool)
            raise self._error("open", exc) from None
        except BaseException:
            await _terminate(pool)
            raise
        self._pool = pool

    async def close(self) -> None:
        """Wait for calls in progress, then close every connection."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await pool.close()
            except _FAILURES:
                pool.terminate()

    async def _run(self, op: str, work: Callable[[Any], Awaitable[T]], **tx: Any) -> T:
        """`work(conn)` in one transaction (options `tx`), retried after a lost race."""
        for attempt in range(1, RETRIES + 1):
            if self._pool is None:
                raise StorageError("postgresql store is not open")
            try:
                async with (
                    self._pool.acquire(timeout=CONNECT_TIMEOUT) as conn,
                    conn.transaction(**tx),
                ):
                    return await work(conn)
            except _RETRYABLE as exc:
                if attempt == RETRIES:
                    raise self._error(op, exc) from None
            except _FAILURES as exc:
                raise self._error(op, exc) from None
        raise AssertionError("unreachable")  # the loop returns or raises

    async def ping(self) -> None:
        """A real write: fails when the database is unreachable, read-only or out of space."""

        async def work(conn: Any) -> None:
            await conn.execute(
                "INSERT INTO meta (key, value) VALUES ('ping', 1)"
                " ON CONFLICT (key) DO UPDATE SET value = meta.value + 1"
            )

        await self._run("ping", work)

    # --- ingest ---------------------------------------------------------------------

    async def ingest(self, items: Sequence[tuple[Event, Evaluation]], now: float) -> IngestResult:
        """Store events and queue their transitions in one transaction."""
        if not items:
            return IngestResult(stored=0, duplicates=0, transitions=0)
        # The first of several items with one (source, event_id) is the one stored;
        # rows go in key order so that concurrent ingests lock keys in the same order.
        firsts: dict[tuple[str, str], tuple[Event, Evaluation]] = {}
        for event, evaluation in items:
            firsts.setdefault(
                (q.text(event.source) or "", q.text(event.event_id) or ""), (event, evaluation)
            )
        keys = sorted(firsts)
        rows = [_event_row(firsts[key]) for key in keys]

        async def work(conn: Any) -> IngestResult:
            inserted = await conn.fetch(
                "INSERT INTO events (source, event_id, occurred_at, received_at, payload,"
                " headers, outcome, rule, reason) SELECT * FROM unnest($1::text[], $2::text[],"
                " $3::float8[], $4::float8[], $5::text[], $6::text[], $7::text[], $8::text[],"
                " $9::text[]) ON CONFLICT (source, event_id) DO NOTHING"
                " RETURNING pk, source, event_id",
                *map(list, zip(*rows, strict=True)),
            )
            pks, occurred, transitions = [], [], []
            for row in inserted:
                event, evaluation = firsts[(row[1], row[2])]
                for transition in evaluation.transitions:
                    pks.append(row[0])
                    occurred.append(event.occurred_at)
                    transitions.append(transition)
            touched, _ = await q.queue_transitions(conn, pks, occurred, transitions, now)
            # Follow-ups event by event in arrival order (the leads are locked): a later
            # event may cancel what an earlier one schedules.
            pk_of = {(row[1], row[2]): row[0] for row in inserted}
            changes = f.Changes()
            for event, evaluation in items:
                key = (q.text(event.source) or "", q.text(event.event_id) or "")
                pk = pk_of.pop(key, None)  # popped: a second one in the batch is a duplicate
                if pk is not None and evaluation.transitions:
                    ref = f.EventRef(pk, key[0], key[1], event.occurred_at)
                    await f.after_queued(conn, ref, evaluation.transitions, now, changes)
            await q.refresh_leads(conn, touched)
            return IngestResult(
                stored=len(inserted),
                duplicates=len(items) - len(inserted),
                transitions=len(transitions),
                followups=changes.frozen(),
            )

        return await self._run("ingest", work)

    async def apply_replay(self, pk: int, evaluation: Evaluation, now: float) -> Replayed:
        """Store a new outcome for event `pk` and queue its transitions (nothing if no such
        event)."""
        if pk not in _BIGINT:
            return Replayed(0)

        async def work(conn: Any) -> Replayed:
            # The row lock of this UPDATE serialises concurrent replays of the event;
            # the one that waited re-checks the outcome on the committed row and, as
            # the first one matched it, updates nothing and queues nothing.
            row = await conn.fetchrow(
                "UPDATE events SET outcome = $1, rule = $2, reason = $3"
                " WHERE pk = $4 AND outcome <> 'matched' RETURNING occurred_at, source, event_id",
                str(evaluation.outcome),
                q.text(evaluation.rule),
                q.text(evaluation.reason),
                pk,
            )
            if row is None:
                return Replayed(0)
            occurred_at = row[0]
            n = len(evaluation.transitions)
            touched, queued = await q.queue_transitions(
                conn, [pk] * n, [occurred_at] * n, evaluation.transitions, now
            )
            changes = f.Changes()
            if n:
                ref = f.EventRef(pk, row[1], row[2], occurred_at)
                await f.after_queued(conn, ref, evaluation.transitions, now, changes)
            await q.refresh_leads(conn, touched)
            return Replayed(queued, changes.frozen())

        return await self._run("apply_replay", work)

    # --- delivery -------------------------------------------------------------------

    async def recover_claims(self, *, epoch: int) -> int:
        async def work(conn: Any) -> int:
            return await q.recover_claims(conn, epoch)

        return await self._run("recover_claims", work)

    async def claim_due(
        self,
        now: float,
        limit: int,
        *,
        coalesce: bool,
        epoch: int,
        skip_accounts: Collection[int] = (),
        only_account: int | None = None,
    ) -> Claim:
        skip = [a for a in skip_accounts if a in _BIGINT]
        if only_account is not None and only_account not in _BIGINT:
            return Claim([], [], [], None)

        async def work(conn: Any) -> Claim:
            return await q.claim_due(conn, now, limit, coalesce, epoch, skip, only_account)

        return await self._run("claim_due", work)

    async def claim_requests(
        self,
        now: float,
        requests: int,
        *,
        bulk: BulkRules,
        coalesce: bool,
        epoch: int,
        skip_accounts: Collection[int] = (),
    ) -> Claim:
        skip = [a for a in skip_accounts if a in _BIGINT]

        async def work(conn: Any) -> Claim:
            return await b.claim_requests(conn, now, requests, bulk, coalesce, epoch, skip)

        return await self._run("claim_requests", work)

    async def settle_many(
        self,
        settles: Sequence[Settle],
        now: float,
        *,
        batch: BatchRecord | None = None,
        epoch: int,
    ) -> int | None:
        if any(s.transition_id not in _BIGINT for s in settles):
            raise LeaseLost(epoch)  # no such claim can exist

        async def work(conn: Any) -> int | None:
            return await b.settle_many(conn, settles, now, batch, epoch)

        return await self._run("settle_many", work)

    async def fire_followups(self, now: float, limit: int, *, epoch: int) -> Firing:
        async def work(conn: Any) -> Firing:
            return await f.fire_due(conn, now, limit, epoch)

        return await self._run("fire_followups", work)

    async def expire_pending(
        self,
        account_id: int,
        created_before: float,
        now: float,
        *,
        reason: str,
        http_status: int | None,
        epoch: int,
    ) -> list[QueuedTransition]:
        if account_id not in _BIGINT:
            return []

        async def work(conn: Any) -> list[QueuedTransition]:
            return await q.expire_pending(
                conn, account_id, created_before, now, reason, http_status, epoch
            )

        return await self._run("expire_pending", work)

    async def _settle(
        self, op: str, tid: int, sql: str, *params: Any, epoch: int, delivered: bool = False
    ) -> None:
        if tid not in _BIGINT:
            raise LeaseLost(epoch)  # no such claim can exist

        async def work(conn: Any) -> None:
            await q.settle_claim(conn, tid, sql, params, epoch=epoch, delivered=delivered)

        await self._run(op, work)

    async def mark_delivered(
        self, transition_id: int, now: float, http_status: int, *, epoch: int
    ) -> None:
        """Also records the attempt that got the 2xx (attempts + 1)."""
        await self._settle(
            "mark_delivered",
            transition_id,
            q.DELIVERED,
            now,
            http_status,
            None,
            epoch=epoch,
            delivered=True,
        )

    async def schedule_retry(
        self,
        transition_id: int,
        now: float,
        next_attempt_at: float,
        *,
        counts: bool,
        not_found: bool = False,
        http_status: int | None = None,
        reason: str | None = None,
        epoch: int,
    ) -> None:
        params = (now, http_status, q.text(reason), next_attempt_at, int(counts), int(not_found))
        await self._settle("schedule_retry", transition_id, q.RETRY, *params, epoch=epoch)

    async def release(self, transition_id: int, next_attempt_at: float, *, epoch: int) -> None:
        await self._settle("release", transition_id, q.RELEASE, next_attempt_at, epoch=epoch)

    async def mark_dead(
        self,
        transition_id: int,
        now: float,
        *,
        reason: str,
        http_status: int | None,
        epoch: int,
    ) -> None:
        """Also records the attempt that ended it (attempts + 1)."""
        params = (now, http_status, q.text(reason))
        await self._settle("mark_dead", transition_id, q.DEAD, *params, epoch=epoch)

    # --- operating ------------------------------------------------------------------

    async def dead_letters(self, limit: int = 1000) -> list[LedgerEntry]:
        """Dead transitions, the most recently dead first."""
        sql = (
            f"SELECT {LEDGER} {q.FROM} WHERE t.state = 'dead'"
            " ORDER BY t.settled_at DESC, t.id DESC LIMIT $1"
        )
        return [ledger_entry(row) for row in await self._fetch("dead_letters", sql, limit)]

    async def retry_dead(self, ids: Sequence[int] | None, now: float) -> int:
        async def work(conn: Any) -> int:
            return await q.retry_dead(conn, ids, now)

        return await self._run("retry_dead", work)

    async def ledger(self, account_id: int, lead_id: int) -> list[LedgerEntry]:
        """Every transition of one lead, newest first in the order they apply."""
        if account_id not in _BIGINT or lead_id not in _BIGINT:
            return []
        sql = (
            f"SELECT {LEDGER}, {FOLLOWUP} {q.FROM}"
            " LEFT JOIN followups f ON f.event_pk = t.event_pk AND f.rule = t.rule"
            " WHERE t.account_id = $1 AND t.lead_id = $2 ORDER BY t.occurred_at DESC, t.id DESC"
        )
        return [ledger_entry(row) for row in await self._fetch("ledger", sql, account_id, lead_id)]

    async def followups(
        self,
        *,
        ids: Sequence[int] | None = None,
        lead: tuple[int, int] | None = None,
        state: FollowUpState | None = None,
        limit: int = 1000,
    ) -> list[FollowUpEntry]:
        if lead is not None and not (lead[0] in _BIGINT and lead[1] in _BIGINT):
            return []

        async def work(conn: Any) -> list[FollowUpEntry]:
            return await f.select(conn, ids, lead, state, limit)

        return await self._run("followups", work, readonly=True)

    async def cancel_followups(
        self,
        now: float,
        *,
        ids: Sequence[int] | None = None,
        lead: tuple[int, int] | None = None,
        cause: str,
    ) -> list[FollowUpEntry]:
        if ids is None and lead is None:
            raise ValueError("cancel_followups needs ids or a lead")
        if lead is not None and not (lead[0] in _BIGINT and lead[1] in _BIGINT):
            return []

        async def work(conn: Any) -> list[FollowUpEntry]:
            return await f.cancel_chosen(conn, now, ids, lead, cause)

        return await self._run("cancel_followups", work)

    async def events_for_replay(
        self,
        *,
        ids: Sequence[int] | None = None,
        outcome: Outcome | None = None,
        since: float | None = None,
        limit: int = 10_000,
    ) -> list[StoredEvent]:
        if ids is not None:  # in arrival order
            wanted = [i for i in ids if i in _BIGINT]
            sql = f"SELECT {EVENT} FROM events WHERE pk = ANY($1::bigint[]) ORDER BY pk LIMIT $2"  # noqa: S608
            rows = await self._fetch("events_for_replay", sql, wanted, limit)
        else:  # oldest first; a NULL parameter leaves its condition out
            sql = (
                f"SELECT {EVENT} FROM events"  # noqa: S608
                " WHERE ($1::text IS NULL OR outcome = $1) AND ($2::float8 IS NULL"
                " OR received_at >= $2) ORDER BY received_at, pk LIMIT $3"
            )
            value = None if outcome is None else str(outcome)
            rows = await self._fetch("events_for_replay", sql, value, since, limit)
        return [stored_event(row) for row in rows]

    async def list_events(
        self,
        *,
        outcome: Outcome | None = None,
        source: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        sql = (  # newest first; a NULL parameter leaves its condition out
            f"SELECT {EVENT} FROM events"  # noqa: S608
            " WHERE ($1::text IS NULL OR outcome = $1) AND ($2::text IS NULL OR source = $2)"
            " AND ($3::float8 IS NULL OR received_at >= $3)"
            " ORDER BY received_at DESC, pk DESC LIMIT $4"
        )
        value = None if outcome is None else str(outcome)
        rows = await self._fetch("list_events", sql, value, source, since, limit)
        return [stored_event(row) for row in rows]

    async def _fetch(self, op: str, sql: str, *args: Any) -> list[Any]:
        async def work(conn: Any) -> list[Any]:
            rows: list[Any] = await conn.fetch(sql, *args)
            return rows

        return await self._run(op, work, readonly=True)

    async def stats(self, now: float) -> Stats:
        """Counts per state and outcome, from one consistent snapshot."""

        async def work(conn: Any) -> Stats:
            transitions = dict.fromkeys(map(str, TransitionState), 0)
            for state, count in await conn.fetch(
                "SELECT state, count(*) FROM transitions GROUP BY state"
            ):
                transitions[state] = count
            events = dict.fromkeys(map(str, Outcome), 0)
            for outcome, count in await conn.fetch(
                "SELECT outcome, count(*) FROM events GROUP BY outcome"
            ):
                events[outcome] = count
            retrying = await conn.fetchval(
                "SELECT count(*) FROM transitions"
                " WHERE state = 'pending' AND last_attempt_at IS NOT NULL"
            )
            oldest = await conn.fetchval(
                "SELECT min(created_at) FROM transitions WHERE state IN ('pending', 'in_flight')"
            )
            return Stats(
                transitions=transitions,
                events=events,
                retrying=retrying,
                oldest_pending_age_s=None if oldest is None else max(0.0, now - oldest),
                followups=await f.counts(conn),
                next_followup_at=await f.next_due(conn),
            )

        result = await self._run("stats", work, isolation="repeatable_read", readonly=True)
        result.extra.update(backend="postgresql")
        return result

    async def purge(self, older_than: float) -> int:
        """Delete settled events received before `older_than`, a chunk per transaction."""
        total, after = 0, (float("-inf"), 0)
        while True:

            async def work(conn: Any, after: tuple[float, int] = after) -> tuple[int, Any]:
                # Keyset pagination over (received_at, pk): kept events are not scanned again.
                # The chosen events are locked first (an event being replayed right now
                # is skipped until the next purge). Then no transaction can add a
                # transition to them (its foreign key check needs a share lock on the
                # event), and the DELETE, a statement of its own, sees every transition
                # committed before the locks were granted.
                rows = await conn.fetch(
                    "SELECT pk, received_at FROM events WHERE received_at < $1"
                    " AND (received_at, pk) > ($2, $3) ORDER BY received_at, pk LIMIT $4"
                    " FOR UPDATE SKIP LOCKED",
                    older_than,
                    *after,
                    PURGE_CHUNK,
                )
                if not rows:
                    return 0, rows
                status = await conn.execute(
                    "DELETE FROM events WHERE pk = ANY($1::bigint[]) AND NOT EXISTS (SELECT 1"
                    " FROM transitions t WHERE t.event_pk = events.pk"
                    " AND t.state IN ('pending', 'in_flight', 'dead')) AND NOT EXISTS (SELECT 1"
                    " FROM followups f WHERE f.event_pk = events.pk AND f.state = 'scheduled')",
                    [row[0] for row in rows],
                )
                return int(status.rsplit(" ", 1)[-1]), rows

            deleted, rows = await self._run("purge", work)
            total += deleted
            if len(rows) < PURGE_CHUNK:
                return total
            after = (rows[-1][1], rows[-1][0])


async def _terminate(pool: Any) -> None:
    if pool is not None:
        pool.terminate()


def _event_row(item: tuple[Event, Evaluation]) -> tuple[Any, ...]:
    event, evaluation = item
    return (
        q.text(event.source),
        q.text(event.event_id),
        event.occurred_at,
        event.received_at,
        json_text(event.payload),
        json_text(dict(event.headers)),
        str(evaluation.outcome),
        q.text(evaluation.rule),
        q.text(evaluation.reason),
    )
