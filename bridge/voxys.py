"""The Voxys Connect client: one pooled session and a paced rate limit.

What an answer means (its verdict, Retry-After) is bridge/answers.py, which needs no aiohttp.

Rate limit. Voxys must never see more than `requests` calls in *any* window of
`per_seconds` - we cannot know how it counts. A token bucket sized to the full rate
would let up to twice that through right after an idle spell, so requests are paced
(`Pacer`): spread out one every `per_seconds / requests`, and never more than
`requests` in a sliding window, checked against the times of the last sends. A process
sends nothing during its first window (and a new holder of the delivery lease nothing
during its first), so that the sends of one that just died cannot share a window with
ours.

When Voxys answers 429 although we kept to that pace, it counts differently from what
was configured: the pace halves (multiplicative decrease, down to 1/64 of the
configured rate) and recovers by a tenth of the configured rate per window without a
429 (additive increase). A `Retry-After` pauses the token until then.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import structlog
from aiolimiter import AsyncLimiter

from bridge import __version__
from bridge.answers import NotSent, Reply, error_message, parse_retry_after, status_path
from bridge.config import RateLimit, VoxysConfig
from bridge.models import LeadStatus

log = structlog.get_logger("bridge.voxys")

USER_AGENT: Final = f"voxys-bridge/{__version__} (+https://github.com/voxys/voxys-bridge)"
PACE_MARGIN: Final = 1.002  # 0.2% slower than configured
BURST: Final = 2
# What Voxys counts is arrivals; a send can leave this process a few ms after its slot
# (event-loop lag, a busy core) while a later one leaves on time. The send log keeps
# this much room on top of the window, so such jitter cannot squeeze one request too
# many into a window; over a 1 s window it costs ~1.5% of the rate.
ARRIVAL_JITTER_S: Final = 0.015
MIN_RATE_FRACTION: Final = 1 / 64


Fence = Callable[[], bool]  # True while this process may still send (bridge.lease.Term.valid)


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


class Pacer:
    """At most `requests` sends in any window of `per_seconds`, adapting to 429s (AIMD).

    Two parts. An `aiolimiter.AsyncLimiter` holding two requests, refilled at the current
    rate, spreads the sends out (`acquire`); holding two rather than one keeps a waiter
    that wakes a little late from losing that time, so the mean rate stays at the limit.
    A log of the last `requests` send times is the hard guarantee (`commit`, as late as
    possible before the bytes leave): a send waits until the oldest of them has left the
    window, whatever the bucket allowed.
    """

    def __init__(self, rate: RateLimit | None, clock: Callable[[], float] = time.monotonic):
        self.configured = rate
        self.clock = clock
        self.fraction = 1.0
        self.waited_s = 0.0
        self._limiter: AsyncLimiter | None = None
        window = (rate.per_seconds * PACE_MARGIN + ARRIVAL_JITTER_S) if rate else 0.0
        self._sent = SendLog(rate.requests if rate else 1, window)
        self._not_before = 0.0  # monotonic time before which nothing is sent
        self._last_increase = 0.0
        if rate is not None:
            self._limiter = AsyncLimiter(BURST, BURST * self.interval)
            self.quiet_window()

    @property
    def interval(self) -> float:
        """Seconds between two sends at the current pace (0 when unlimited)."""
        if self.configured is None:
            return 0.0
        base = self.configured.per_seconds / self.configured.requests
        return base * PACE_MARGIN / self.fraction

    async def acquire(self) -> None:
        """Stage one, before the request: wait for the pace (and any Retry-After pause)."""
        start = self.clock()
        while (delay := self._not_before - self.clock()) > 0:  # noqa: ASYNC110 - a timer
            await asyncio.sleep(delay)
        if self._limiter is None or self.configured is None:
            return
        await self._limiter.acquire()
        # A Retry-After may have come meanwhile; and no use going on while the window is
        # full (commit would only hold the request back inside its timeout).
        while (delay := max(self._not_before - self.clock(), self._window_wait())) > 0:  # noqa: ASYNC110
            await asyncio.sleep(delay)
        self.waited_s += self.clock() - start

    async def commit(self, fence: Fence | None = None) -> list[float] | None:
        """Stage two, with a connection in hand, right before the request is written: the
        hard guarantee. Waits while the window is full, then asks `fence` (raising
        NotSent when it says no: the delivery lease ran out meanwhile), then logs the send.

        Checked here rather than in `acquire` because opening a connection can take a
        loaded event loop tens of milliseconds, while a later request on a pooled
        connection goes out at once: counted at `acquire`, the late one would land in
        the next window beside a full window's worth of others.
        """
        start = self.clock()
        while (delay := self._window_wait()) > 0:  # noqa: ASYNC110 - a timer
            await asyncio.sleep(delay)
        if fence is not None and not fence():
            raise NotSent
        if self.configured is None:
            return None
        now = self.clock()
        self.waited_s += now - start
        return self._sent.sent(now)

    def written(self, stamp: list[float] | None) -> None:
        """The request stamped by `commit` has had its headers written: re-stamp it."""
        if stamp is not None:
            self._sent.written(stamp, self.clock())

    def _window_wait(self) -> float:
        """Seconds until one more send fits in the window (0 when it fits now)."""
        if self.configured is None:
            return 0.0
        return self._sent.wait(self.clock())

    def quiet_window(self) -> None:
        """Send nothing for one full window: whoever sent before us (a process that just
        died, the previous holder of the delivery lease) may have used it up."""
        if self.configured is not None:
            self.pause_until(self.clock() + self.configured.per_seconds * PACE_MARGIN)

    def pause_until(self, when: float) -> None:
        """Send nothing before monotonic time `when` (Retry-After)."""
        self._not_before = max(self._not_before, when)

    def throttled(self) -> None:
        """Voxys answered 429 although we kept to the pace: halve it."""
        if self.configured is None:
            return
        self.fraction = max(MIN_RATE_FRACTION, self.fraction / 2)
        self._rebuild()
        log.warning("voxys.rate_limited", rate_per_s=round(1.0 / self.interval, 3))

    def succeeded(self) -> None:
        """After a window free of 429s, win back a tenth of the configured rate."""
        if self.configured is None or self.fraction >= 1.0:
            return
        now = self.clock()
        if now - self._last_increase < self.configured.per_seconds:
            return
        self._last_increase = now
        self.fraction = min(1.0, self.fraction + 0.1)
        self._rebuild()

    def _rebuild(self) -> None:
        # A fresh limiter starts empty; keep the spacing from the last send.
        self._limiter = AsyncLimiter(BURST, BURST * self.interval)
        self._last_increase = self.clock()
        last = self._sent.last()
        if last is not None:
            self.pause_until(last + self.interval)


@dataclass(slots=True)
class _Send:
    """One request's state as the client's trace hooks see it."""

    fence: Fence | None
    stamp: list[float] | None = None


class VoxysClient:
    """PATCH lead statuses; never raises for what Voxys (or the network) answers."""

    def __init__(self, config: VoxysConfig, *, rate_limited: bool = True) -> None:
        self.base_url = config.base_url.rstrip("/")
        self._token = config.api_token
        self._timeout = aiohttp.ClientTimeout(total=config.timeout)
        self._limit = config.max_in_flight
        self._session: aiohttp.ClientSession | None = None
        self.pacer = Pacer(config.rate_limit if rate_limited else None)

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self._limit, ttl_dns_cache=300)
        # The pacer's hard check runs once the request has its connection, pooled or new,
        # immediately before aiohttp writes it (see Pacer.commit).
        trace = aiohttp.TraceConfig()
        trace.on_connection_reuseconn.append(self._commit)
        trace.on_connection_create_end.append(self._commit)
        trace.on_request_headers_sent.append(self._written)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            trace_configs=[trace],
        )

    async def _commit(self, _session: object, context: Any, _params: object) -> None:
        send: _Send = context.trace_request_ctx
        send.stamp = await self.pacer.commit(send.fence)

    async def _written(self, _session: object, context: Any, _params: object) -> None:
        send: _Send = context.trace_request_ctx
        self.pacer.written(send.stamp)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def set_status(
        self,
        account_id: int,
        lead_id: int,
        status: LeadStatus,
        notes: str | None,
        *,
        fence: Fence | None = None,
    ) -> Reply:
        """One PATCH, paced. Timeouts and connection errors come back as a Reply.

        `fence` is asked immediately before the request is written (after any wait for
        the rate limit); when it says no, nothing is sent and the Reply says `sent=False`.
        """
        assert self._session is not None, "VoxysClient.start() first"
        url = self.base_url + status_path(account_id, lead_id)
        body: dict[str, str] = {"status": str(status)}
        if notes is not None:
            body["notes"] = notes
        headers = {
            "api_access_token": self._token.get_secret_value(),
            "Content-Type": "application/json",
        }
        await self.pacer.acquire()
        started = time.monotonic()
        try:
            async with self._session.patch(
                url, data=json.dumps(body), headers=headers, trace_request_ctx=_Send(fence)
            ) as resp:
                raw = await resp.read()
                latency = time.monotonic() - started
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
                ok = 200 <= resp.status < 300
                return Reply(
                    status=resp.status,
                    latency_s=latency,
                    retry_after=retry_after,
                    message=None if ok else error_message(raw) or resp.reason,
                )
        except NotSent:
            return Reply(None, 0.0, error="not sent: delivery lease expired", sent=False)
        except TimeoutError:
            return Reply(None, time.monotonic() - started, error="timeout")
        except aiohttp.ClientError as exc:
            return Reply(None, time.monotonic() - started, error=type(exc).__name__)
