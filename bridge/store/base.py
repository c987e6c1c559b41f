"""The Store protocol: everything the bridge keeps, behind one small async interface.

Each backend (`sqlite/`, `postgres/`) is one unit owning its store, its delivery lease
and its wake-up channel; `bridge.store.open_backend(url)` returns the three together.
Nothing backend-specific leaks out of `bridge/store/`. All times are POSIX seconds
(UTC), passed in by the caller so that tests control the clock; only the lease's
expiry is kept by the database's own clock.

Fencing. Delivery operations carry the epoch of the caller's lease term. The store
refuses (`LeaseLost`) a claim, settle or recovery whose epoch is not the lease's
current one, in the same transaction that would apply it: a process that lost the
lease can never again claim work or record an answer over its successor's.

Transition states:
    pending     waiting for `next_attempt_at`
    in_flight   claimed by the delivery worker; back to pending by `recover_claims`
    delivered   Voxys answered 2xx
    dead        gave up; visible in dead letters with `reason`/`http_status`
    superseded  a newer transition for the same lead was sent instead (coalescing)
    stale       older than the last transition delivered for its lead; never sent

Follow-ups (bridge/followups.py) are kept apart from transitions until they fire:
    scheduled   waiting for `due_at`; found by an index on it, nothing held in memory
    fired       became a transition of origin `followup` (occurred_at = due_at), once
    cancelled   a newer transition for the lead was stored first, or an operator said so
A transition is unique per (event, rule, origin): the event's own (`event`) and the one
its follow-up fired (`followup`), so neither a replay nor a second firing queues twice.

One concept: the Store protocol. Its length is the contract both backends
follow, written out per method, and the records it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol

from bridge.models import Evaluation, Event, LeadStatus, Outcome


class FollowUpState(StrEnum):
    SCHEDULED = "scheduled"
    FIRED = "fired"
    CANCELLED = "cancelled"


class TransitionState(StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    DEAD = "dead"
    SUPERSEDED = "superseded"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class FollowUpEntry:
    """One follow-up with its event, rule, due time and what became of it."""

    id: int
    source: str
    event_id: str
    rule: str
    account_id: int
    lead_id: int
    status: LeadStatus
    notes: str | None
    occurred_at: float  # of the event that scheduled it
    due_at: float
    created_at: float
    state: FollowUpState
    settled_at: float | None = None  # when it fired or was cancelled
    transition_id: int | None = None  # the transition it fired
    cause: str | None = None  # why it was cancelled

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "source": self.source,
            "event_id": self.event_id,
            "rule": self.rule,
            "account_id": self.account_id,
            "lead_id": self.lead_id,
            "status": str(self.status),
            "notes": self.notes,
            "occurred_at": self.occurred_at,
            "due_at": self.due_at,
            "created_at": self.created_at,
            "state": str(self.state),
            "settled_at": self.settled_at,
            "transition_id": self.transition_id,
            "cause": self.cause,
        }


@dataclass(frozen=True, slots=True)
class FollowUpChanges:
    """Follow-ups scheduled and cancelled by one write (cancelled as scheduled included)."""

    scheduled: tuple[FollowUpEntry, ...] = ()
    cancelled: tuple[FollowUpEntry, ...] = ()


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What one `ingest` call committed."""

    stored: int  # new events
    duplicates: int  # events whose (source, event_id) was already stored
    transitions: int  # new transitions queued for delivery
    followups: FollowUpChanges = FollowUpChanges()


@dataclass(frozen=True, slots=True)
class Replayed:
    """What one `apply_replay` queued."""

    transitions: int
    followups: FollowUpChanges = FollowUpChanges()


@dataclass(frozen=True, slots=True)
class Firing:
    """The result of one `fire_followups`."""

    fired: list[FollowUpEntry]  # now transitions (`transition_id`), pending and due
    cancelled: list[FollowUpEntry]  # cancelled by those firing
    next_due_at: float | None  # earliest due_at still scheduled (may be past: more to fire)


@dataclass(frozen=True, slots=True)
class QueuedTransition:
    """A transition as the delivery worker sees it."""

    id: int
    source: str
    event_id: str
    rule: str
    account_id: int
    lead_id: int
    status: LeadStatus
    notes: str | None
    occurred_at: float
    created_at: float
    attempts: int  # attempts that counted against retry.max_attempts
    not_found_attempts: int  # attempts answered 404
    next_attempt_at: float | None = None  # when it is due (None once settled)
    origin: str = "event"  # "followup": fired by a follow-up of (event, rule)


@dataclass(frozen=True, slots=True)
class Claim:
    """The result of one `claim_due`: what to send now, and what was settled without sending."""

    claimed: list[QueuedTransition]
    superseded: list[QueuedTransition]  # coalesced away by a newer pending transition
    stale: list[QueuedTransition]  # older than the lead's last delivered transition
    next_due_at: float | None  # earliest future next_attempt_at of anything pending
    followup_due_at: float | None = None  # earliest due_at of a scheduled follow-up (or past)
    # `claim_requests` only: bulk requests, each two or more leads of one account and status.
    batches: list[list[QueuedTransition]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class BulkRules:
    """What `claim_requests` may put in a batch: the configured bounds, as shrunk by this
    process (bridge/bulk.py decides which transitions are eligible)."""

    min_batch: int
    max_batch: int
    drop_notes: bool = False
    patch_only_rules: frozenset[str] = frozenset()  # rules with `bulk: false`
    patch_only_accounts: frozenset[int] = frozenset()  # their bulk path answered 404


@dataclass(frozen=True, slots=True)
class Settle:
    """One claimed transition's outcome, for `settle_many`: `delivered` and `dead` record
    the attempt; `retry` records it and puts it back to pending at `next_attempt_at`;
    `release` puts it back without recording an attempt (not sent, token refused)."""

    transition_id: int
    outcome: Literal["delivered", "retry", "dead", "release"]
    http_status: int | None = None
    reason: str | None = None
    next_attempt_at: float | None = None  # retry, release
    counts: bool = True  # retry: the attempt uses up one of retry.max_attempts
    not_found: bool = False  # retry: the attempt was answered 404


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One bulk request as the ledger keeps it: the transitions settled with it went in
    this batch of `size` leads (bridge/bulk.py)."""

    account_id: int
    status: LeadStatus
    size: int
    http_status: int | None
    sent_at: float


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One transition of a lead with its event, rule, outcome, attempts and times."""

    id: int
    source: str
    event_id: str
    rule: str
    account_id: int
    lead_id: int
    status: LeadStatus
    notes: str | None
    state: TransitionState
    occurred_at: float
    created_at: float
    attempts: int
    first_attempt_at: float | None
    last_attempt_at: float | None
    next_attempt_at: float | None
    http_status: int | None
    reason: str | None
    event_pk: int  # the stored event's id, as `events list` shows it and `replay --id` takes
    origin: str = "event"  # "followup": fired by the follow-up below
    follow_up: FollowUpEntry | None = None  # the follow-up of this (event, rule), if any
    batch_id: int | None = None  # its last attempt went in this bulk request...
    batch_size: int | None = None  # ... of this many leads

    @property
    def notes_dropped(self) -> bool:
        """Delivered in bulk, which carries no notes, although it had some."""
        return (
            self.state is TransitionState.DELIVERED
            and self.batch_id is not None
            and self.notes is not None
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event_pk": self.event_pk,
            "source": self.source,
            "event_id": self.event_id,
            "rule": self.rule,
            "account_id": self.account_id,
            "lead_id": self.lead_id,
            "status": str(self.status),
            "notes": self.notes,
            "state": str(self.state),
            "occurred_at": self.occurred_at,
            "created_at": self.created_at,
            "attempts": self.attempts,
            "first_attempt_at": self.first_attempt_at,
            "last_attempt_at": self.last_attempt_at,
            "next_attempt_at": self.next_attempt_at,
            "http_status": self.http_status,
            "reason": self.reason,
            "origin": self.origin,
            "follow_up": None if self.follow_up is None else self.follow_up.as_json(),
            "batch": None
            if self.batch_id is None
            else {"id": self.batch_id, "leads": self.batch_size},
            "notes_dropped": self.notes_dropped,
        }


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as stored, with the outcome the rules gave it."""

    pk: int
    event: Event
    outcome: Outcome
    rule: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts for /admin/stats, `voxys-bridge stats` and metrics."""

    transitions: dict[str, int]  # per TransitionState value, every state present (0 if none)
    events: dict[str, int]  # per Outcome value, every outcome present
    retrying: int  # pending transitions with at least one attempt
    oldest_pending_age_s: float | None  # now - created_at of the oldest pending/in_flight
    extra: dict[str, Any] = field(default_factory=dict)
    followups: dict[str, int] = field(default_factory=dict)  # per FollowUpState, every one
    next_followup_at: float | None = None  # earliest due_at of a scheduled follow-up


class Store(Protocol):
    """Durable storage of events and of the transitions they cause."""

    async def open(self) -> None:
        """Connect and apply versioned migrations."""

    async def close(self) -> None:
        """Finish pending writes and release every resource."""

    async def ping(self) -> None:
        """Raise `StorageError` unless the store is reachable and writable (readiness)."""

    # --- ingest -------------------------------------------------------------------

    async def ingest(self, items: Sequence[tuple[Event, Evaluation]], now: float) -> IngestResult:
        """Store events with their outcomes and queue their transitions, atomically.

        Durable (committed) when it returns. An event whose (source, event_id) is
        already stored is a duplicate: counted, not stored again, its transitions not
        queued. Concurrent calls are group-committed (one transaction, one fsync).
        New transitions are pending with next_attempt_at = now. Raises `StorageError`.

        In the same transaction, event by event in the order given: each new transition
        cancels its lead's scheduled follow-ups that it is newer than, and a transition
        with a `follow_up` schedules it (cancelled at once when its lead already has a
        newer transition of another event); see bridge/followups.py.
        """

    # --- delivery -----------------------------------------------------------------

    async def recover_claims(self, *, epoch: int) -> int:
        """Put every in_flight transition of an earlier lease term back to pending.

        Run by a new holder before it claims anything. Raises `LeaseLost` unless `epoch`
        is the lease's current epoch.
        """

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
        """Claim up to `limit` transitions due at `now`, at most one per (account, lead).

        Leads of `skip_accounts` are left out (accounts whose token is refused); with
        `only_account`, only that account's leads are considered (a probe).

        A lead with an in_flight transition is skipped. Per lead, pending transitions
        are ordered by (occurred_at, id). Without coalescing the lead's first one is
        its head; the lead is due when its head is due. With coalescing the newest
        one is the head and, when it is due, the older pending ones become
        `superseded`. A head older than the lead's last delivered transition
        (occurred_at strictly smaller) becomes `stale` and the next one is considered
        (`bridge.claims.plan_lead`). Claimed transitions become in_flight under `epoch`.
        `followup_due_at` is the earliest due time of a scheduled follow-up, past or not.
        Raises `LeaseLost` unless `epoch` is the lease's current epoch.
        """

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
        """Claim up to `requests` requests' worth of due transitions: batches in
        `Claim.batches`, single PATCHes in `Claim.claimed` (`bridge.bulk.plan_requests`
        over the oldest due lead heads). Every rule of `claim_due` holds: at most one
        transition per lead, per-lead order, stale and superseded, fenced by `epoch`.
        """

    async def settle_many(
        self,
        settles: Sequence[Settle],
        now: float,
        *,
        batch: BatchRecord | None = None,
        epoch: int,
    ) -> int | None:
        """Settle several claims in one transaction, each as `mark_delivered`,
        `schedule_retry`, `mark_dead` or `release` would; with `batch`, record it and
        that each settled attempt went in it (its id is returned). All or nothing: any
        claim not in flight under `epoch` raises `LeaseLost` and changes nothing.
        """

    async def fire_followups(self, now: float, limit: int, *, epoch: int) -> Firing:
        """Fire up to `limit` scheduled follow-ups due at `now`, earliest first.

        In one transaction per call, each becomes a pending transition of origin
        `followup` due now, with occurred_at = its due_at, and `fired`; each cancels its
        lead's other scheduled follow-ups it is newer than. A follow-up fires once: the
        state change and the transition (unique per event, rule and origin) commit
        together. Raises `LeaseLost` unless `epoch` is the lease's current epoch.
        """

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
        """Dead-letter the account's pending transitions created before `created_before`
        (they waited on a refused token past retry.max_age); returns them. Fenced."""

    # Settling: each applies only to a transition in flight under `epoch`, while that
    # epoch is current; otherwise it raises `LeaseLost` and changes nothing.

    async def mark_delivered(
        self, transition_id: int, now: float, http_status: int, *, epoch: int
    ) -> None:
        """Record a 2xx; the lead's last delivered occurred_at advances (never goes back)."""

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
        """Back to pending at `next_attempt_at`. `counts`: the attempt used up one of
        retry.max_attempts (a 429 does not). `not_found`: the attempt was answered 404.
        """

    async def release(self, transition_id: int, next_attempt_at: float, *, epoch: int) -> None:
        """Back to pending without recording an attempt (auth pause, not sent)."""

    async def mark_dead(
        self,
        transition_id: int,
        now: float,
        *,
        reason: str,
        http_status: int | None,
        epoch: int,
    ) -> None:
        """Give up on a transition; it appears in dead letters."""

    # --- operating ----------------------------------------------------------------

    async def dead_letters(self, limit: int = 1000) -> list[LedgerEntry]:
        """Dead transitions, newest first."""

    async def retry_dead(self, ids: Sequence[int] | None, now: float) -> int:
        """Re-queue dead transitions (all when `ids` is None) with fresh attempts."""

    async def ledger(self, account_id: int, lead_id: int) -> list[LedgerEntry]:
        """Every transition of one lead, newest first."""

    async def events_for_replay(
        self,
        *,
        ids: Sequence[int] | None = None,
        outcome: Outcome | None = None,
        since: float | None = None,
        limit: int = 10_000,
    ) -> list[StoredEvent]:
        """Stored events chosen by primary key, or by outcome and received_at >= since."""

    async def list_events(
        self,
        *,
        outcome: Outcome | None = None,
        source: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[StoredEvent]:
        """Stored events, newest first (received_at, then pk, descending); when given, only
        those with `outcome`, from `source`, received at or after `since`."""

    async def apply_replay(self, pk: int, evaluation: Evaluation, now: float) -> Replayed:
        """Store a new outcome for an event and queue its new transitions (and follow-ups,
        cancelling as `ingest` does); returns what it queued.

        Only while the event is still not `matched`, checked in the transaction that
        queues: of two concurrent replays of one event, one queues and the other nothing.
        A transition is unique per (event, rule, origin), so nothing can queue one twice.
        """

    async def followups(
        self,
        *,
        ids: Sequence[int] | None = None,
        lead: tuple[int, int] | None = None,
        state: FollowUpState | None = None,
        limit: int = 1000,
    ) -> list[FollowUpEntry]:
        """Follow-ups chosen by id, or by lead (account_id, lead_id) and state; earliest due
        first."""

    async def cancel_followups(
        self,
        now: float,
        *,
        ids: Sequence[int] | None = None,
        lead: tuple[int, int] | None = None,
        cause: str,
    ) -> list[FollowUpEntry]:
        """Cancel the scheduled follow-ups among `ids` or of `lead`; returns those cancelled.

        A follow-up that fired (or was cancelled) before this transaction is left as it
        is: of a cancel and a firing running at once, exactly one wins.
        """

    async def stats(self, now: float) -> Stats:
        """Counts per state and outcome, retrying count, oldest pending age."""

    async def purge(self, older_than: float) -> int:
        """Delete events received before `older_than` whose transitions are all settled.

        Never an event with a pending, in-flight or dead transition or a scheduled
        follow-up, whatever runs concurrently (a replay queueing transitions for it, a
        dead letter retried).
        """


# --- the delivery lease and the wake-up channel -----------------------------------------


@dataclass(frozen=True, slots=True)
class LeaseGrant:
    """The answer to one attempt to take the delivery lease."""

    epoch: int | None  # the new epoch when taken; None when another process holds it
    expires_in: float | None = None  # seconds until the holder's expiry (database clock)


class Lease(Protocol):
    """The delivery lease record of one store: holder, epoch, expiry by the database's clock.

    Identity is the database itself (the lease is a row in it), never how its URL was
    written. See `bridge/lease.py` for how the holder uses it.
    """

    async def acquire(self, holder: str, ttl: float) -> LeaseGrant:
        """Take the lease if it is free or expired: the epoch grows, expiry = now + ttl."""

    async def renew(self, holder: str, epoch: int, ttl: float) -> bool:
        """Push the expiry to now + ttl; False when `holder`/`epoch` is no longer current
        (definitive: the term is over). Raises StorageError when the store cannot answer."""

    async def release(self, holder: str, epoch: int) -> None:
        """Give the lease up at once (clean shutdown), if still ours."""

    async def close(self) -> None:
        """Release the resources the lease uses (not the lease itself)."""


class Wakeup(Protocol):
    """How processes sharing a store wake the one that delivers."""

    def publish(self) -> None:
        """Tell the deliverer, wherever it runs, that new work was stored. Never blocks."""

    async def notify(self) -> None:
        """Publish once and wait until it is sent (a command-line process about to exit)."""

    async def listen(self, callback: Callable[[], None], lost: Callable[[str], None]) -> Listening:
        """The deliverer's side: call `callback` on every publication until closed.

        Raises (OSError, StorageError) when the channel cannot be set up; calls `lost`
        with a reason if it breaks later. Either way delivery falls back to polling.
        """

    async def close(self) -> None:
        """Close the publishing side."""


class Listening(Protocol):
    async def close(self) -> None:
        """Stop listening (not reported as lost)."""


@dataclass(frozen=True, slots=True)
class Backend:
    """One storage backend's three parts, for one storage URL."""

    store: Store
    lease: Lease
    wakeup: Wakeup
