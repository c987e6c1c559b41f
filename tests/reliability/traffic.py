"""Webhook traffic for the handover suite: per lead an older `won` and a newer `lost`,
posted at a sender's pace and retried elsewhere until some replica answers 2xx."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import aiohttp

from tests.reliability.fleet import Replica, Sandbox

OLDER, NEWER = "won", "lost"  # each lead's two events, in occurred_at order


def status_event(lead: int, status: str, created: int, prefix: str = "evt") -> tuple[str, bytes]:
    """A signed-to-be Stripe event moving `lead` to `status`; its id and body."""
    event_id = f"{prefix}_{lead}_{status}"
    body = {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "created": created,
        "data": {"object": {"metadata": {"voxys_lead_id": str(lead), "status": status}}},
    }
    return event_id, json.dumps(body).encode()


def stripe_signed(body: bytes, secret: str) -> dict[str, str]:
    """Stripe's scheme: HMAC-SHA256 of `t.body`."""
    t = int(time.time())
    mac = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={t},v1={mac}", "Content-Type": "application/json"}


def lead_events(leads: Iterable[int], prefix: str = "evt") -> list[tuple[str, bytes]]:
    """Per lead an older `won` then a newer `lost` (by occurred_at), interleaved: all the
    `won` events of a group of leads, then their `lost` events, so both are often queued
    at once and the older one is often in flight when the newer arrives."""
    base = int(time.time()) - 3600
    leads = list(leads)
    out = []
    for start in range(0, len(leads), 8):
        group = leads[start : start + 8]
        out += [status_event(lead, OLDER, base + lead * 10, prefix) for lead in group]
        out += [status_event(lead, NEWER, base + lead * 10 + 5, prefix) for lead in group]
    return out


@dataclass
class Stream:
    """Posts events at `per_second` to the live replicas, each until one answers it 2xx."""

    replicas: list[Replica]
    secret: str
    per_second: float
    answered: dict[str, float] = field(default_factory=dict)  # event id -> monotonic time
    refused: int = 0  # answers other than 2xx (or none), each followed by a retry
    down: set[str] = field(default_factory=set)  # replicas not to post to (stopped, killed)

    async def post_all(self, events: Sequence[tuple[str, bytes]], give_up_s: float = 60) -> None:
        async with aiohttp.ClientSession() as session:
            tasks = []
            for n, (event_id, body) in enumerate(events):
                tasks.append(asyncio.create_task(self._post(session, n, event_id, body, give_up_s)))
                await asyncio.sleep(1 / self.per_second)  # the sender's pace
            await asyncio.gather(*tasks)

    async def _post(
        self, session: aiohttp.ClientSession, n: int, event_id: str, body: bytes, give_up_s: float
    ) -> None:
        deadline = time.monotonic() + give_up_s
        while time.monotonic() < deadline:
            live = [r for r in self.replicas if r.name not in self.down and r.running()]
            replica = live[n % len(live)]
            n += 1
            try:
                async with session.post(
                    f"{replica.url}/webhooks/stripe",
                    data=body,
                    headers=stripe_signed(body, self.secret),
                    timeout=aiohttp.ClientTimeout(total=2),
                ) as resp:
                    if 200 <= resp.status < 300:
                        self.answered[event_id] = time.monotonic()
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.refused += 1
            await asyncio.sleep(0.1)  # the sender's retry
        raise AssertionError(f"{event_id} was never answered 2xx")


async def time_to_voxys(sandbox: Sandbox, replica: Replica, lead: int, secret: str) -> float:
    """Post one event for a new `lead` to `replica`; seconds from its 2xx to its arrival
    at Voxys (whoever delivers must have been woken, or have polled)."""
    event_id, body = status_event(lead, OLDER, int(time.time()))
    stream = Stream([replica], secret, per_second=1000)
    await stream.post_all([(event_id, body)])
    posted = stream.answered[event_id]
    deadline = posted + 60
    while not (arrived := [a.at for a in sandbox.arrivals() if a.lead == lead]):
        assert time.monotonic() < deadline, f"lead {lead} never reached Voxys"
        await asyncio.sleep(0.02)
    return arrived[0] - posted
