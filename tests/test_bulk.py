"""The pure bulk rules: which requests go out, what a bulk answer means, and how the
missing leads of a short batch are found. No I/O: plain function tests."""

from __future__ import annotations

import pytest

from bridge.answers import Reply
from bridge.bulk import (
    BulkReply,
    BulkState,
    Kind,
    Search,
    judge,
    look_further,
    plan_claim,
    plan_requests,
    scan_size,
)
from bridge.config import BulkConfig, LocatedRule, RuleConfig
from bridge.models import LeadStatus
from bridge.store.base import BulkRules, QueuedTransition

RULES = BulkRules(min_batch=3, max_batch=4)


def head(
    lead: int,
    status: str = "won",
    *,
    account: int = 1,
    notes: str | None = None,
    rule: str = "r",
    not_found: int = 0,
) -> QueuedTransition:
    return QueuedTransition(
        id=lead,
        source="s",
        event_id=f"e{lead}",
        rule=rule,
        account_id=account,
        lead_id=lead,
        status=LeadStatus(status),
        notes=notes,
        occurred_at=float(lead),
        created_at=float(lead),
        attempts=0,
        not_found_attempts=not_found,
    )


def leads(requests: list[list[QueuedTransition]]) -> list[list[int]]:
    return [[t.lead_id for t in r] for r in requests]


# --- which requests ---------------------------------------------------------------------


def test_a_lone_head_is_patched_at_once() -> None:
    assert leads(plan_requests([head(1)], 10, RULES)) == [[1]]


def test_a_backlog_goes_out_in_batches_of_at_most_max_batch() -> None:
    heads = [head(n) for n in range(1, 12)]
    # 9, 10 and 11 make a batch too; 1..4 and 5..8 are full ones.
    assert leads(plan_requests(heads, 10, RULES)) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]


def test_a_remainder_below_min_batch_waits_for_the_next_claim() -> None:
    heads = [head(n) for n in range(1, 11)]
    assert leads(plan_requests(heads, 10, RULES)) == [[1, 2, 3, 4], [5, 6, 7, 8]]


def test_fewer_than_min_batch_sharing_account_and_status_are_patched() -> None:
    heads = [head(1), head(2, "lost"), head(3), head(4, account=2)]
    assert leads(plan_requests(heads, 10, RULES)) == [[1], [2], [3], [4]]


def test_batches_go_oldest_group_first() -> None:
    heads = [head(1, "lost"), head(2), head(3), head(4, "lost"), head(5), head(6, "lost")]
    assert leads(plan_requests(heads, 10, RULES)) == [[1, 4, 6], [2, 3, 5]]


def test_each_claim_starts_with_the_oldest_patch_so_batches_never_starve_it() -> None:
    heads = [head(1, notes="a"), head(2, notes="b"), *(head(n) for n in range(3, 20))]
    assert leads(plan_requests(heads, 3, RULES)) == [[1], [3, 4, 5, 6], [7, 8, 9, 10]]
    assert leads(plan_requests(heads, 10, RULES))[-1] == [2]


# --- looking past the oldest due leads -----------------------------------------------------


def claim_plan(heads: list[QueuedTransition], requests: int = 3):  # type: ignore[no-untyped-def]
    """A claim's plan over `heads` in due order, each the one pending transition of its lead."""
    keys = [((t.account_id, t.lead_id), None) for t in heads]
    pending = {(t.account_id, t.lead_id): [t] for t in heads}
    return plan_claim(keys, pending, 0.0, coalesce=True, requests=requests, rules=RULES)


def test_a_scan_of_only_patches_looks_further_for_enough_leads_to_fill_the_requests() -> None:
    scan = scan_size(3, RULES)  # 24
    patches = [head(n, notes="paid") for n in range(1, scan + 1)]

    more = look_further(claim_plan(patches), 3, scan, RULES)

    # Two requests left for batches, each found among twice max_batch leads.
    assert more == 2 * RULES.max_batch * 2


def test_no_looking_further_when_the_scan_read_every_due_lead_or_filled_the_requests() -> None:
    scan = scan_size(3, RULES)
    few = [head(n, notes="paid") for n in range(1, 6)]
    assert look_further(claim_plan(few), 3, len(few), RULES) == 0  # nothing lies further
    full = [head(1, notes="paid"), *(head(n) for n in range(2, scan + 1))]
    assert leads(claim_plan(full).requests) == [[1], [2, 3, 4, 5], [6, 7, 8, 9]]
    assert look_further(claim_plan(full), 3, scan, RULES) == 0
    one_batch = [
        *(head(n, notes="paid") for n in range(1, scan - 3)),
        *(head(n) for n in range(scan - 3, scan + 1)),
    ]
    assert look_further(claim_plan(one_batch), 3, scan, RULES) == RULES.max_batch * 2


def test_the_leads_found_further_fill_batches_after_the_oldest_patch() -> None:
    scan = scan_size(3, RULES)
    scanned = [head(n, notes="paid") for n in range(1, scan + 1)]
    further = [head(n) for n in range(scan + 1, scan + 9)]

    plan = claim_plan([*scanned, *further])

    assert leads(plan.requests) == [[1], [25, 26, 27, 28], [29, 30, 31, 32]]
    assert sorted(p.claim.lead_id for p in plan.plans if p.claim) == [1, *range(25, 33)]


def test_no_more_requests_than_asked() -> None:
    heads = [head(n) for n in range(1, 11)]
    assert leads(plan_requests(heads, 1, RULES)) == [[1, 2, 3, 4]]
    assert leads(plan_requests([head(1, notes="x"), *heads[1:]], 1, RULES)) == [[1]]


def test_notes_keep_them_out_of_a_batch_unless_dropped() -> None:
    heads = [head(1, notes="paid"), head(2), head(3), head(4, notes="x")]
    assert leads(plan_requests(heads, 10, RULES)) == [[1], [2], [3], [4]]
    dropping = BulkRules(min_batch=3, max_batch=4, drop_notes=True)
    assert leads(plan_requests(heads, 10, dropping)) == [[1, 2, 3, 4]]


def test_a_rule_with_bulk_false_and_a_lead_once_not_found_are_always_patched() -> None:
    rules = BulkRules(min_batch=2, max_batch=4, patch_only_rules=frozenset({"p"}))
    heads = [head(1, rule="p"), head(2, rule="p"), head(3, not_found=1), head(4, not_found=1)]
    assert leads(plan_requests(heads, 10, rules)) == [[1], [2], [3], [4]]


# --- the process's view of the endpoint -------------------------------------------------


def rule(name: str, bulk: bool) -> LocatedRule:
    config = RuleConfig(name=name, source="s", lead_id=1, status="won", bulk=bulk)
    return LocatedRule(rule=config, file="bridge.yaml")


def test_bulk_is_off_unless_enabled_and_rules_say_which_are_patch_only() -> None:
    state = BulkState()
    assert state.rules(BulkConfig(), []) is None
    on = state.rules(BulkConfig(enabled=True), [rule("a", True), rule("b", False)])
    assert on == BulkRules(10, 100, False, frozenset({"b"}))


def test_each_refusal_as_too_large_halves_the_batch_until_it_is_below_min_batch() -> None:
    state, config = BulkState(), BulkConfig(enabled=True, min_batch=10, max_batch=100)
    assert state.shrink(100) == 50
    assert state.rules(config, []) == BulkRules(10, 50)
    assert state.shrink(50) == 25
    assert state.shrink(25) == 12
    assert state.shrink(12) == 6
    assert state.rules(config, []) is None  # no batch can form: PATCH only


def test_a_missing_endpoint_turns_bulk_off_for_the_process() -> None:
    state = BulkState(missing="HTTP 405")
    assert state.rules(BulkConfig(enabled=True), []) is None
    assert state.as_json(BulkConfig(enabled=True))["enabled"] is False


def test_a_405_turns_bulk_off_for_the_process_and_says_so_once() -> None:
    state = BulkState()
    assert state.unavailable(7, 405, "HTTP 405") is True
    assert state.unavailable(8, 405, "HTTP 405") is False
    assert state.rules(BulkConfig(enabled=True), []) is None


def test_a_404_turns_bulk_off_for_its_account_only_since_the_account_may_not_exist() -> None:
    # Voxys answers 404 for an unknown account as for an unknown path (VOXYS_API.md).
    state, config = BulkState(), BulkConfig(enabled=True, min_batch=2, max_batch=4)
    assert state.unavailable(8, 404, "HTTP 404") is True
    assert state.unavailable(8, 404, "HTTP 404") is False  # logged once per account
    rules = state.rules(config, [])
    assert rules == BulkRules(2, 4, patch_only_accounts=frozenset({8}))
    heads = [head(1, account=8), head(2, account=8), head(3, account=7), head(4, account=7)]
    assert leads(plan_requests(heads, 10, rules)) == [[1], [3, 4], [2]]
    assert state.as_json(config)["off_for_accounts"] == {"8": "HTTP 404"}


# --- what an answer means ---------------------------------------------------------------


def answer(status: int | None, success: bool | None = True, affected: int | None = 4) -> BulkReply:
    return BulkReply(Reply(status, 0.02), success, affected)


def test_every_lead_affected_is_delivered() -> None:
    assert judge(answer(200), 4).kind is Kind.DELIVERED


def test_fewer_affected_than_sent_is_short_by_the_difference() -> None:
    judged = judge(answer(200, affected=1), 4)
    assert (judged.kind, judged.missing) == (Kind.SHORT, 3)


@pytest.mark.parametrize("status", [404, 405])
def test_no_bulk_endpoint(status: int) -> None:
    assert judge(answer(status), 4).kind is Kind.NO_ENDPOINT


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_batch_refused_as_such_is_too_large(status: int) -> None:
    assert judge(answer(status), 4).kind is Kind.TOO_LARGE


@pytest.mark.parametrize("status", [401, 403, 429, 500, 503, None])
def test_other_answers_are_decided_as_for_a_patch(status: int | None) -> None:
    judged = judge(answer(status), 4)
    assert judged.kind is Kind.PER_REPLY and judged.reply is not None
    assert judged.reply.status == status


@pytest.mark.parametrize(("success", "affected"), [(False, 4), (True, None), (None, None)])
def test_a_2xx_that_does_not_confirm_is_a_retryable_failure(
    success: bool | None, affected: int | None
) -> None:
    judged = judge(answer(200, success, affected), 4)
    assert judged.kind is Kind.PER_REPLY and judged.reply is not None
    assert judged.reply.status is None and "bulk answer 200" in (judged.reply.error or "")


# --- finding the missing ones -------------------------------------------------------------


def run(search: Search, missing: set[int]) -> list[list[int]]:
    """Answer each probe as a Voxys counting leads found would; the probes sent."""
    sent = []
    while (probe := search.step()) is not None:
        ids = [t.lead_id for t in probe.members]
        sent.append(ids)
        search.answered(sum(1 for i in ids if i not in missing))
    return sent


@pytest.mark.parametrize(
    "missing", [{1}, {100}, {37}, {3, 4}, {1, 99}, {10, 20, 30, 40, 50}, set(range(1, 101, 2))]
)
def test_each_missing_lead_is_isolated_and_every_other_is_found(missing: set[int]) -> None:
    batch = [head(n) for n in range(1, 101)]
    search = Search.start(batch, len(missing))
    probes = run(search, missing)
    verified = {t.lead_id for t in search.verify}
    found = {t.lead_id for t in search.found}
    assert missing <= verified
    assert found | verified == set(range(1, 101)) and not found & verified
    assert all(len(p) >= 2 for p in probes)
    if len(missing) == 1:  # ~log2(n) probes and one PATCH for a lone missing lead
        assert len(probes) <= 7 and len(verified) <= 2


def test_all_missing_are_patched_without_probes() -> None:
    search = Search.start([head(n) for n in range(1, 5)], 4)
    assert search.step() is None
    assert [t.lead_id for t in search.verify] == [1, 2, 3, 4]


def test_a_voxys_counting_changes_rather_than_leads_is_never_trusted() -> None:
    # Counting leads changed: the probes re-send leads the batch changed already, so they
    # count 0; nothing can then be inferred, and every lead not accounted for is PATCHed.
    batch = [head(n) for n in range(1, 11)]
    search = Search.start(batch, 3)
    probe = search.step()
    assert probe is not None
    search.answered(0)
    assert search.step() is None
    assert sorted(t.lead_id for t in search.verify) == list(range(1, 11))
    assert not search.found


def test_a_count_that_cannot_be_is_a_contradiction() -> None:
    search = Search.start([head(n) for n in range(1, 11)], 1)
    probe = search.step()
    assert probe is not None
    search.answered(len(probe.members) - 3)  # 3 missing in a batch with 1 missing
    assert search.contradicted and len(search.verify) == 10


def test_a_failed_probe_hands_back_every_lead_not_accounted_for() -> None:
    search = Search.start([head(n) for n in range(1, 11)], 1)
    assert search.step() is not None
    left = search.failed()
    assert sorted(t.lead_id for t in left) == list(range(1, 11))
    assert search.step() is None
