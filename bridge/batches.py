"""The delivery worker's side of bulk delivery: send one claimed batch and carry out
what its answer means (`bridge.bulk` decides; the `Deliverer` settles and paces).

A batch is one request: it waits for the pacer once, is fenced like a PATCH (the lease
is asked right before its bytes are written), and its members stay in flight until its
answer is settled, so no other request for those leads can start meanwhile.

- every lead affected: all delivered, recorded as one batch in the ledger;
- fewer affected: the ones found are delivered, the missing ones are found by sending
  halves again (`bulk.Search`), and each is then PATCHed alone, one at a time in the
  batch's slot: its own answer decides, a 404 under the 404 policy like any other;
- 401/403, 429, 5xx, timeouts, `success: false`: as for a PATCH, for the whole batch;
- 400/413/422: the batch is refused as such: this process halves its largest batch and
  puts the leads back (no attempt counted), to go out in smaller batches;
- 405: this Voxys has no bulk endpoint: bulk is off for the process (logged once); 404:
  no endpoint or no such account, Voxys cannot tell: bulk is off for that account (logged
  once per account); either way the leads go back to be PATCHed.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import structlog

from bridge.answers import Reply
from bridge.bulk import BulkReply, Judgement, Kind, Search, bulk_body, bulk_path, judge, read_answer
from bridge.config import RetryConfig
from bridge.lease import Term
from bridge.pauses import AuthPauses
from bridge.retry import Action, Decision, Pacing, decide, reply_reason
from bridge.runtime import Runtime
from bridge.store.base import BatchRecord, QueuedTransition, Settle
from bridge.voxys import VoxysClient


class Deliverer(Protocol):
    """What a batch needs of the worker sending it (bridge.delivery.Deliverer)."""

    runtime: Runtime
    client: VoxysClient
    term: Term
    pauses: AuthPauses
    rng: random.Random
    clock: Callable[[], float]

    @property
    def config(self) -> RetryConfig: ...

    def fields(self, t: QueuedTransition) -> dict[str, object]: ...

    async def _settle(
        self, op: str, write: Callable[[], Awaitable[None]], fields: dict[str, object]
    ) -> bool: ...

    def _learn_token(
        self, account_id: int, reply: Reply, decision: Decision, now: float
    ) -> None: ...

    async def _send(self, t: QueuedTransition, *, probe: bool = False) -> None: ...


log = structlog.get_logger("bridge.delivery")


async def deliver(d: Deliverer, members: Sequence[QueuedTransition]) -> None:
    """Send one batch (two or more leads of one account and status) and settle it."""
    first = members[0]
    fields: dict[str, object] = {
        "account_id": first.account_id,
        "status": str(first.status),
        "leads": len(members),
    }
    answer = await _send(d, members)
    reply = answer.reply
    now = d.clock()
    if not reply.sent:
        log.warning("bulk.held", reason=reply.error, **fields)
        await _release(d, members, now, fields)
        return
    judged = judge(answer, len(members))
    if judged.kind is Kind.NO_ENDPOINT:
        reason = reply_reason(reply)
        if d.runtime.delivery.bulk.unavailable(first.account_id, reply.status, reason):
            off_for = "account" if reply.status == 404 else "process"
            log.warning("bulk.unavailable", reason=reason, off_for=off_for, **fields)
        await _release(d, members, now, fields)
        return
    d.pauses.answered(first.account_id, now)
    if judged.kind is Kind.TOO_LARGE:
        largest = d.runtime.delivery.bulk.shrink(len(members))
        log.warning("bulk.too_large", reason=reply_reason(reply), max_batch=largest, **fields)
        await _release(d, members, now, fields)
        return
    if judged.kind is Kind.PER_REPLY:
        assert judged.reply is not None
        await _fail(d, members, judged.reply, now, _record(members, reply, now), fields)
        return
    d._learn_token(first.account_id, reply, Decision(Action.DELIVERED), now)
    await _delivered(d, members, reply, judged, now, fields)


async def _delivered(
    d: Deliverer,
    members: Sequence[QueuedTransition],
    reply: Reply,
    judged: Judgement,
    now: float,
    fields: dict[str, object],
) -> None:
    """Settle what the batch delivered; find and PATCH the leads it did not."""
    found: Sequence[QueuedTransition] = members
    verify: Sequence[QueuedTransition] = ()
    probes = 0
    if judged.kind is Kind.SHORT:
        search = Search.start(members, judged.missing)
        probes = await _search(d, search, fields)
        found, verify = search.found, search.verify
    if found:
        settles = [Settle(t.id, "delivered", http_status=reply.status) for t in found]
        ok, batch_id = await _write(d, settles, now, _record(members, reply, now), fields)
        if not ok:
            return
        d.client.pacer.react(Pacing(recover=True))  # as after a delivered PATCH
        for t in found:
            d.runtime.metrics.settled("delivered")
            log.info(
                "transition.delivered", attempt=t.attempts + 1, batch_id=batch_id, **d.fields(t)
            )
    log.info(
        "bulk.delivered",
        attempt=max(t.attempts for t in members) + 1,
        latency_ms=round(reply.latency_s * 1000, 1),
        delivered=len(found),
        not_found=judged.missing,  # by Voxys's count
        patched=len(verify),
        probes=probes,
        notes_dropped=sum(1 for t in found if t.notes is not None),
        **fields,
    )
    # Each alone: its own answer decides (a 404 meets the 404 policy). One at a time, in
    # this batch's slot: started all at once they would exceed max_in_flight, and those
    # waiting for a connection would time out unsent and lose an attempt.
    for t in verify:
        await d._send(t, probe=False)


async def _search(d: Deliverer, search: Search, fields: dict[str, object]) -> int:
    """Send the search's probes until it is done or one fails; how many were sent. A
    failed probe's leads are settled as its answer says."""
    probes = 0
    while (probe := search.step()) is not None:
        answer = await _send(d, probe.members)
        probes += 1
        judged = judge(answer, len(probe.members))
        if judged.kind in (Kind.DELIVERED, Kind.SHORT):
            search.answered(len(probe.members) - judged.missing)
            continue
        left = search.failed()
        now = d.clock()
        log.warning(
            "bulk.search_failed", reason=reply_reason(answer.reply), left=len(left), **fields
        )
        if judged.kind is Kind.PER_REPLY and judged.reply is not None:
            await _fail(d, left, judged.reply, now, None, fields)
        else:  # not sent, or the endpoint turned odd: back to the queue, no attempt
            await _release(d, left, now, fields)
        return probes
    if search.contradicted:
        log.warning("bulk.count_unexpected", patched=len(search.verify), **fields)
    return probes


async def _send(d: Deliverer, members: Sequence[QueuedTransition]) -> BulkReply:
    """One bulk request, paced and fenced like a PATCH; metrics for what was sent."""
    first = members[0]
    pacer = d.client.pacer
    waited = pacer.waited_s
    body = bulk_body([t.lead_id for t in members], str(first.status))
    reply, raw = await d.client.request("POST", bulk_path(first.account_id), body, d.term.valid)
    if reply.sent:
        metrics = d.runtime.metrics
        metrics.limiter_wait.inc(max(0.0, pacer.waited_s - waited))
        metrics.attempt(reply.status, reply.latency_s, leads=len(members))
    return read_answer(reply, raw)


async def _release(
    d: Deliverer, members: Sequence[QueuedTransition], now: float, fields: dict[str, object]
) -> None:
    """Back to pending, due now, without an attempt."""
    settles = [Settle(t.id, "release", next_attempt_at=now) for t in members]
    await _write(d, settles, now, None, fields)


async def _write(
    d: Deliverer,
    settles: list[Settle],
    now: float,
    record: BatchRecord | None,
    fields: dict[str, object],
) -> tuple[bool, int | None]:
    """`settle_many`, retried until the store takes it: (False when the term is over,
    the batch's id)."""
    batch_id: int | None = None

    async def write() -> None:
        nonlocal batch_id
        batch_id = await d.runtime.store.settle_many(settles, now, batch=record, epoch=d.term.epoch)

    ok = await d._settle("settle_many", write, fields)
    return ok, batch_id


async def _fail(
    d: Deliverer,
    members: Sequence[QueuedTransition],
    reply: Reply,
    now: float,
    record: BatchRecord | None,
    fields: dict[str, object],
) -> None:
    """Settle every member as a PATCH answered `reply` would be, with one backoff draw
    for them all, so that they are due together again and go out as one batch."""
    seed = d.rng.random()
    decisions = [
        decide(t, reply, now=now, retry=d.config, rng=random.Random(seed)) for t in members
    ]
    d._learn_token(members[0].account_id, reply, decisions[0], now)
    # Once for the request (the same answer, so the same reaction for every member): a
    # 429 halves the pace and a Retry-After pauses it, even when the members are dead.
    d.client.pacer.react(decisions[0].pacing)
    settles = [
        _settle_of(t, decision, reply, now) for t, decision in zip(members, decisions, strict=True)
    ]
    if not (await _write(d, settles, now, record, fields))[0]:
        return
    log.info(
        "bulk.failed",
        http_status=reply.status,
        error=reply.error,
        reason=reply_reason(reply),
        **fields,
    )
    for t, decision in zip(members, decisions, strict=True):
        if decision.action is Action.DEAD:
            d.runtime.metrics.settled("dead")
            log.warning(
                "transition.dead", reason=decision.reason, http_status=reply.status, **d.fields(t)
            )
        elif decision.action is Action.RETRY:
            assert decision.next_attempt_at is not None
            log.info(
                "transition.retrying",
                attempt=t.attempts + 1,
                http_status=reply.status,
                error=reply.error,
                retry_in_s=round(decision.next_attempt_at - now, 3),
                **d.fields(t),
            )


def _settle_of(t: QueuedTransition, decision: Decision, reply: Reply, now: float) -> Settle:
    if decision.action is Action.PAUSE:
        return Settle(t.id, "release", next_attempt_at=now)
    if decision.action is Action.DEAD:
        return Settle(t.id, "dead", http_status=reply.status, reason=decision.reason)
    return Settle(
        t.id,
        "retry",
        http_status=reply.status,
        reason=decision.reason,
        next_attempt_at=decision.next_attempt_at,
        counts=decision.counts,
        not_found=decision.not_found,
    )


def _record(members: Sequence[QueuedTransition], reply: Reply, now: float) -> BatchRecord:
    first = members[0]
    return BatchRecord(first.account_id, first.status, len(members), reply.status, now)
