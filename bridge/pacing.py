"""When the next request to Voxys may leave: the pacer's arithmetic. Pure: time comes in.

Voxys must never see more than `requests` calls in *any* window of `per_seconds` - we
cannot know how it counts. A token bucket sized to the full rate would let up to twice
that through right after an idle spell, so requests are paced: spread out one every
`per_seconds / requests` (a bucket holding two, `reserve`), and never more than
`requests` in a sliding window, checked against the times of the last sends (`SendLog`,
`wait`). Nothing is sent during the first window (`quiet_window`), so that the sends of
a process that just died, or of the previous holder of the delivery lease, cannot share
a window with ours.

When Voxys answers 429 although we kept to that pace, it counts differently from what
was configured: the pace halves (multiplicative decrease, down to 1/64 of the
configured rate) and recovers by a tenth of the configured rate per window without a
429 (additive increase). A `Retry-After` holds every send until then.

bridge/voxys.py's `Pacer` sleeps for the delays computed here; the tests drive this
object with plain numbers.
"""

from __future__ import annotations

from typing import Final

from bridge.config import RateLimit

PACE_MARGIN: Final = 1.002  # 0.2% slower than configured
# The bucket holds two sends rather than one, so that a waiter that wakes a little late
# does not lose that time: the mean rate stays at the limit.
BURST: Final = 2
# What Voxys counts is arrivals; a send can leave this process a few ms after its slot
# (event-loop lag, a busy core) while a later one leaves on time. The send log keeps
# this much room on top of the window, so such jitter cannot squeeze one request too
# many into a window; over a 1 s window it costs ~1.5% of the rate.
ARRIVAL_JITTER_S: Final = 0.015
MIN_RATE_FRACTION: Final = 1 / 64
EMPTY: Final = float("-inf")


class SendLog:
    """When recent requests left, and whether one more fits in the window. Pure: the time
    is passed in.

    A request is stamped when it is committed (right before aiohttp writes it) and again
    when its headers have actually been written: a loaded event loop can run other tasks
    in between, and what Voxys counts is when requests arrive. The window check counts
    every stamp still inside the window, by its latest time.
    """

    def __init__(self, requests: int, window: float) -> None:
        self.requests = requests
        self.window = window
        self._stamps: list[list[float]] = []  # one mutable [time] per request

    def wait(self, now: float) -> float:
        """Seconds until one more request fits in the window (0 when it fits now)."""
        self._stamps = [s for s in self._stamps if s[0] > now - self.window]
        if len(self._stamps) < self.requests:
            return 0.0
        times = sorted(s[0] for s in self._stamps)
        return max(0.0, times[len(times) - self.requests] + self.window - now)

    def sent(self, now: float) -> list[float]:
        """Record a request leaving now; the stamp to move with `written` later."""
        stamp = [now]
        self._stamps.append(stamp)
        return stamp

    @staticmethod
    def written(stamp: list[float], now: float) -> None:
        """The request's headers were written at `now`."""
        stamp[0] = max(stamp[0], now)

    def last(self) -> float | None:
        return max((s[0] for s in self._stamps), default=None)


class Pace:
    """The current pace and the sends it allows, for one configured rate (None: unlimited).

    Two stages, as the client uses them: `reserve` spaces the sends out (a bucket of
    `BURST` refilled at the current pace, as a schedule of slots); `wait` is the hard
    guarantee, asked as late as possible before the bytes leave: the window of the last
    `requests` sends, and any pause (Retry-After, the quiet first window).
    """

    def __init__(self, rate: RateLimit | None, now: float) -> None:
        self.configured = rate
        self.fraction = 1.0
        self.not_before = 0.0  # nothing is sent before this time (pause, quiet window)
        window = (rate.per_seconds * PACE_MARGIN + ARRIVAL_JITTER_S) if rate else 0.0
        self.log = SendLog(rate.requests if rate else 1, window)
        self._next_slot = EMPTY  # the bucket is empty: BURST sends may go at once
        self._last_increase = 0.0
        self.quiet_window(now)

    @property
    def interval(self) -> float:
        """Seconds between two sends at the current pace (0 when unlimited)."""
        if self.configured is None:
            return 0.0
        base = self.configured.per_seconds / self.configured.requests
        return base * PACE_MARGIN / self.fraction

    def reserve(self, now: float) -> float:
        """Take the next slot of the pace: the time this send may leave (`now` or later).

        Slots are handed out in the order asked for, each `interval` after the one before,
        with up to `BURST` of them due at once after a quiet spell.
        """
        if self.configured is None:
            return now
        at = max(now, self._next_slot - (BURST - 1) * self.interval)
        self._next_slot = max(self._next_slot, at) + self.interval
        return at

    def wait(self, now: float) -> float:
        """Seconds until one more send may leave: the window has room and no pause holds."""
        return max(self.not_before - now, self.window_wait(now), 0.0)

    def window_wait(self, now: float) -> float:
        """Seconds until one more send fits in the window (0 when it fits now)."""
        if self.configured is None:
            return 0.0
        return self.log.wait(now)

    def sent(self, now: float) -> list[float] | None:
        """A send leaves now; its stamp for `SendLog.written` (None when unlimited)."""
        if self.configured is None:
            return None
        return self.log.sent(now)

    def quiet_window(self, now: float) -> None:
        """Send nothing for one full window: whoever sent before us (a process that just
        died, the previous holder of the delivery lease) may have used it up."""
        if self.configured is not None:
            self.pause_until(now + self.configured.per_seconds * PACE_MARGIN)

    def pause_until(self, when: float) -> None:
        """Send nothing before `when` (Retry-After)."""
        self.not_before = max(self.not_before, when)

    def throttled(self, now: float) -> bool:
        """Voxys answered 429 although we kept to the pace: halve it. True if it changed."""
        if self.configured is None:
            return False
        self.fraction = max(MIN_RATE_FRACTION, self.fraction / 2)
        self._restart(now)
        return True

    def succeeded(self, now: float) -> bool:
        """After a window free of 429s, win back a tenth of the configured rate. True if
        it changed."""
        if self.configured is None or self.fraction >= 1.0:
            return False
        if now - self._last_increase < self.configured.per_seconds:
            return False
        self.fraction = min(1.0, self.fraction + 0.1)
        self._restart(now)
        return True

    def _restart(self, now: float) -> None:
        # A new pace starts from an empty bucket, spaced from the last send.
        self._next_slot = EMPTY
        self._last_increase = now
        last = self.log.last()
        if last is not None:
            self.pause_until(last + self.interval)
