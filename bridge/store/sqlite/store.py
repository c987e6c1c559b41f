"""SqliteStore: the embedded default store, one SQLite file in WAL mode.

Threads. One writer thread owns the only write connection and group-commits every
write queued meanwhile (threads.Writer); one reader thread serves reads from
its own connection, which WAL lets run beside the writer; one checkpointer thread
copies the WAL back into the database so that no caller's commit pays for it.

Durability. `synchronous=FULL` by default: every group commit fsyncs the WAL, so an
event answered 2xx survives not only SIGKILL of the process but also a kernel panic,
a power cut or a VM reset. `synchronous=NORMAL` would survive SIGKILL too (a commit
is in the OS page cache once `write()` returns) but could lose the last commits since
the previous checkpoint on power loss, and senders do not resend what we answered
2xx. Group commit is what makes FULL affordable: one fsync per group, not per
request (figures in bench/store_ingest.py). `?synchronous=normal` in the URL trades
that guarantee for speed on hosts whose disk fsyncs slowly.

Retention. `purge` deletes old events whose transitions are delivered, superseded or
stale; events with a pending, in-flight or dead transition or a scheduled follow-up are
kept, so a dead letter stays visible until an operator retries it and a follow-up due
after `storage.retention` still fires.

One concept: the Store protocol on this backend. Each method is one transaction
over the modules beside it (queue, followups, reads, threads).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Collection, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote

import orjson

from bridge.errors import ConfigError, StorageError
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
)
from bridge.store.rows import json_text
from bridge.store.sqlite import bulk as b
from bridge.store.sqlite import followups as f
from bridge.store.sqlite import queue as q
from bridge.store.sqlite.reads import (
    dead_letters,
    events_by_ids,
    events_matching,
    ledger,
    list_events,
    stats,
)
from bridge.store.sqlite.schema import migrate
from bridge.store.sqlite.threads import Checkpointer, Reader, Writer, storage_error

T = TypeVar("T")

BACKSTOP_PAGES: Final = 10_000  # the writer checkpoints itself only if the checkpointer lags
WAL_SIZE_LIMIT: Final = 64 * 1024 * 1024  # truncate the WAL file back to this after a reset
PURGE_CHUNK: Final = 1000  # events per purge transaction, so ingest is not held up
URL_HELP: Final = (
    "write sqlite:///relative/path.db, sqlite:////absolute/path.db or sqlite://:memory:"
)


def check_writable(db: Path) -> None:
    """Create `db`'s directory if needed and make sure the database can be written there;
    a StorageError naming the path and the reason otherwise (sqlite3 names neither)."""
    parent = db.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise StorageError(f"cannot use {parent} as the directory of {db}: it is a file") from exc
    except OSError as exc:
        raise StorageError(
            f"cannot create the directory {parent} for {db}: {exc.strerror}"
        ) from exc
    try:
        # WAL mode creates <db>-wal and <db>-shm beside the database: the directory must
        # be writable, not only the file.
        with tempfile.TemporaryFile(dir=parent):
            pass
        if db.exists():
            with db.open("r+b"):
                pass
    except IsADirectoryError as exc:
        raise StorageError(f"cannot use {db} as the database: it is a directory") from exc
    except OSError as exc:
        where = db if exc.filename == str(db) else parent
        raise StorageError(f"cannot write in {where} (the database {db}): {exc.strerror}") from exc


class SqliteStore:
    """The Store protocol on one SQLite file; `path=None` is a throwaway temporary database.

    `synchronous` is "FULL" or "NORMAL" (see the module docstring). `read_only` refuses
    every write with StorageError (`PRAGMA query_only`), for inspecting a live database.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        synchronous: str = "FULL",
        read_only: bool = False,
        busy_timeout: float = 5.0,
        checkpoint_interval: float = 1.0,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be FULL or NORMAL, not {synchronous!r}")
        self._path = Path(path) if path is not None else None
        self._synchronous = synchronous.upper()
        self._read_only = read_only
        self._busy_timeout = busy_timeout
        self._checkpoint_interval = checkpoint_interval
        self._db: Path | None = None
        self._tmpdir: str | None = None
        self._writer: Writer | None = None
        self._reader: Reader | None = None
        self._checkpointer: Checkpointer | None = None

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """A store for `sqlite:///relative.db`, `sqlite:////absolute.db` or `sqlite://:memory:`.

        Options: `?synchronous=full|normal` and `?mode=rw|ro`.
        """
        scheme, sep, rest = url.partition("://")
        if scheme.lower() != "sqlite" or not sep:
            raise ConfigError(f"not a sqlite URL; {URL_HELP}", key="storage.url")
        rest, _, query = rest.partition("?")
        options: dict[str, Any] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "synchronous" and value.lower() in ("full", "normal"):
                options["synchronous"] = value.upper()
            elif name == "mode" and value in ("ro", "rw"):
                options["read_only"] = value == "ro"
            else:
                raise ConfigError(
                    f"unknown sqlite URL option {name}={value!r}; "
                    "known: synchronous=full|normal, mode=rw|ro",
                    key="storage.url",
                )
        if rest in ("", ":memory:", "/:memory:"):
            return cls(None, **options)
        if not rest.startswith("/") or rest == "/":
            raise ConfigError(
                f"a sqlite URL has no host and needs a path; {URL_HELP}", key="storage.url"
            )
        return cls(unquote(rest[1:]), **options)

    @property
    def configured_path(self) -> Path | None:
        """The database file as configured; None for a throwaway store."""
        return self._path

    @property
    def path(self) -> Path | None:
        """The database file while open (the temporary one for `path=None`)."""
        return self._db

    @property
    def file(self) -> Path | None:
        """The database file the URL names, open or not (None: a throwaway database)."""
        return self._path

    @property
    def commits(self) -> int:
        """Transactions committed by the writer since `open`: one per group, not per call."""
        return self._writer.commits if self._writer else 0

    @property
    def writer(self) -> Writer:
        """The writer thread, while the store is open: every write goes through it."""
        return self._w()

    @property
    def largest_group(self) -> int:
        """The most write calls one commit has carried since `open`."""
        return self._writer.largest_group if self._writer else 0

    # --- lifecycle ------------------------------------------------------------------

    def _connect(self, *, query_only: bool) -> sqlite3.Connection:
        assert self._db is not None
        conn = sqlite3.connect(self._db, timeout=self._busy_timeout, isolation_level=None)
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
            if query_only:
                conn.execute("PRAGMA query_only = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connect_writer(self) -> sqlite3.Connection:
        conn = self._connect(query_only=self._read_only)
        try:
            if not self._read_only:
                (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
                if str(mode).lower() != "wal":
                    raise StorageError(f"sqlite open failed: WAL unavailable (journal mode {mode})")
            conn.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_PAGES}")
            migrate(conn, read_only=self._read_only)
        except BaseException:
            conn.close()
            raise
        return conn

    async def open(self) -> None:
        """Create the file if needed, switch to WAL, migrate, start the threads."""
        if self._writer is not None:
            return
        if self._path is None:
            self._tmpdir = tempfile.mkdtemp(prefix="voxys-bridge-")
            self._db = Path(self._tmpdir) / "bridge.db"
        else:
            self._db = self._path
            if not self._read_only:
                check_writable(self._db)
        writer = Writer(self._connect_writer)
        reader = Reader(partial(self._connect, query_only=True))
        try:
            await writer.start()
            await reader.start()
        except sqlite3.Error as exc:
            await self._stop(writer, reader, None)
            raise storage_error("open", exc) from exc
        except BaseException:
            await self._stop(writer, reader, None)
            raise
        self._writer, self._reader = writer, reader
        if not self._read_only:
            connect = partial(self._connect, query_only=False)
            self._checkpointer = Checkpointer(connect, writer, self._checkpoint_interval)
            self._checkpointer.start()

    async def close(self) -> None:
        """Finish queued writes, then close every connection and join every thread."""
        writer, reader, checkpointer = self._writer, self._reader, self._checkpointer
        self._writer = self._reader = self._checkpointer = None
        await self._stop(writer, reader, checkpointer)

    async def _stop(
        self, writer: Writer | None, reader: Reader | None, checkpointer: Checkpointer | None
    ) -> None:
        try:
            if checkpointer is not None:
                await checkpointer.stop()
            if writer is not None:
                await writer.stop()
            if reader is not None:
                await reader.stop()
        finally:
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def _w(self) -> Writer:
        if self._writer is None:
            raise StorageError("sqlite store is not open")
        return self._writer

    def _r(self) -> Reader:
        if self._reader is None:
            raise StorageError("sqlite store is not open")
        return self._reader

    async def write(self, op: str, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` in the writer's next transaction (this package's lease)."""
        return await self._w().submit(op, work)

    async def ping(self) -> None:
        """A real write through the writer: fails when the file is read-only or locked."""
        await self._w().submit("ping", _ping)

    # --- ingest ---------------------------------------------------------------------

    async def ingest(self, items: Sequence[tuple[Event, Evaluation]], now: float) -> IngestResult:
        """Store events and queue their transitions; returns after the group's commit."""
        if not items:
            return IngestResult(stored=0, duplicates=0, transitions=0)
        # JSON is encoded here, before queueing, to keep the writer's transaction short.
        prepared = [_prepare(event, evaluation) for event, evaluation in items]
        return await self._w().submit_many("ingest", _ingest_many, (prepared, now))

    async def apply_replay(self, pk: int, evaluation: Evaluation, now: float) -> Replayed:
        """Store a new outcome for event `pk` and queue its transitions; nothing if there
        is no such event or it is matched already."""
        return await self._w().submit(
            "apply_replay", partial(_apply_replay, pk=pk, evaluation=evaluation, now=now)
        )

    # --- delivery -------------------------------------------------------------------

    async def recover_claims(self, *, epoch: int) -> int:
        return await self._w().submit("recover_claims", partial(q.recover_claims, epoch=epoch))

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
        work = partial(
            q.claim_due,
            now=now,
            limit=limit,
            coalesce=coalesce,
            epoch=epoch,
            skip_accounts=skip_accounts,
            only_account=only_account,
        )
        return await self._w().submit("claim_due", work)

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
        work = partial(
            b.claim_requests,
            now=now,
            requests=requests,
            bulk=bulk,
            coalesce=coalesce,
            epoch=epoch,
            skip_accounts=skip_accounts,
        )
        return await self._w().submit("claim_requests", work)

    async def settle_many(
        self,
        settles: Sequence[Settle],
        now: float,
        *,
        batch: BatchRecord | None = None,
        epoch: int,
    ) -> int | None:
        work = partial(b.settle_many, settles=settles, now=now, batch=batch, epoch=epoch)
        return await self._w().submit("settle_many", work)

    async def fire_followups(self, now: float, limit: int, *, epoch: int) -> Firing:
        work = partial(f.fire_due, now=now, limit=limit, epoch=epoch)
        return await self._w().submit("fire_followups", work)

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
        work = partial(
            q.expire_pending,
            account_id=account_id,
            created_before=created_before,
            now=now,
            reason=reason,
            http_status=http_status,
            epoch=epoch,
        )
        return await self._w().submit("expire_pending", work)

    async def _settle(
        self, op: str, transition_id: int, assignments: str, params: dict[str, Any], **kw: Any
    ) -> None:
        work = partial(
            q.settle_claim,
            transition_id=transition_id,
            assignments=assignments,
            params=params,
            **kw,
        )
        await self._w().submit(op, work)

    async def mark_delivered(
        self, transition_id: int, now: float, http_status: int, *, epoch: int
    ) -> None:
        """Also records the attempt that got the 2xx (attempts + 1)."""
        params = {"now": now, "http_status": http_status, "reason": None}
        await self._settle(
            "mark_delivered", transition_id, q.DELIVERED, params, epoch=epoch, delivered=True
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
        params = {
            "now": now,
            "next": next_attempt_at,
            "counts": int(counts),
            "not_found": int(not_found),
            "http_status": http_status,
            "reason": q.text(reason),
        }
        await self._settle("schedule_retry", transition_id, q.RETRY, params, epoch=epoch)

    async def release(self, transition_id: int, next_attempt_at: float, *, epoch: int) -> None:
        params = {"next": next_attempt_at}
        await self._settle("release", transition_id, q.RELEASE, params, epoch=epoch)

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
        params = {"now": now, "http_status": http_status, "reason": q.text(reason)}
        await self._settle("mark_dead", transition_id, q.DEAD, params, epoch=epoch)

    # --- operating ------------------------------------------------------------------

    async def dead_letters(self, limit: int = 1000) -> list[LedgerEntry]:
        return await self._r().run("dead_letters", partial(dead_letters, limit=limit))

    async def retry_dead(self, ids: Sequence[int] | None, now: float) -> int:
        return await self._w().submit("retry_dead", partial(q.retry_dead, ids=ids, now=now))

    async def ledger(self, account_id: int, lead_id: int) -> list[LedgerEntry]:
        return await self._r().run("ledger", partial(ledger, key=(account_id, lead_id)))

    async def followups(
        self,
        *,
        ids: Sequence[int] | None = None,
        lead: tuple[int, int] | None = None,
        state: FollowUpState | None = None,
        limit: int = 1000,
    ) -> list[FollowUpEntry]:
        work = partial(f.select, ids=ids, lead=lead, state=state, limit=limit)
        return await self._r().run("followups", work)

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
        work = partial(f.cancel_chosen, now=now, ids=ids, lead=lead, cause=cause)
        return await self._w().submit("cancel_followups", work)

    async def events_for_replay(
        self,
        *,
        ids: Sequence[int] | None = None,
        outcome: Outcome | None = None,
        since: float | None = None,
        limit: int = 10_000,
    ) -> list[StoredEvent]:
        if ids is not None:
            work = partial(events_by_ids, ids=ids, limit=limit)
        else:
            work = partial(events_matching, outcome=outcome, since=since, limit=limit)
        return await self._r().run("events_for_replay", work)

    async def list_events(
        self,
        *,
        outcome: Outcome | None = None,
        source: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        work = partial(list_events, outcome=outcome, source=source, since=since, limit=limit)
        return await self._r().run("list_events", work)

    async def stats(self, now: float) -> Stats:
        result = await self._r().run("stats", partial(stats, now=now))
        result.extra.update(backend="sqlite", commits=self.commits)
        return result

    async def purge(self, older_than: float) -> int:
        """Delete settled events received before `older_than`, a chunk per transaction."""
        total, after = 0, (float("-inf"), 0)
        while True:
            work = partial(_purge_chunk, older_than=older_than, after=after)
            deleted, after, done = await self._w().submit("purge", work)
            total += deleted
            if done:
                return total


# --- work run in the writer thread ----------------------------------------------------

_Prepared = tuple[tuple[Any, ...], float, Sequence[Any]]  # events row, occurred_at, transitions


def _prepare(event: Event, evaluation: Evaluation) -> _Prepared:
    row = (
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
    return row, event.occurred_at, evaluation.transitions


_INSERT_EVENTS = (
    "INSERT INTO events (source, event_id, occurred_at, received_at, payload, headers,"
    " outcome, rule, reason) VALUES {values} ON CONFLICT (source, event_id) DO NOTHING"
)
_EVENT_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
# The events this transaction inserted, as one JSON text: one step, not one per row.
_INSERTED = "SELECT json_group_array(json_array(pk, source, event_id)) FROM events WHERE pk > ?"


def _ingest_many(
    conn: sqlite3.Connection, requests: list[tuple[list[_Prepared], float]]
) -> list[IngestResult]:
    """Store the events of several requests with a handful of statements in all.

    Events go in first, all at once, skipping those already stored; the pks above the
    largest before them are this transaction's (it holds the write lock, and
    AUTOINCREMENT never reuses a pk). An event id twice in the group is stored for its
    first request and a duplicate for the others, as if they had run one by one.
    """
    rows = [row for prepared, _ in requests for row, _, _ in prepared]
    inserted = _insert_events(conn, rows)
    counts: list[tuple[int, int, int]] = []
    transitions: list[q.TransitionRow] = []
    events: list[list[f.Queued]] = []  # per request, the stored events with transitions
    for prepared, now in requests:
        stored = duplicates = queued = 0
        events.append([])
        for row, occurred_at, evaluated in prepared:
            pk = inserted.pop((row[0], row[1]), None)  # popped: a second one is a duplicate
            if pk is None:
                duplicates += 1
                continue
            stored += 1
            queued += len(evaluated)
            transitions += q.transition_rows(pk, occurred_at, evaluated, now)
            if evaluated:
                events[-1].append((f.EventRef(pk, row[0], row[1], occurred_at), evaluated))
        counts.append((stored, duplicates, queued))
    touched = q.insert_transitions(conn, transitions)[0]
    # With every transition of the group in, follow-ups event by event in arrival order.
    changes = f.after_stored(conn, events, [now for _, now in requests])
    q.refresh_leads(conn, touched)
    return [IngestResult(*c, followups=ch) for c, ch in zip(counts, changes, strict=True)]


def _insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> dict[Any, int]:
    """Insert event rows, skipping stored ones; the pk of each inserted (source, event_id)."""
    if len(rows) == 1:  # a lone webhook (every one at concurrency 1): one statement
        cursor = conn.execute(_INSERT_EVENTS.format(values=_EVENT_ROW), rows[0])
        pk = cursor.lastrowid
        return {(rows[0][0], rows[0][1]): pk} if cursor.rowcount == 1 and pk is not None else {}
    (before,) = conn.execute("SELECT coalesce(max(pk), 0) FROM events").fetchone()
    q.execute_rows(conn, _INSERT_EVENTS, _EVENT_ROW, rows)
    (inserted_json,) = conn.execute(_INSERTED, (before,)).fetchone()
    return {(source, event_id): pk for pk, source, event_id in orjson.loads(inserted_json)}


def _apply_replay(
    conn: sqlite3.Connection, pk: int, evaluation: Evaluation, now: float
) -> Replayed:
    # The check that the event is still unmatched is part of this write transaction:
    # a concurrent replay (another process) that matched it first wins.
    row = conn.execute(
        "UPDATE events SET outcome = ?, rule = ?, reason = ? WHERE pk = ? AND outcome <> ?"
        " RETURNING occurred_at, source, event_id",
        (
            str(evaluation.outcome),
            q.text(evaluation.rule),
            q.text(evaluation.reason),
            pk,
            str(Outcome.MATCHED),
        ),
    ).fetchall()  # all rows: a RETURNING statement completes only once fully stepped
    if not row:
        return Replayed(0)
    occurred_at, source, event_id = row[0]
    touched, queued = q.queue_transitions(conn, pk, occurred_at, evaluation.transitions, now)
    changes = f.Changes()
    if evaluation.transitions:
        event = f.EventRef(pk, source, event_id, occurred_at)
        f.after_queued(conn, event, evaluation.transitions, now, changes)
    q.refresh_leads(conn, touched)
    return Replayed(queued, changes.frozen())


def _ping(conn: sqlite3.Connection) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('ping', 1)"
        " ON CONFLICT (key) DO UPDATE SET value = value + 1"
    )


def _purge_chunk(
    conn: sqlite3.Connection, older_than: float, after: tuple[float, int]
) -> tuple[int, tuple[float, int], bool]:
    # Keyset pagination over (received_at, pk): kept events are not scanned again.
    rows = conn.execute(
        "SELECT pk, received_at FROM events WHERE received_at < ? AND (received_at, pk) > (?, ?)"
        " ORDER BY received_at, pk LIMIT ?",
        (older_than, *after, PURGE_CHUNK),
    ).fetchall()
    if not rows:
        return 0, after, True
    deleted = conn.execute(
        f"DELETE FROM events WHERE pk {q.IN_IDS} AND NOT EXISTS (SELECT 1 FROM transitions t"  # noqa: S608
        " WHERE t.event_pk = events.pk AND t.state IN ('pending', 'in_flight', 'dead'))"
        " AND NOT EXISTS (SELECT 1 FROM followups f"
        " WHERE f.event_pk = events.pk AND f.state = 'scheduled')",
        (json.dumps([row[0] for row in rows]),),
    ).rowcount
    return deleted, (rows[-1][1], rows[-1][0]), len(rows) < PURGE_CHUNK
