"""The pacer: never more than the limit in any window, yet keeping up with it.

`Pace` is the arithmetic, driven here with plain numbers for the time: every test but
the last reads as a timeline. The last one runs the client's `Pacer`, which only sleeps
for what `Pace` computes, on the real clock, and checks the one promise.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from bridge.config import RateLimit
from bridge.fakevoxys import max_in_window
from bridge.pacing import ARRIVAL_JITTER_S, PACE_MARGIN, Pace, SendLog
from bridge.retry import Pacing
from bridge.voxys import Pacer


def send(pace: Pace, now: float, slot: float | None = None) -> float:
    """One request as the client sends it: its slot of the pace, then the window; when it
    left."""
    now = max(now, pace.not_before)
    now = max(now, pace.reserve(now) if slot is None else slot)
    now += pace.wait(now)
    pace.sent(now)
    return now


def test_a_backlog_never_exceeds_the_limit_in_any_window_yet_keeps_up_with_it() -> None:
    rate = RateLimit(requests=20, per_seconds=0.5)  # 40/s
    pace = Pace(rate, now=0.0)
    start = pace.not_before
    slots = [pace.reserve(start) for _ in range(60)]  # a backlog of 60, all waiting
    sent: list[float] = []
    for slot in slots:
        sent.append(send(pace, sent[-1] if sent else start, slot))
    assert max_in_window(sent, rate.per_seconds) <= 20
    achieved = (len(sent) - 1) / (sent[-1] - sent[0])
    # The rate given up is the margins' and no more: 0.2% of pace, 15 ms of each window.
    assert achieved >= rate.requests / (rate.per_seconds * PACE_MARGIN + ARRIVAL_JITTER_S)


def test_nothing_is_sent_during_the_first_window() -> None:
    pace = Pace(RateLimit(requests=10, per_seconds=1), now=100.0)
    assert pace.wait(100.0) == pytest.approx(PACE_MARGIN)
    assert send(pace, 100.0) == pytest.approx(100.0 + PACE_MARGIN)


def test_sends_are_spread_out_at_the_pace_two_at_most_at_once() -> None:
    pace = Pace(RateLimit(requests=10, per_seconds=1), now=0.0)
    start = pace.not_before
    slots = [pace.reserve(start) for _ in range(4)]
    assert slots == pytest.approx([start, start, start + pace.interval, start + 2 * pace.interval])


def test_after_an_idle_spell_the_pacer_does_not_let_a_burst_through() -> None:
    rate = RateLimit(requests=10, per_seconds=0.3)
    pace = Pace(rate, now=0.0)
    sent: list[float] = []
    now = 0.0
    for _ in range(10):
        now = send(pace, now)
        sent.append(now)
    now += 0.35  # idle: a full-size token bucket would refill here
    for _ in range(10):
        now = send(pace, now)
        sent.append(now)
    assert max_in_window(sent, rate.per_seconds) <= 10


def test_a_request_whose_connection_came_late_still_fits_the_window() -> None:
    # Paced first, then held up opening a connection, while later ones went out on pooled
    # connections: the window is counted when each one actually leaves.
    rate = RateLimit(requests=5, per_seconds=0.3)
    pace = Pace(rate, now=0.0)
    start = pace.not_before
    late_slot = pace.reserve(start)
    sent = [send(pace, start) for _ in range(9)]
    late = late_slot + 0.35  # its connection took longer than a window
    late += pace.window_wait(late)
    pace.sent(late)
    sent.append(late)
    assert max_in_window(sent, rate.per_seconds) <= 5


def test_a_retry_after_holds_every_send_until_then() -> None:
    pace = Pace(None, now=0.0)  # even unlimited
    pace.pause_until(30.0)
    assert pace.wait(10.0) == 20.0
    assert send(pace, 10.0) == 30.0


def test_a_429_halves_the_pace_and_successes_win_it_back() -> None:
    pace = Pace(RateLimit(requests=10, per_seconds=1), now=0.0)
    assert pace.interval == pytest.approx(0.1 * PACE_MARGIN)
    assert pace.throttled(0.0)
    assert pace.interval == pytest.approx(0.2 * PACE_MARGIN)
    assert not pace.succeeded(0.5)  # within a window of the decrease: no change yet
    assert pace.interval == pytest.approx(0.2 * PACE_MARGIN)
    assert pace.succeeded(1.5)
    assert pace.fraction == pytest.approx(0.6)


def test_a_new_pace_keeps_its_spacing_from_the_last_send() -> None:
    pace = Pace(RateLimit(requests=10, per_seconds=1), now=0.0)
    last = send(pace, 0.0)
    pace.throttled(last)
    assert pace.wait(last) == pytest.approx(pace.interval)  # 0.2 s, not at once


def test_the_pacer_carries_out_the_reaction_retry_decided_on_its_own_clock() -> None:
    now = [500.0]
    pacer = Pacer(RateLimit(requests=10, per_seconds=1), clock=lambda: now[0])
    pacer.react(Pacing(slow_down=True, pause_s=120.0))
    assert pacer.fraction == 0.5
    assert pacer.pace.not_before == 620.0
    now[0] += 1.0
    pacer.react(Pacing(recover=True))
    assert pacer.fraction == pytest.approx(0.6)


# --- the send log: the window's bookkeeping -----------------------------------------------


def test_the_send_log_lets_a_request_through_only_once_the_oldest_in_the_window_left() -> None:
    log = SendLog(requests=3, window=1.0)
    for t in (0.0, 0.2, 0.4):
        assert log.wait(t) == 0.0
        log.sent(t)
    assert log.wait(0.5) == pytest.approx(0.5)  # until 0.0 + 1.0
    assert log.wait(1.0) == 0.0


def test_a_request_written_late_counts_from_when_it_was_written() -> None:
    # Given a request stamped at commit, whose headers the loaded loop wrote 0.3 s later,
    log = SendLog(requests=2, window=1.0)
    first = log.sent(0.0)
    log.sent(0.1)
    SendLog.written(first, 0.3)
    # then the window is full until the earlier of the two real departures leaves,
    assert log.wait(1.05) == pytest.approx(0.05)  # 0.1 + 1.0 - 1.05
    log.sent(1.1)
    # and the late one holds the next request back by its written time, not its stamp.
    assert log.wait(1.2) == pytest.approx(0.1)  # 0.3 + 1.0 - 1.2


def test_a_stamp_never_moves_back() -> None:
    log = SendLog(requests=1, window=1.0)
    stamp = log.sent(5.0)
    SendLog.written(stamp, 4.0)
    assert log.last() == 5.0


# --- the client's pacer on the real clock -------------------------------------------------


async def test_concurrent_senders_through_the_pacer_never_exceed_the_limit_in_any_window() -> None:
    pacer = Pacer(RateLimit(requests=20, per_seconds=0.5))
    sent: list[float] = []

    async def sender(n: int) -> None:
        for _ in range(n):
            await pacer.acquire()
            await pacer.commit()
            sent.append(time.monotonic())

    await asyncio.gather(*(sender(10) for _ in range(6)))  # a backlog of 60, 6 senders
    assert len(sent) == 60
    assert max_in_window(sent, 0.5) <= 20
