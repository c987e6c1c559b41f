"""The Voxys Connect client: one pooled session and a paced rate limit.

What an answer means (its verdict, Retry-After) is bridge/answers.py; when the next
request may leave is bridge/pacing.py. Both are pure; this module sleeps and sends.
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

from bridge import __version__
from bridge.answers import NotSent, Reply, error_message, parse_retry_after, status_path
from bridge.config import RateLimit, VoxysConfig
from bridge.models import LeadStatus
from bridge.pacing import Pace, SendLog
from bridge.retry import Pacing

log = structlog.get_logger("bridge.voxys")

USER_AGENT: Final = f"voxys-bridge/{__version__} (+https://github.com/voxys/voxys-bridge)"


Fence = Callable[[], bool]  # True while this process may still send (bridge.lease.Term.valid)


class Pacer:
    """At most `requests` sends in any window of `per_seconds`, adapting to 429s (AIMD).

    The arithmetic is `bridge.pacing.Pace`; this sleeps for the delays it computes, in
    two stages: `acquire` before the request (the pace, any Retry-After pause) and
    `commit` with a connection in hand, right before the bytes leave (the window).
    """

    def __init__(self, rate: RateLimit | None, clock: Callable[[], float] = time.monotonic):
        self.configured = rate
        self.clock = clock
        self.waited_s = 0.0
        self.pace = Pace(rate, clock())

    @property
    def fraction(self) -> float:
        """The share of the configured rate used now (1.0 until a 429)."""
        return self.pace.fraction

    @property
    def interval(self) -> float:
        """Seconds between two sends at the current pace (0 when unlimited)."""
        return self.pace.interval

    async def acquire(self) -> None:
        """Stage one, before the request: wait for the pace (and any Retry-After pause)."""
        start = self.clock()
        while (delay := self.pace.not_before - self.clock()) > 0:  # noqa: ASYNC110 - a timer
            await asyncio.sleep(delay)
        if self.configured is None:
            return
        slot = self.pace.reserve(self.clock())
        # A Retry-After may come meanwhile; and no use going on while the window is full
        # (commit would only hold the request back inside its timeout).
        while (delay := max(slot - self.clock(), self.pace.wait(self.clock()))) > 0:  # noqa: ASYNC110
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
        while (delay := self.pace.window_wait(self.clock())) > 0:  # noqa: ASYNC110 - a timer
            await asyncio.sleep(delay)
        if fence is not None and not fence():
            raise NotSent
        if self.configured is None:
            return None
        now = self.clock()
        self.waited_s += now - start
        return self.pace.sent(now)

    def written(self, stamp: list[float] | None) -> None:
        """The request stamped by `commit` has had its headers written: re-stamp it."""
        if stamp is not None:
            SendLog.written(stamp, self.clock())

    def quiet_window(self) -> None:
        """Send nothing for one full window (see `Pace.quiet_window`)."""
        self.pace.quiet_window(self.clock())

    def pause_until(self, when: float) -> None:
        """Send nothing before time `when` of this pacer's clock (Retry-After)."""
        self.pace.pause_until(when)

    def throttled(self) -> None:
        """Voxys answered 429 although we kept to the pace: halve it."""
        if self.pace.throttled(self.clock()):
            log.warning("voxys.rate_limited", rate_per_s=round(1.0 / self.interval, 3))

    def succeeded(self) -> None:
        """After a window free of 429s, win back a tenth of the configured rate."""
        self.pace.succeeded(self.clock())

    def react(self, pacing: Pacing) -> None:
        """Carry out what `bridge.retry.decide` said an answer means for the pace."""
        if pacing.slow_down:
            self.throttled()
        if pacing.pause_s is not None:
            self.pause_until(self.clock() + pacing.pause_s)
        if pacing.recover:
            self.succeeded()


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
        body: dict[str, str] = {"status": str(status)}
        if notes is not None:
            body["notes"] = notes
        reply, _ = await self.request("PATCH", status_path(account_id, lead_id), body, fence)
        return reply

    async def request(
        self, method: str, path: str, body: dict[str, Any], fence: Fence | None
    ) -> tuple[Reply, bytes]:
        """One paced request with a JSON body: the Reply and the answer's raw body."""
        assert self._session is not None, "VoxysClient.start() first"
        headers = {
            "api_access_token": self._token.get_secret_value(),
            "Content-Type": "application/json",
        }
        await self.pacer.acquire()
        started = time.monotonic()
        try:
            async with self._session.request(
                method,
                self.base_url + path,
                data=json.dumps(body),
                headers=headers,
                trace_request_ctx=_Send(fence),
            ) as resp:
                raw = await resp.read()
                latency = time.monotonic() - started
                retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
                ok = 200 <= resp.status < 300
                reply = Reply(
                    status=resp.status,
                    latency_s=latency,
                    retry_after=retry_after,
                    message=None if ok else error_message(raw) or resp.reason,
                )
                return reply, raw
        except NotSent:
            return Reply(None, 0.0, error="not sent: delivery lease expired", sent=False), b""
        except TimeoutError:
            return Reply(None, time.monotonic() - started, error="timeout"), b""
        except aiohttp.ClientError as exc:
            return Reply(None, time.monotonic() - started, error=type(exc).__name__), b""
