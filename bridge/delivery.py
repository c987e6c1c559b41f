"""The delivery worker: claim per lead, send, and decide retry, pause or dead letter.

`bridge.retry.decide` is the pure core: one attempt's verdict plus the transition's
history give what happens next. `Deliverer` is the I/O around it: it claims due transitions from
the store (at most one per lead, coalesced and ordered by the store), keeps at most
`voxys.max_in_flight` requests in flight, wakes at once when ingest stores new work
and otherwise sleeps exactly until the next retry is due.

Auth pause. A 401/403 means the token is refused: nothing is burnt or dead-lettered.
The transition goes back to the queue, delivery stops for the token, and one probe
request is let through every 30 s, backing off to 5 min, until Voxys accepts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Final

import structlog
from aiohttp import web

from bridge.config import RetryConfig
from bridge.errors import StorageError
from bridge.ingest import RUNTIME, Runtime
from bridge.lease import Lease, lease_for
from bridge.retry import Action, AuthPause, Decision, decide
from bridge.store.base import QueuedTransition
from bridge.voxys import Reply, Verdict, VoxysClient, classify
from bridge.wakeup import Wakeup, wakeup_for

log = structlog.get_logger("bridge.delivery")

STORE_RETRY_S: Final = 1.0  # wait after the store failed, before claiming again
IDLE_POLL_S: Final = 30.0  # safety net: look for due work at least this often
LEASE_RETRY_S: Final = 5.0  # a standby tries to take the delivery lease this often
LEASE_CHECK_S: Final = 5.0  # the holder checks it still holds the lease this often


class Deliverer:
    """Feeds due transitions to Voxys until stopped."""

    def __init__(
        self,
        runtime: Runtime,
        client: VoxysClient,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        auth: AuthPause | None = None,
    ) -> None:
        self.runtime = runtime
        self.client = client
        self.clock = clock
        self.rng = rng or random.Random()
        self.auth = auth or AuthPause()
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._idle = False  # waiting for new work (not for a free slot or the token)
        self._news = False  # work was stored since the last claim began

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

    @property
    def config(self) -> RetryConfig:
        return self.runtime.bundle.config.voxys.retry

    def paused_tokens(self) -> int:
        return 1 if self.auth.paused else 0

    async def run(self) -> None:
        """Recover a dead worker's claims, then claim and send until `stop`."""
        store = self.runtime.store
        while not self._stopping:
            try:
                recovered = await store.recover_claims()
                break
            except StorageError as exc:
                log.error("delivery.store_failed", error=str(exc))
                await self._sleep(STORE_RETRY_S)
        else:
            return
        if recovered:
            log.info("delivery.recovered", transitions=recovered)
        self.runtime.metrics.deliverer.set(1)
        while not self._stopping:
            await self._step()

    async def _step(self) -> None:
        voxys = self.runtime.bundle.config.voxys
        now = self.clock()
        room = voxys.max_in_flight - len(self._tasks)
        allowed = self.auth.may_send(now)
        if allowed == 0:
            probe_in = self.auth.next_probe_at - now
            await self._sleep(IDLE_POLL_S if self.auth.probing else max(0.01, probe_in))
            return
        if allowed == 1:
            room = min(room, 1) if not self._tasks else 0
        if room <= 0 or (self._tasks and room < voxys.max_in_flight // 2):
            # Claim in batches: one claim (a store write) per free slot would cost a
            # commit per transition. A finishing task wakes us.
            await self._sleep(IDLE_POLL_S)
            return
        # Claim no more than one rate-limit window's worth: what is claimed waits in flight
        # for the pacer, and a transition waiting there cannot be coalesced any more.
        rate = voxys.rate_limit.requests if self.client.pacer.configured else room
        self._news = False
        try:
            claim = await self.runtime.store.claim_due(
                now, min(room, max(1, rate)), coalesce=voxys.coalesce
            )
        except StorageError as exc:
            log.error("delivery.store_failed", error=str(exc))
            await self._sleep(STORE_RETRY_S)
            return
        for t in claim.superseded:
            self.runtime.metrics.settled("superseded")
            log.info("transition.superseded", **_fields(t))
        for t in claim.stale:
            self.runtime.metrics.settled("stale")
            log.info("transition.stale", **_fields(t))
        if allowed == 1 and claim.claimed:
            self.auth.probing = True
        for t in claim.claimed:
            task = asyncio.create_task(self._send(t))
            self._tasks.add(task)
            task.add_done_callback(self._done)
        if not claim.claimed and not self._news:  # news: stored while we claimed
            until = IDLE_POLL_S
            if claim.next_due_at is not None:
                until = min(until, max(0.0, claim.next_due_at - self.clock()))
            self._idle = True
            try:
                await self._sleep(until)
            finally:
                self._idle = False

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

    async def _send(self, t: QueuedTransition) -> None:
        metrics = self.runtime.metrics
        pacer = self.client.pacer
        waited = pacer.waited_s
        reply = await self.client.set_status(t.account_id, t.lead_id, t.status, t.notes)
        now = self.clock()
        metrics.limiter_wait.inc(max(0.0, pacer.waited_s - waited))
        metrics.attempt(reply.status, reply.latency_s)
        decision = decide(t, reply, now=now, retry=self.config, rng=self.rng)
        attempt = t.attempts + 1
        fields = _fields(t)
        try:
            await self._apply(t, reply, decision, now, attempt, fields)
        except StorageError as exc:
            # The claim stays in_flight; recover_claims puts it back at the next start.
            log.error("delivery.store_failed", error=str(exc), **fields)
        metrics.paused_tokens.set(self.paused_tokens())

    async def _apply(
        self,
        t: QueuedTransition,
        reply: Reply,
        decision: Decision,
        now: float,
        attempt: int,
        fields: dict[str, object],
    ) -> None:
        store, metrics = self.runtime.store, self.runtime.metrics
        if decision.action is Action.DELIVERED:
            await store.mark_delivered(t.id, now, reply.status or 200)
            metrics.settled("delivered")
            self.client.pacer.succeeded()
            if self.auth.recover():
                log.info("voxys.auth_recovered")
            log.info(
                "transition.delivered",
                attempt=attempt,
                latency_ms=round(reply.latency_s * 1000, 1),
                **fields,
            )
        elif decision.action is Action.PAUSE:
            started = self.auth.refuse(now)
            await store.release(t.id, now)
            if started:
                log.error(
                    "voxys.auth_failed",
                    http_status=reply.status,
                    probe_in_s=self.auth.interval,
                    reason=decision.reason,
                )
        elif decision.action is Action.DEAD:
            await store.mark_dead(t.id, now, reason=decision.reason or "", http_status=reply.status)
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
            if classify(reply) is Verdict.THROTTLED:
                self.client.pacer.throttled()
                if reply.retry_after is not None:
                    self.client.pacer.pause_until(time.monotonic() + reply.retry_after)
            elif reply.retry_after is not None and reply.status == 503:
                self.client.pacer.pause_until(time.monotonic() + reply.retry_after)
            await store.schedule_retry(
                t.id,
                now,
                decision.next_attempt_at,
                counts=decision.counts,
                not_found=decision.not_found,
                http_status=reply.status,
                reason=decision.reason,
            )
            log.info(
                "transition.retrying",
                attempt=attempt,
                http_status=reply.status,
                error=reply.error,
                retry_in_s=round(decision.next_attempt_at - now, 3),
                **fields,
            )
        if self.auth.paused and decision.action is not Action.PAUSE:
            self.auth.probing = False

    async def stop(self, grace: float) -> None:
        """Stop claiming and let requests in flight finish within `grace` seconds.

        Requests still running then are cancelled; their transitions stay claimed and
        `recover_claims` puts them back at the next start (at-least-once).
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
    return {
        "source": t.source,
        "rule": t.rule,
        "event_id": t.event_id,
        "account_id": t.account_id,
        "lead_id": t.lead_id,
        "status": str(t.status),
        "transition_id": t.id,
    }


class Leader:
    """Delivers while this process holds the delivery lease; otherwise waits to take it over.

    Each term of office runs a fresh `Deliverer`, which first recovers the claims of
    whoever delivered before (at-least-once after a takeover).
    """

    def __init__(self, runtime: Runtime, client: VoxysClient, lease: Lease, wakeup: Wakeup) -> None:
        self.runtime = runtime
        self.client = client
        self.lease = lease
        self.wakeup = wakeup  # listened to while delivering
        self.deliverer: Deliverer | None = None
        runtime.on_stored.append(self.wake)
        runtime.paused_tokens = self.paused_tokens
        runtime.delivery_role = lambda: self.role

    def wake(self, count: int = 0) -> None:
        """New work was stored in this process (`Runtime.on_stored`)."""
        if self.deliverer is not None:
            self.deliverer.stored(count)

    def paused_tokens(self) -> int:
        return self.deliverer.paused_tokens() if self.deliverer is not None else 0

    @property
    def role(self) -> str:
        return "deliverer" if self.deliverer is not None else "standby"

    async def run(self) -> None:
        while True:
            try:
                acquired = await self.lease.try_acquire()
            except StorageError as exc:
                log.warning("delivery.lease_unavailable", error=str(exc))
                acquired = False
            if not acquired:
                await asyncio.sleep(LEASE_RETRY_S)
                continue
            log.info("delivery.lease_acquired")
            await self._term()

    async def _term(self) -> None:
        self.client.pacer.quiet_window()  # the previous holder's sends may fill it
        deliverer = self.deliverer = Deliverer(self.runtime, self.client)
        task = asyncio.create_task(deliverer.run())
        try:
            try:
                await self.wakeup.listen(deliverer.wake)
            except (OSError, StorageError) as exc:  # the safety-net poll still finds work
                log.warning("delivery.wakeup_unavailable", error=type(exc).__name__)
            while not task.done():
                await asyncio.wait({task}, timeout=LEASE_CHECK_S)
                if not task.done() and not await self.lease.still_held():
                    log.warning("delivery.lease_lost")
                    break
        finally:
            await self.wakeup.close()
            await deliverer.stop(self.runtime.bundle.config.voxys.timeout)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.deliverer = None

    async def close(self) -> None:
        await self.lease.release()


LEADER = web.AppKey("leader", Leader)


async def delivery_hook(app: web.Application) -> AsyncIterator[None]:
    """Deliver for the server's lifetime when holding the lease (a cleanup context)."""
    runtime = app[RUNTIME]
    client = VoxysClient(runtime.bundle.config.voxys)
    await client.start()
    url = runtime.bundle.config.storage.url
    leader = app[LEADER] = Leader(runtime, client, lease_for(url), wakeup_for(url))
    publisher = wakeup_for(url)  # wakes the deliverer when it is another process

    def publish(_count: int) -> None:
        if leader.deliverer is None:  # delivering here: the in-process wake-up suffices
            publisher.publish()

    runtime.on_stored.append(publish)
    task = asyncio.create_task(leader.run())
    try:
        yield
    finally:
        task.cancel()  # stops the current term: in-flight requests get voxys.timeout
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await leader.close()
        await publisher.close()
        await client.close()
