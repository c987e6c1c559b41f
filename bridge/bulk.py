"""Bulk delivery, the pure part: which requests to send, and what a bulk answer means.

Voxys changes the status of many leads of one account in one request
(`POST /api/v1/accounts/{id}/leads/bulk`, no notes, per the Voxys Connect API reference
at developers.voxys.ai). The rate limit counts requests, so a batch moves up to
`max_batch` leads for the price of one PATCH.

Choosing requests (`plan_requests`), each time the worker claims (at most one rate
window's worth of requests): when at least `min_batch` due lead heads that may go in
bulk share an (account, status), they go as batches of up to `max_batch`, the group
holding the oldest head first, since a batch moves the most leads per request. Every
claim starts with the oldest due head that cannot go in a batch (notes kept, a
`bulk: false` rule, a group too small), as its own PATCH: a lone event goes out at
once (nothing waits to fill a batch), and a transition that must be PATCHed is never
starved by a stream of batches. A remainder of a group smaller than `min_batch` waits
for the next claim. A claim reads the oldest due leads (`scan_size`); when their heads
leave requests without a batch, it also reads the oldest due leads past them whose
heads may go in bulk (`look_further`): a front of PATCH-only leads, PATCHed one claim
at a time, does not hold back the leads that could go in bulk behind it.

Reading an answer (`judge`). `affected_count == len(lead_ids)`: every lead delivered.
Fewer: Voxys found fewer leads than it was sent, and the bulk change was applied to the
ones it found; `Search` finds which were missing by sending halves again, each answer
telling how many of the missing leads are in the half it sent, until each missing lead
is alone, and then PATCHes it: its own answer (200, or a 404 for the 404 policy) is
unambiguous. Should Voxys count leads changed rather than found, the halves answer
fewer than the counts allow; `Search` notices and PATCHes every lead it has not
accounted for, so no lead is ever taken for delivered on an assumption.

Nothing here does I/O or reads a clock.

One concept: bulk delivery's rules, from choosing a batch to reading its answer and
finding its missing leads; bridge/batches.py carries them out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from bridge.answers import Reply
from bridge.claims import LeadPlan, plan_lead
from bridge.config import BulkConfig, LocatedRule
from bridge.store.base import BulkRules, Claim, QueuedTransition

BULK_PATH = "/api/v1/accounts/{account_id}/leads/bulk"


def bulk_path(account_id: int) -> str:
    """The bulk endpoint's path, from a validated integer only (never from raw text)."""
    if type(account_id) is not int or account_id <= 0:
        raise ValueError(f"account_id must be a positive integer, not {account_id!r}")
    return BULK_PATH.format(account_id=account_id)


def bulk_body(lead_ids: Sequence[int], status: str) -> dict[str, Any]:
    """A bulk status change of `lead_ids` (positive integers) to `status`."""
    for lead_id in lead_ids:
        if type(lead_id) is not int or lead_id <= 0:
            raise ValueError(f"lead_id must be a positive integer, not {lead_id!r}")
    return {
        "lead_ids": list(lead_ids),
        "action_type": "status_change",
        "params": {"status": status},
    }


def read_answer(reply: Reply, raw: bytes) -> BulkReply:
    """A bulk answer's `success` and `affected_count`, when its body has them."""
    try:
        doc = json.loads(raw) if raw else None
    except ValueError:
        doc = None
    if not isinstance(doc, dict):
        return BulkReply(reply)
    success = doc.get("success")
    affected = doc.get("affected_count")
    return BulkReply(
        reply,
        success if isinstance(success, bool) else None,
        affected if type(affected) is int and affected >= 0 else None,
    )


def eligible(rules: BulkRules, t: QueuedTransition) -> bool:
    """May `t` go in a batch? Not with notes to keep, not from a `bulk: false` rule or an
    account whose bulk path answered 404, and not once answered 404 itself: its next
    attempt must be its own, unambiguous PATCH."""
    if t.notes is not None and not rules.drop_notes:
        return False
    if t.rule in rules.patch_only_rules or t.account_id in rules.patch_only_accounts:
        return False
    return t.not_found_attempts == 0


@dataclass
class BulkState:
    """What this process learnt about the bulk endpoint (it is not persisted: a restart,
    perhaps against an upgraded Voxys, tries again)."""

    missing: str | None = None  # why bulk is off: the endpoint answered 405
    missing_for: dict[int, str] = field(default_factory=dict)  # account -> a 404's reason
    max_batch: int | None = None  # halved at each 413/422

    def unavailable(self, account_id: int, status: int | None, reason: str) -> bool:
        """The bulk path answered 404/405 for `account_id`; True when that is news.

        A 405 says the endpoint is absent: bulk is off. A 404 says so too, or that the
        account does not exist (Voxys, a Rails JSON API, answers 404 for an unknown account
        or path alike): bulk is off for that account only, so one unknown account
        does not turn it off for all. A Voxys without the endpoint costs one 404 per account.
        """
        if status == 404:
            if account_id in self.missing_for:
                return False
            self.missing_for[account_id] = reason
            return True
        if self.missing is not None:
            return False
        self.missing = reason
        return True

    def rules(self, config: BulkConfig, rules: Iterable[LocatedRule]) -> BulkRules | None:
        """The rules of the moment; None when bulk is off (configured, or learnt)."""
        if not config.enabled or self.missing is not None:
            return None
        largest = config.max_batch if self.max_batch is None else self.max_batch
        if largest < config.min_batch:
            return None
        return BulkRules(
            min_batch=config.min_batch,
            max_batch=min(config.max_batch, largest),
            drop_notes=config.notes == "drop",
            patch_only_rules=frozenset(r.rule.name for r in rules if not r.rule.bulk),
            patch_only_accounts=frozenset(self.missing_for),
        )

    def shrink(self, size: int) -> int:
        """A batch of `size` was refused as too large: the largest batch from now on."""
        self.max_batch = min(self.max_batch or size, max(1, size // 2))
        return self.max_batch

    def as_json(self, config: BulkConfig) -> dict[str, Any]:
        return {
            "enabled": config.enabled and self.missing is None,
            "configured": config.enabled,
            "off_because": self.missing,
            "off_for_accounts": {str(a): why for a, why in sorted(self.missing_for.items())},
            "max_batch": min(config.max_batch, self.max_batch or config.max_batch),
        }


def plan_requests(
    heads: Sequence[QueuedTransition], requests: int, rules: BulkRules
) -> list[list[QueuedTransition]]:
    """Up to `requests` requests from lead heads in due order (oldest first), at most one
    head per lead: the oldest head that cannot go in a batch first (its PATCH), then the
    batches, the one holding the oldest head first, then more PATCHes."""
    order = {t.id: i for i, t in enumerate(heads)}
    groups: dict[tuple[int, str], list[QueuedTransition]] = {}
    singles: list[QueuedTransition] = []
    for t in heads:
        if eligible(rules, t):
            groups.setdefault((t.account_id, str(t.status)), []).append(t)
        else:
            singles.append(t)
    batches: list[list[QueuedTransition]] = []
    for members in groups.values():  # in the order of their oldest heads
        if len(members) < rules.min_batch:
            singles += members
            continue
        for start in range(0, len(members), rules.max_batch):
            chunk = members[start : start + rules.max_batch]
            if len(chunk) >= rules.min_batch:  # a short remainder waits for company
                batches.append(chunk)
    singles.sort(key=lambda t: order[t.id])
    out = [[t] for t in singles[:1]]
    out += batches[: requests - len(out)]
    out += [[t] for t in singles[1 : 1 + requests - len(out)]]
    return out[:requests]


# --- answers --------------------------------------------------------------------------


class Kind(StrEnum):
    """What a bulk answer means for its batch."""

    DELIVERED = "delivered"  # every lead found and changed
    SHORT = "short"  # fewer leads affected than sent: find the missing ones
    TOO_LARGE = "too_large"  # 413/422/400: the batch was refused as such; send smaller
    NO_ENDPOINT = "no_endpoint"  # 404/405: no bulk endpoint (404: or no such account)
    PER_REPLY = "per_reply"  # as for a PATCH, for the whole batch (401/403, 429, 5xx...)


# Statuses that refuse the request as a whole, not a lead: a body too large or not
# understood. 422 and 400 may also mean a lead id Voxys will not take; halving finds
# out either way, and a batch that cannot shrink further goes out as PATCHes.
TOO_LARGE_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True, slots=True)
class BulkReply:
    """One bulk request's result: the HTTP answer and what its body said."""

    reply: Reply
    success: bool | None = None  # the body's `success`, when it was a JSON object
    affected: int | None = None  # the body's `affected_count`, when an integer >= 0


@dataclass(frozen=True, slots=True)
class Judgement:
    kind: Kind
    missing: int = 0  # SHORT: how many leads Voxys did not find
    reply: Reply | None = None  # PER_REPLY: the answer to decide on (bridge.retry.decide)


def judge(answer: BulkReply, size: int) -> Judgement:
    """What the answer to a batch of `size` leads means."""
    reply = answer.reply
    status = reply.status
    if status is None or not 200 <= status < 300:
        if status in (404, 405):
            return Judgement(Kind.NO_ENDPOINT)
        if status in TOO_LARGE_STATUSES:
            return Judgement(Kind.TOO_LARGE)
        return Judgement(Kind.PER_REPLY, reply=reply)
    if answer.success is not True or answer.affected is None:
        # A 2xx that does not say it worked: retry the batch, as after a 5xx.
        said = "success: false" if answer.success is False else "no affected_count"
        return Judgement(Kind.PER_REPLY, reply=unclear(reply, said))
    if answer.affected >= size:
        return Judgement(Kind.DELIVERED)
    return Judgement(Kind.SHORT, missing=size - answer.affected)


def unclear(reply: Reply, said: str) -> Reply:
    """A 2xx bulk answer that did not confirm the change, as a retryable failure."""
    return Reply(
        status=None, latency_s=reply.latency_s, error=f"bulk answer {reply.status} with {said}"
    )


# --- finding the missing leads ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """Send `members` in bulk again and report the answer with `Search.answered`."""

    members: tuple[QueuedTransition, ...]


@dataclass
class Search:
    """Which leads of a short batch Voxys did not find. Pure: the caller sends.

    `found` were found by the batch's own request (already changed by it); `verify`
    must each be PATCHed alone. `step()` gives the next probe, or None when done.
    """

    found: list[QueuedTransition] = field(default_factory=list)
    verify: list[QueuedTransition] = field(default_factory=list)
    # (leads, how many of them are missing), the last one next.
    _open: list[tuple[tuple[QueuedTransition, ...], int]] = field(default_factory=list)
    _probe: tuple[tuple[QueuedTransition, ...], tuple[QueuedTransition, ...], int] | None = None
    contradicted: bool = False  # Voxys counted against the found-leads reading

    @classmethod
    def start(cls, members: Sequence[QueuedTransition], missing: int) -> Search:
        search = cls()
        search._push(tuple(members), missing)
        return search

    def _push(self, members: tuple[QueuedTransition, ...], missing: int) -> None:
        if missing <= 0:
            self.found.extend(members)
        elif len(members) <= 2 or missing >= len(members):
            # Two leads: probing one and PATCHing the missing one costs what PATCHing
            # both does. All missing: each needs its own PATCH anyway.
            self.verify.extend(members)
        else:
            self._open.append((members, missing))

    def step(self) -> Probe | None:
        """The next half to send, or None when every lead is found or to verify."""
        assert self._probe is None, "answer the last probe first"
        if not self._open:
            return None
        members, missing = self._open.pop()
        half = (len(members) + 1) // 2  # at least two leads: see `answered`
        first, rest = members[:half], members[half:]
        self._probe = (first, rest, missing)
        return Probe(first)

    def answered(self, affected: int) -> None:
        """The last probe's `affected_count`."""
        assert self._probe is not None
        first, rest, missing = self._probe
        self._probe = None
        missing_first = len(first) - affected
        if affected <= 0 or missing_first < 0 or missing_first > missing:
            # More found than sent, or more missing than the batch had: Voxys does not
            # count as we read it. None found is no proof either: a Voxys counting leads
            # changed answers 0 to leads its first request changed already. From here on
            # nothing is taken for delivered by inference.
            self.contradicted = affected != 0 or missing_first > missing
            self.verify.extend([*first, *rest, *self.give_up()])
            return
        self._push(rest, missing - missing_first)
        self._push(first, missing_first)

    def failed(self) -> list[QueuedTransition]:
        """The last probe got no usable answer: every lead not yet accounted for, to be
        settled as that answer says (they are sent again later)."""
        assert self._probe is not None
        first, rest, _ = self._probe
        self._probe = None
        return [*first, *rest, *self.give_up()]

    def give_up(self) -> list[QueuedTransition]:
        """Stop searching; the leads still open."""
        left = [t for members, _ in self._open for t in members]
        self._open.clear()
        return left


# --- claiming ---------------------------------------------------------------------------

LeadKey = tuple[int, int]
SCAN_PER_LEAD: Final = 2  # due leads read per lead the requests asked for can carry
MAX_SCAN: Final = 5000  # ... and never more than this many in one claim


def scan_size(requests: int, rules: BulkRules) -> int:
    """How many of the oldest due leads one claim of `requests` requests looks at: enough
    to fill each request's batch when half the leads cannot go in it."""
    return max(requests, min(MAX_SCAN, requests * rules.max_batch * SCAN_PER_LEAD))


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    """What one claim does: the requests to send, and the lead plans to apply now (the
    leads sent, and those with only stale or superseded transitions to settle)."""

    requests: list[list[QueuedTransition]]
    plans: list[LeadPlan]

    def leads(self) -> set[LeadKey]:
        """The leads whose transitions the plans change (to refresh)."""
        return {
            (t.account_id, t.lead_id)
            for plan in self.plans
            for t in (*plan.stale, *plan.superseded, *([plan.claim] if plan.claim else []))
        }

    def sort_into(self, claim: Claim) -> None:
        """The requests into `claim`: batches, and single PATCHes in `claimed`."""
        for request in self.requests:
            if len(request) > 1:
                claim.batches.append(request)
            else:
                claim.claimed.append(request[0])


def plan_claim(
    leads: Sequence[tuple[LeadKey, float | None]],
    pending: Mapping[LeadKey, Sequence[QueuedTransition]],
    now: float,
    *,
    coalesce: bool,
    requests: int,
    rules: BulkRules,
) -> ClaimPlan:
    """Plan each due lead (`bridge.claims.plan_lead`: `leads` in due order with their last
    delivered occurred_at, `pending` their pending transitions in (occurred_at, id)
    order), then choose up to `requests` requests among their heads."""
    heads: list[QueuedTransition] = []
    planned: dict[LeadKey, LeadPlan] = {}
    apply: list[LeadPlan] = []
    for key, last_delivered in leads:
        plan = plan_lead(pending.get(key, ()), last_delivered, now, coalesce=coalesce)
        if plan.claim is None:
            if plan.stale or plan.superseded:
                apply.append(plan)
            continue
        planned[key] = plan
        heads.append(plan.claim)
    chosen = plan_requests(heads, requests, rules)
    apply += [planned[(t.account_id, t.lead_id)] for request in chosen for t in request]
    return ClaimPlan(chosen, apply)


def look_further(plan: ClaimPlan, requests: int, scanned: int, rules: BulkRules) -> int:
    """How many more due leads whose heads may go in bulk a claim looks for, past the
    `scanned` oldest it planned: none when those were every due lead or their batches
    fill every request but the first PATCH; else enough to fill the rest (`scan_size`).

    Without this, once the oldest due leads are all PATCH-only (notes kept), a claim
    finds no batch among them and the leads that could go in bulk behind them wait,
    PATCHed one claim at a time. The claim then plans over both sets (`plan_claim`,
    the scanned leads first): its first request is still the oldest due PATCH.
    """
    if scanned < scan_size(requests, rules):
        return 0  # the scan read every due lead: there is nothing further
    unfilled = requests - 1 - sum(1 for request in plan.requests if len(request) > 1)
    if unfilled <= 0:
        return 0
    return min(MAX_SCAN, unfilled * rules.max_batch * SCAN_PER_LEAD)
