"""The bridge's promises, checked from outside: what Voxys saw (the sandbox's arrival
log) and what the store says.

Never more than the rate in any window; every lead ends in the state of its newest
event; few duplicates; every event answered 2xx stored and settled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from bridge.fakevoxys import max_in_window
from bridge.store import open_store
from tests.reliability.fleet import ACCOUNT, Arrival, Sandbox
from tests.reliability.traffic import NEWER


@dataclass(frozen=True)
class Verdict:
    """What Voxys saw, summed up against the promises."""

    arrivals: int
    max_in_window: int
    duplicates: int
    final: dict[int, str] = field(repr=False)  # lead -> its last status Voxys accepted


# An arrival is stamped when the sandbox's event loop gets to it, and a request leaves
# the bridge when the bridge's loop gets to it (its body is written by a task of its
# own, after the pacer logged the send). On this shared 2-core machine either can be
# 100-200 ms late: requests bunch, and a request or two of the neighbouring window land
# in a 1 s one even from a single sender paced exactly (21-23 seen in steady state, far
# from any handover). The rate is checked over the window less this much; two senders
# at once would still show about twice the limit in it.
STAMP_JITTER_S = 0.15


def verdict(arrivals: Sequence[Arrival], per_seconds: float) -> Verdict:
    """What Voxys saw: the most requests in any window of `per_seconds` (less the stamp
    jitter), duplicates, and each lead's final state."""
    ok = [a for a in arrivals if a.http == 200]
    final: dict[int, str] = {}
    for a in ok:  # sorted by arrival: the sandbox applies in arrival order
        if a.lead is not None and a.status is not None:
            final[a.lead] = a.status
    distinct = {(a.lead, a.status) for a in ok}
    # The rate counts requests: a bulk request's leads arrive as one (one stamp).
    sent = [a.at for a in arrivals if not a.bulk] + sorted({a.at for a in arrivals if a.bulk})
    return Verdict(
        arrivals=len(arrivals),
        max_in_window=max_in_window(sent, per_seconds - STAMP_JITTER_S),
        duplicates=len(ok) - len(distinct),
        final=final,
    )


async def ledgers(url: str, leads: Iterable[int]) -> dict[str, str]:
    """event id -> state of its transition, over the leads' ledgers in the store."""
    store = open_store(url)
    await store.open()
    try:
        states = {}
        for lead in leads:
            for entry in await store.ledger(ACCOUNT, lead):
                states[entry.event_id] = str(entry.state)
        return states
    finally:
        await store.close()


async def settled(
    sandbox: Sandbox, leads: Iterable[int], timeout: float, newest: str = NEWER
) -> Verdict:
    """Wait until every lead's final Voxys state is `newest`; what Voxys saw."""
    leads = set(leads)
    deadline = time.monotonic() + timeout
    while True:
        seen = verdict(sandbox.arrivals(), 1.0)
        if all(seen.final.get(lead) == newest for lead in leads):
            return seen
        if time.monotonic() > deadline:
            missing = sorted(lead for lead in leads if seen.final.get(lead) != newest)
            raise AssertionError(f"leads not at {newest!r} within {timeout} s: {missing[:20]}")
        await asyncio.sleep(0.1)


async def accounted(
    url: str, answered: Iterable[str], leads: Iterable[int], timeout: float = 15.0
) -> None:
    """Every event answered 2xx is stored and its transition settled: the newer delivered,
    the older delivered, superseded or stale; nothing pending, in flight or dead.

    Waits up to `timeout` for the last settles (retried with backoff after an outage).
    """
    leads, answered = list(leads), set(answered)
    deadline = time.monotonic() + timeout
    while True:
        states = await ledgers(url, leads)
        missing = answered - states.keys()
        assert not missing, f"answered 2xx but not stored: {sorted(missing)[:10]}"
        wrong = {
            event_id: state
            for event_id, state in states.items()
            if state not in (("delivered",) if event_id.endswith(NEWER) else SETTLED_OLDER)
        }
        if not wrong:
            return
        if time.monotonic() > deadline or "dead" in wrong.values():
            raise AssertionError(
                f"not settled as they should be: {dict(sorted(wrong.items())[:10])}"
            )
        await asyncio.sleep(0.2)


SETTLED_OLDER = ("delivered", "superseded", "stale")
