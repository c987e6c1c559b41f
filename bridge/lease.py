"""The delivery lease as the holder sees it: an epoch and how long it may still act.

Of all processes sharing one store exactly one delivers: the holder of the lease, a
record in the store with a holder, an epoch that grows at every acquisition and an
expiry set by the database's clock (see `bridge/store/base.py` Lease). This module is
the pure half: the timing rules, driven by an injected monotonic clock.

- The holder renews every `ttl / 3`. A renewal sent at monotonic time `t` lets it act
  until `t + ttl - margin`: the database set the expiry at or after `t`, so the holder
  stops at least `margin` before anyone else may take over, whatever the network did
  with the reply. (Monotonic time keeps running while a process is SIGSTOPped.)
- Every send checks `Term.valid()` immediately before its bytes are written, and every
  claim and settle carries the epoch, which the store refuses once it is not current.
- A standby retries when the holder's expiry has passed, but at least every `ttl / 3`
  (a released lease is free at once).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from bridge.errors import LeaseLost
from bridge.store.base import Lease

DEFAULT_TTL: Final = 6.0  # seconds; the longest handover after a holder dies (docs/scaling.md)


def holder_name() -> str:
    """This process's identity in the lease record: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True, slots=True)
class Timing:
    """How long a lease lasts and when it is renewed; all derived from the TTL."""

    ttl: float = DEFAULT_TTL

    @property
    def renew_every(self) -> float:
        return self.ttl / 3

    @property
    def margin(self) -> float:
        """How long before the database's expiry the holder stops sending."""
        return self.ttl / 4

    def standby_wait(self, expires_in: float | None) -> float:
        """How long a standby waits before it tries to take the lease again."""
        if expires_in is None:
            return self.renew_every
        return min(self.renew_every, max(0.05, expires_in))


@dataclass(slots=True)
class Term:
    """One holder's term of office: its epoch and the monotonic time it must stop by."""

    holder: str
    epoch: int
    timing: Timing
    valid_until: float
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    @classmethod
    def granted(
        cls,
        holder: str,
        epoch: int,
        timing: Timing,
        sent_at: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> Term:
        """The term of a lease acquired by a request sent at monotonic `sent_at`."""
        return cls(holder, epoch, timing, sent_at + timing.ttl - timing.margin, clock)

    def renewed(self, sent_at: float) -> None:
        """The renewal sent at monotonic `sent_at` succeeded."""
        self.valid_until = max(self.valid_until, sent_at + self.timing.ttl - self.timing.margin)

    def valid(self) -> bool:
        """True while this process may still send under the lease."""
        return self.clock() < self.valid_until

    def remaining(self) -> float:
        return self.valid_until - self.clock()


async def take_free(lease: Lease, *, ttl: float = 3600.0, holder: str | None = None) -> Term:
    """Take a lease nobody holds, for a long term: a tool or benchmark alone on its store.

    Raises LeaseLost(0) when another process holds it.
    """
    sent_at = time.monotonic()
    holder = holder or holder_name()
    grant = await lease.acquire(holder, ttl)
    if grant.epoch is None:
        raise LeaseLost(0)
    return Term.granted(holder, grant.epoch, Timing(ttl), sent_at)
