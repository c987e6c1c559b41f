"""The delivery worker: claim per lead, send, and carry out retry, pause or dead letter.

`bridge.retry.decide` is the pure core: one attempt's verdict plus the transition's
history give what happens next. `Deliverer` is the I/O around it for one term of the
delivery lease: it claims due transitions from the store (at most one per lead,
coalesced and ordered by the store), keeps at most `voxys.max_in_flight` requests in
flight, wakes at once when ingest stores new work and otherwise sleeps exactly until
the next retry is due. `Leader` takes the lease, renews it, and runs one `Deliverer`
per term.

Fencing. Every claim and settle carries the term's epoch, which the store refuses once
another process holds the lease; and every request asks the term, immediately before
its bytes are written, whether the lease is still valid by this process's clock. A
holder that cannot renew therefore stops sending before anyone else may start.

Settles are not lost. Recording an answer is retried with backoff until the store
takes it, or until the store says the term is over (then the new holder recovers the
claim and sends it again: a repeat is allowed, a claim stuck in flight is not).

Follow-ups (bridge/followups.py). Scheduled follow-ups wait in the store, not here: each
claim reports the earliest due time among them, and the worker sleeps until then (or a
wake-up). When one is due, `fire_followups` turns it into an ordinary pending transition
under the term's epoch, so a process that lost the lease can never fire one.

Auth pauses (bridge/pauses.py). A 401/403 means the token is refused for that account:
no attempt is used up, the transition goes back to the queue, the account is left out
of claims and probed with one request every 30 s, backing off to 5 min, until Voxys
accepts it again; other accounts keep flowing unless every account in use is refused.
A transition waiting on a refused token still ages: past retry.max_age it is dead.

One concept: carrying out delivery for the lease holder. `Deliverer` (one term)
and `Leader` (the terms) share the fencing, settling and wake-up rules described
here; the decisions live in retry, claims, pacing and pauses.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Final

import structlog
from aiohttp import web

from bridge import batches, followups
from bridge.answers import Reply, Verdict, classify
from bridge.config import RetryConfig
from bridge.errors import LeaseLost, StorageError
from bridge.lease import Term, Timing, holder_name
from bridge.pauses import AuthPauses
from bridge.retry import Action, Decision, decide, refused_reason
from bridge.runtime import RUNTIME, Runtime
from bridge.store.base import Backend, Claim, Lease, Listening, QueuedTransition, Wakeup
from bridge.voxys import VoxysClient

log = structlog.get_logger("bridge.delivery")

STORE_RETRY_S: Final = 1.0  # wait after the store failed, before claiming again
IDLE_POLL_S: Final = 30.0  # safety net: look for due work at least this often
DEGRADED_POLL_S: Final = 1.0  # ... and this often while the wake-up channel is down
RELISTEN_S: Final = 5.0  # how often a broken wake-up channel is set up again
SETTLE_BACKOFF_S: Final = (0.05, 5.0)  # first and largest wait between settle attempts
FIRE_BATCH: Final = 500  # follow-ups fired per transaction; more due fire in the next step


class Deliverer:
    """Feeds due transitions to Voxys for one term of the delivery lease, until stopped."""

    def __init__(
        self,
        runtime: Runtime,
        client: VoxysClient,
        term: Term,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        pauses: AuthPauses | None = None,
    ) -> None:
        self.runtime = runtime
        self.client = client
        self.term = term
        self.clock = clock
        self.rng = rng or random.Random()
        if pauses is None:  # the process's own, with the probe timing configured now
            pauses = runtime.delivery.pauses
            probe = runtime.bundle.config.voxys.retry.auth_probe
            pauses.probe_initial, pauses.probe_max = probe.initial, probe.max
            pauses.window = probe.initial
        self.pauses = pauses
        self.degraded = False  # the wake-up channel is down: poll often
        self.fenced = asyncio.Event()  # the store refused this term's epoch
        # The earliest scheduled follow-up as the store last said (0: look at once).
        self.followups_at: float | None = 0.0
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = False  # waiting for new work (not for a free slot or the token)
        self._news = False  # work was stored since the last claim began
        self._idle_count = 0

    def wake(self, _count: int = 0) -> None:
        """Look again now (the clock moved, a wake-up arrived from another process)."""
        self._wake.set()

    def stored(self, _count: int = 0) -> None:
        """New work was stored here. Wakes the worker only when it waits for work: a
        worker waiting for a free slot or for the token would only look and sleep again,
        and ingest calls this for every webhook."""
        self._news = True
        if self._idle:
            self._wake.set()

    @staticmethod
    def fields(t: QueuedTransition) -> dict[str, object]:
        """A transition's log fields (bridge/batches.py logs with them too)."""
        return _fields(t)

    @property
    def config(self) -> RetryConfig:
        return self.runtime.bundle.config.voxys.retry

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    @property
    def idle_count(self) -> int:
        """How many times the worker has found nothing to do and begun waiting for work."""
        return self._idle_count

    async def run(self) -> None:
        """Recover earlier terms' claims, then claim and send until stopped or fenced."""
        while not (self._stopping or self.fenced.is_set()):
            try:
                recovered = await self.runtime.store.recover_claims(epoch=self.term.epoch)
                break
            except StorageError as exc:
                log.error("delivery.store_failed", error=str(exc))
                await self._sleep(STORE_RETRY_S)
            except LeaseLost:
                self.fenced.set()
        else:
            return
        if recovered:
            log.info("delivery.recovered", transitions=recovered, epoch=self.term.epoch)
        self.runtime.metrics.deliverer.set(1)
        while not (self._stopping or self.fenced.is_set()):
            await self._step()

    async def _step(self) -> None:
        voxys = self.runtime.bundle.config.voxys
        if not self.term.valid():
            # Renewals are failing: nothing may be claimed or sent until one succeeds.
            await self._sleep(max(0.05, min(1.0, self.term.timing.renew_every / 4)))
            return
        now = self.clock()
        if self._followups_due(now):
            try:
                await self._fire(now)
            except StorageError as exc:
                log.error("delivery.store_failed", error=str(exc))
                await self._sleep(STORE_RETRY_S)
                return
            except LeaseLost:
                self.fenced.set()
                return
        room = voxys.max_in_flight - len(self._tasks)
        if room <= 0 or (self._tasks and room < voxys.max_in_flight // 2):
            # Claim in batches: one claim (a store write) per free slot would cost a
            # commit per transition. A finishing task wakes us.
            await self._sleep(self._poll())
            return
        # Claim no more than one rate-limit window's worth: what is claimed waits in flight
        # for the pacer, and a transition waiting there cannot be coalesced any more.
        rate = voxys.rate_limit.requests if self.client.pacer.configured else room
        claimed = 0
        next_due_at: float | None = None
        self._news = False
        try:
            claimed = await self._probe(now, room)
            if room - claimed > 0:
                claim = await self._claim(now, min(room - claimed, max(1, rate)))
                self._report(claim.superseded, claim.stale)
                for t in claim.claimed:
                    self._start(t, probe=False)
                for members in claim.batches:  # one request each (bridge/batches.py)
                    self._track(asyncio.create_task(batches.deliver(self, members)))
                claimed += len(claim.claimed) + len(claim.batches)
                next_due_at = claim.next_due_at
                self.followups_at = claim.followup_due_at
        except StorageError as exc:
            log.error("delivery.store_failed", error=str(exc))
            await self._sleep(STORE_RETRY_S)
            return
        except LeaseLost:
            self.fenced.set()
            return
        if not claimed and not self._news and not self._followups_due(self.clock()):
            until = self._poll()
            for at in (next_due_at, self.followups_at, self.pauses.next_probe_at()):
                if at is not None:
                    until = min(until, max(0.01, at - self.clock()))
            self._idle = True
            self._idle_count += 1
            try:
                await self._sleep(until)
            finally:
                self._idle = False

    def _followups_due(self, now: float) -> bool:
        return self.followups_at is not None and self.followups_at <= now

    async def _fire(self, now: float) -> None:
        """Turn due follow-ups into pending transitions (claimed right after, like any)."""
        firing = await self.runtime.store.fire_followups(now, FIRE_BATCH, epoch=self.term.epoch)
        self.followups_at = firing.next_due_at
        for entry in firing.fired:
            log.info(
                "followup.fired",
                transition_id=entry.transition_id,
                late_s=round(max(0.0, now - entry.due_at), 3),
                **followups.fields(entry),
            )
        for entry in firing.cancelled:
            log.info("followup.cancelled", cause=entry.cause, **followups.fields(entry))

    async def _probe(self, now: float, room: int) -> int:
        """Send one probe for each paused account whose probe is due; how many went out.

        First, what waited on the refused token past retry.max_age is dead-lettered.
        """
        sent = 0
        for account_id in self.pauses.probes_due(now)[:room]:
            pause = self.pauses.paused[account_id]
            expired = await self.runtime.store.expire_pending(
                account_id,
                now - self.config.max_age,
                now,
                reason=refused_reason(account_id),
                http_status=pause.http_status,
                epoch=self.term.epoch,
            )
            for t in expired:
                self.runtime.metrics.settled("dead")
                log.warning(
                    "transition.dead",
                    reason=refused_reason(account_id),
                    http_status=pause.http_status,
                    **_fields(t),
                )
            claim = await self.runtime.store.claim_due(
                now,
                1,
                coalesce=self.runtime.bundle.config.voxys.coalesce,
                epoch=self.term.epoch,
                only_account=account_id,
            )
            self._report(claim.superseded, claim.stale)
            if not claim.claimed:  # nothing waits on this account's token any more
                self.pauses.nothing_to_probe(account_id)
                self._show_pauses()
                continue
            self.pauses.probe_started(account_id)
            self._start(claim.claimed[0], probe=True)
            sent += 1
        return sent

    def _report(
        self, superseded: Sequence[QueuedTransition], stale: Sequence[QueuedTransition]
    ) -> None:
        for t in superseded:
            self.runtime.metrics.settled("superseded")
            log.info("transition.superseded", **_fields(t))
        for t in stale:
            self.runtime.metrics.settled("stale")
            log.info("transition.stale", **_fields(t))

    async def _claim(self, now: float, requests: int) -> Claim:
        """Claim up to `requests` requests' worth: in batches when bulk is on."""
        voxys, store = self.runtime.bundle.config.voxys, self.runtime.store
        bulk = self.runtime.delivery.bulk.rules(voxys.bulk, self.runtime.bundle.loaded.rules)
        if bulk is None:
            return await store.claim_due(
                now,
                requests,
                coalesce=voxys.coalesce,
                epoch=self.term.epoch,
                skip_accounts=self.pauses.skipped(),
            )
        return await store.claim_requests(
            now,
            requests,
            bulk=bulk,
            coalesce=voxys.coalesce,
            epoch=self.term.epoch,
            skip_accounts=self.pauses.skipped(),
        )

    def _start(self, t: QueuedTransition, *, probe: bool) -> None:
        self._track(asyncio.create_task(self._send(t, probe=probe)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _show_pauses(self) -> None:
        metrics = self.runtime.metrics
        metrics.paused_tokens.set(1 if self.pauses.token_wide else 0)
        metrics.paused_accounts.set(len(self.pauses.paused))

    def _poll(self) -> float:
        return DEGRADED_POLL_S if self.degraded else IDLE_POLL_S

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("delivery.task_failed", error=repr(exc), exc_info=exc)

    async def _sleep(self, seconds: float) -> None:
        """Sleep until woken (new work, a free slot, stop) or `seconds` passed."""
        if self._wake.is_set():
            self._wake.clear()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _send(self, t: QueuedTransition, *, probe: bool = False) -> None:
        try:
            await self._attempt(t)
        finally:
            if probe:  # whatever became of the probe, the next one may be scheduled
                self.pauses.probe_ended(t.account_id)
            self._show_pauses()

    async def _attempt(self, t: QueuedTransition) -> None:
        metrics = self.runtime.metrics
        pacer = self.client.pacer
        waited = pacer.waited_s
        fields = _fields(t)
        reply = await self.client.set_status(
            t.account_id, t.lead_id, t.status, t.notes, fence=self.term.valid
        )
        if not reply.sent:
            log.warning("transition.held", reason=reply.error, **fields)
            await self._settle(
                "release",
                lambda: self.runtime.store.release(t.id, self.clock(), epoch=self.term.epoch),
                fields,
            )
            return
        now = self.clock()
        metrics.limiter_wait.inc(max(0.0, pacer.waited_s - waited))
        metrics.attempt(reply.status, reply.latency_s)
        self.pauses.answered(t.account_id, now)
        decision = decide(t, reply, now=now, retry=self.config, rng=self.rng)
        self._learn_token(t.account_id, reply, decision, now)
        await self._apply(t, reply, decision, now, t.attempts + 1, fields)

    async def _settle(
        self, op: str, write: Callable[[], Awaitable[None]], fields: dict[str, object]
    ) -> bool:
        """Record an answer, retrying with backoff until the store takes it.

        False when the store refused this term (LeaseLost): the claim is the new
        holder's to recover, so this one gives up on it and the term ends.
        """
        delay, ceiling = SETTLE_BACKOFF_S
        failures = 0
        while True:
            try:
                await write()
            except StorageError as exc:
                failures += 1
                log.warning(
                    "delivery.settle_failed", op=op, error=str(exc), failures=failures, **fields
                )
                await asyncio.sleep(self.rng.uniform(delay / 2, delay))
                delay = min(ceiling, delay * 2)
                continue
            except LeaseLost:
                log.warning("delivery.settle_fenced", op=op, epoch=self.term.epoch, **fields)
                self.fenced.set()
                self._wake.set()
                return False
            if failures:
                log.info("delivery.settle_recovered", op=op, failures=failures, **fields)
            return True

    def _learn_token(self, account_id: int, reply: Reply, decision: Decision, now: float) -> None:
        """What the answer says about the token for this account: refused, accepted, or
        nothing (a 5xx, 429 or timeout)."""
        verdict = classify(reply)
        if verdict is Verdict.REFUSED:
            refusal = self.pauses.refuse(account_id, now, reply.status)
            if refusal.started or refusal.token_wide_started:
                pause = self.pauses.paused[account_id]
                log.error(
                    "voxys.auth_failed",
                    account_id=account_id,
                    token_wide=refusal.token_wide,
                    http_status=reply.status,
                    probe_in_s=pause.interval,
                    reason=decision.reason,
                )
        elif verdict in (Verdict.RETRY, Verdict.THROTTLED):
            self.pauses.inconclusive(account_id, now)
        else:  # authenticated: 2xx, 404, 422 ...
            recovery = self.pauses.accepted(account_id)
            if recovery.account or recovery.token_wide:
                log.info(
                    "voxys.auth_recovered", account_id=account_id, token_wide=recovery.token_wide
                )
        self._show_pauses()

    async def _apply(
        self,
        t: QueuedTransition,
        reply: Reply,
        decision: Decision,
        now: float,
        attempt: int,
        fields: dict[str, object],
    ) -> None:
        store, metrics, epoch = self.runtime.store, self.runtime.metrics, self.term.epoch
        # The answer's reaction first, whatever becomes of the transition: a 429 slows and
        # a Retry-After holds every request after it, even one for a dead transition.
        self.client.pacer.react(decision.pacing)
        if decision.action is Action.DELIVERED:
            status = reply.status or 200
            if not await self._settle(
                "mark_delivered",
                lambda: store.mark_delivered(t.id, now, status, epoch=epoch),
                fields,
            ):
                return
            metrics.settled("delivered")
            log.info(
                "transition.delivered",
                attempt=attempt,
                latency_ms=round(reply.latency_s * 1000, 1),
                **fields,
            )
        elif decision.action is Action.PAUSE:
            await self._settle("release", lambda: store.release(t.id, now, epoch=epoch), fields)
        elif decision.action is Action.DEAD:
            reason = decision.reason or ""
            if not await self._settle(
                "mark_dead",
                lambda: store.mark_dead(
                    t.id, now, reason=reason, http_status=reply.status, epoch=epoch
                ),
                fields,
            ):
                return
            metrics.settled("dead")
            log.warning(
                "transition.dead",
                attempt=attempt,
                reason=decision.reason,
                http_status=reply.status,
                **fields,
            )
        else:
            assert decision.next_attempt_at is not None
            next_at = decision.next_attempt_at
            if not await self._settle(
                "schedule_retry",
                lambda: store.schedule_retry(
                    t.id,
                    now,
                    next_at,
                    counts=decision.counts,
                    not_found=decision.not_found,
                    http_status=reply.status,
                    reason=decision.reason,
                    epoch=epoch,
                ),
                fields,
            ):
                return
            log.info(
                "transition.retrying",
                attempt=attempt,
                http_status=reply.status,
                error=reply.error,
                retry_in_s=round(next_at - now, 3),
                **fields,
            )

    async def stop(self, grace: float) -> None:
        """Stop claiming and let requests in flight finish within `grace` seconds.

        Requests still running then are cancelled; their transitions stay claimed and
        the next term's `recover_claims` puts them back (at-least-once).
        """
        self._stopping = True
        self._wake.set()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self.runtime.metrics.deliverer.set(0)


def _fields(t: QueuedTransition) -> dict[str, object]:
    fields: dict[str, object] = {
        "source": t.source,
        "rule": t.rule,
        "event_id": t.event_id,
        "account_id": t.account_id,
        "lead_id": t.lead_id,
        "status": str(t.status),
        "transition_id": t.id,
    }
    if t.origin != "event":
        fields["origin"] = t.origin
    return fields


class Leader:
    """Delivers while this process holds the delivery lease; otherwise waits to take it over.

    Each term runs a fresh `Deliverer`, which first recovers the claims of whoever
    delivered before (at-least-once after a takeover), and a renewal loop that ends the
    term when the store says the lease is someone else's. `run` is a supervised task:
    whatever ends a term, the deliverer is stopped before the lease is released.
    """

    def __init__(
        self,
        runtime: Runtime,
        client: VoxysClient,
        lease: Lease,
        wakeup: Wakeup,
        *,
        timing: Timing,
        doorbell: Doorbell,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.runtime = runtime
        self.client = client
        self.lease = lease
        self.wakeup = wakeup  # listened to while delivering
        self.timing = timing
        self.holder = holder or holder_name()
        self.clock = clock
        self.doorbell = doorbell
        self.deliverer: Deliverer | None = None

    async def run(self) -> None:
        """Take the lease whenever it is free, and deliver for each term."""
        unavailable = False
        while True:
            sent_at = self.clock()
            try:
                grant = await self.lease.acquire(self.holder, self.timing.ttl)
            except StorageError as exc:
                if not unavailable:
                    log.warning("delivery.lease_unavailable", error=str(exc))
                unavailable = True
                await asyncio.sleep(self.timing.renew_every)
                continue
            unavailable = False
            if grant.epoch is None:
                await asyncio.sleep(self.timing.standby_wait(grant.expires_in))
                continue
            term = Term.granted(self.holder, grant.epoch, self.timing, sent_at, self.clock)
            await self._serve(term)

    async def _serve(self, term: Term) -> None:
        log.info("delivery.lease_acquired", epoch=term.epoch, holder=term.holder)
        self.client.pacer.quiet_window()  # the previous holder's sends may fill it
        deliverer = self.deliverer = Deliverer(self.runtime, self.client, term)
        self.doorbell.deliverer = deliverer  # work stored here goes to it from now on
        state = self.runtime.delivery
        state.role, state.epoch = "deliverer", term.epoch
        parts = {
            asyncio.create_task(deliverer.run(), name="deliver"),
            asyncio.create_task(self._renew(term, deliverer), name="renew"),
            asyncio.create_task(self._listen(deliverer), name="listen"),
        }
        try:
            done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_COMPLETED)
            for part in done:
                part.result()  # an unexpected error ends the term and reaches the supervisor
            if deliverer.fenced.is_set():
                log.warning("delivery.lease_lost", epoch=term.epoch, reason="refused by the store")
        finally:
            for part in parts:
                if part.get_name() != "deliver":
                    part.cancel()
            await deliverer.stop(self.runtime.bundle.config.voxys.timeout)
            for part in parts:
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
            self.deliverer = None
            self.doorbell.deliverer = None
            state.role, state.epoch = "standby", None
            await self._release(term)

    async def _release(self, term: Term) -> None:
        try:
            await self.lease.release(term.holder, term.epoch)
        except StorageError as exc:  # it expires by itself within the TTL
            log.warning("delivery.lease_release_failed", epoch=term.epoch, error=str(exc))
        else:
            log.info("delivery.lease_released", epoch=term.epoch)

    async def _renew(self, term: Term, deliverer: Deliverer) -> None:
        """Renew every ttl/3 until the store says the lease is someone else's."""
        failing = False
        while not deliverer.fenced.is_set():
            await asyncio.sleep(self.timing.renew_every / (4 if failing else 1))
            sent_at = self.clock()
            try:
                ours = await self.lease.renew(term.holder, term.epoch, self.timing.ttl)
            except StorageError as exc:
                log.warning(
                    "delivery.lease_renew_failed",
                    epoch=term.epoch,
                    error=str(exc),
                    valid_for_s=round(term.remaining(), 3),
                )
                failing = True
                continue
            if not ours:
                log.warning("delivery.lease_lost", epoch=term.epoch)
                return
            if failing:
                log.info("delivery.lease_renewed", epoch=term.epoch)
            failing = False
            lapsed = not term.valid()
            term.renewed(sent_at)
            if lapsed:  # it has been holding back while the term was not valid
                deliverer.wake()

    async def _listen(self, deliverer: Deliverer) -> None:
        """Keep the wake-up channel up; while it is down, the deliverer polls every second."""
        while True:
            outage = _Outage()
            listening: Listening | None = None
            try:
                listening = await self.wakeup.listen(deliverer.wake, outage.report)
            except (OSError, StorageError) as exc:
                outage.report(str(exc) or type(exc).__name__)
            if listening is not None:
                if deliverer.degraded:
                    log.info("delivery.wakeup_restored")
                deliverer.degraded = False
                try:
                    await outage.happened.wait()
                finally:
                    await listening.close()
            if not deliverer.degraded:
                log.warning(
                    "delivery.wakeup_unavailable", error=outage.reason, poll_s=DEGRADED_POLL_S
                )
            deliverer.degraded = True
            deliverer.wake()
            await asyncio.sleep(RELISTEN_S)


class _Outage:
    """Why and whether a wake-up channel broke."""

    def __init__(self) -> None:
        self.happened = asyncio.Event()
        self.reason = ""

    def report(self, reason: str) -> None:
        self.reason = reason
        self.happened.set()


class Doorbell:
    """The NewWork of a serving process: work stored here goes to this process's
    deliverer while it holds the lease (its Leader says which), and otherwise over the
    store's wake-up channel to the process that does."""

    def __init__(self, wakeup: Wakeup) -> None:
        self.wakeup = wakeup
        self.deliverer: Deliverer | None = None  # set by the Leader for each term

    def stored(self, transitions: int) -> None:
        if self.deliverer is not None:
            self.deliverer.stored(transitions)
        else:
            self.wakeup.publish()


def delivery_hook(
    backend: Backend, client: VoxysClient, timing: Timing, doorbell: Doorbell
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that delivers for the server's lifetime when holding the lease."""

    async def hook(app: web.Application) -> AsyncIterator[None]:
        runtime = app[RUNTIME]
        await client.start()
        runtime.delivery.pace = client.pacer.pace  # what the console shows
        leader = Leader(
            runtime, client, backend.lease, backend.wakeup, timing=timing, doorbell=doorbell
        )
        # Stopped by the supervisor's own cleanup context, which runs before this one's:
        # the term ends (in-flight requests get voxys.timeout) before the client closes.
        runtime.supervisor.start("delivery", leader.run)
        try:
            yield
        finally:
            await backend.lease.close()
            await backend.wakeup.close()
            await client.close()

    return hook
