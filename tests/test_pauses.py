"""Auth pauses as a specification: which account waits, when it is probed, when the whole
token is paused. Pure: times are passed in."""

from __future__ import annotations

from bridge.pauses import AuthPauses


def test_a_refusal_pauses_its_account_and_leaves_the_others_flowing() -> None:
    pauses = AuthPauses(probe_initial=30, probe_max=300, window=30)
    pauses.answered(7, now=0)

    refusal = pauses.refuse(8, now=1, http_status=403)

    assert (refusal.started, refusal.token_wide) == (True, False)
    assert pauses.skipped() == {8}
    assert pauses.probes_due(30) == []
    assert pauses.probes_due(31) == [8]


def test_with_one_account_in_use_its_refusal_pauses_the_whole_token() -> None:
    pauses = AuthPauses(window=30)

    refusal = pauses.refuse(7, now=0, http_status=401)

    assert (refusal.started, refusal.token_wide, refusal.token_wide_started) == (True, True, True)


def test_the_token_is_paused_once_every_account_in_use_is_refused() -> None:
    pauses = AuthPauses(window=30)
    pauses.answered(7, now=0)
    pauses.answered(8, now=0)
    pauses.answered(9, now=-100)  # not in use within the window: does not count

    assert not pauses.refuse(7, now=1, http_status=401).token_wide
    last = pauses.refuse(8, now=2, http_status=401)

    assert (last.token_wide, last.token_wide_started) == (True, True)


def test_a_probe_refused_again_doubles_the_interval_up_to_the_maximum() -> None:
    pauses = AuthPauses(probe_initial=30, probe_max=100)
    pauses.refuse(8, now=0, http_status=401)
    intervals = []
    now = 0.0
    for _ in range(4):
        [account] = pauses.probes_due(now := pauses.paused[8].next_probe_at)
        pauses.probe_started(account)
        assert pauses.probes_due(now) == []  # one probe at a time
        again = pauses.refuse(account, now=now, http_status=401)
        assert not again.started  # logged once per pause, not per probe
        intervals.append(pauses.paused[8].interval)
    assert intervals == [60, 100, 100, 100]


def test_refusals_of_requests_already_in_flight_do_not_stretch_the_pause() -> None:
    pauses = AuthPauses(probe_initial=30)
    pauses.refuse(8, now=0, http_status=401)
    pauses.refuse(8, now=0.1, http_status=401)
    pauses.refuse(8, now=0.2, http_status=401)
    assert (pauses.paused[8].interval, pauses.paused[8].next_probe_at) == (30, 30)


def test_an_accepted_request_lifts_only_its_own_account_when_others_work() -> None:
    pauses = AuthPauses(window=30)
    pauses.answered(9, now=0)  # 9 is in use and not refused: the token works
    pauses.refuse(7, now=1, http_status=403)
    pauses.refuse(8, now=1, http_status=403)
    assert not pauses.token_wide

    recovery = pauses.accepted(8)

    assert (recovery.account, recovery.token_wide) == (True, False)
    assert pauses.skipped() == {7}  # 7 keeps its own pause until its own probe passes


def test_an_accepted_request_during_a_token_wide_pause_lifts_every_pause() -> None:
    pauses = AuthPauses(window=30)
    pauses.answered(7, now=0)
    pauses.refuse(7, now=1, http_status=401)
    pauses.refuse(8, now=1, http_status=401)
    assert pauses.token_wide

    recovery = pauses.accepted(8)

    assert (recovery.account, recovery.token_wide) == (True, True)
    assert not pauses.token_wide
    assert pauses.skipped() == frozenset()  # the token works again


def test_a_probe_without_a_verdict_is_tried_again_an_interval_later() -> None:
    pauses = AuthPauses(probe_initial=30)
    pauses.refuse(8, now=0, http_status=401)
    pauses.probe_started(8)

    pauses.inconclusive(8, now=31)  # a 503 or a timeout says nothing about the token

    assert pauses.paused[8].interval == 30
    assert pauses.probes_due(60) == []
    assert pauses.probes_due(61) == [8]


def test_an_account_with_nothing_left_to_probe_is_no_longer_paused() -> None:
    pauses = AuthPauses(window=30)
    pauses.refuse(8, now=0, http_status=401)
    assert pauses.token_wide

    pauses.nothing_to_probe(8)

    assert pauses.skipped() == frozenset()
    assert not pauses.token_wide
    assert pauses.next_probe_at() is None


def test_an_account_never_refused_that_is_accepted_ends_a_token_wide_pause_but_not_others() -> None:
    pauses = AuthPauses(window=30)
    pauses.refuse(8, now=0, http_status=403)  # the only account in use: token-wide
    assert pauses.token_wide

    recovery = pauses.accepted(7)

    assert (recovery.account, recovery.token_wide) == (False, True)
    assert not pauses.token_wide
    assert pauses.skipped() == {8}  # 8 earned its own pause
