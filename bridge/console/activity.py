"""Requests sent to Voxys in the last minute, from the attempts counter sampled in memory.

The delivery worker counts every attempt (`bridge_delivery_attempts_total`); nothing
keeps when they happened. A sample of that counter every few seconds, the last minute
of them kept, answers "how many in the last minute" to within one sampling interval,
for the cost of reading a counter: no new storage, nothing on the delivery path.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from bridge.metrics import Metrics

SAMPLE_EVERY_S: Final = 5.0
WINDOW_S: Final = 60.0


def attempts_total(metrics: Metrics) -> float:
    """Every PATCH attempt this process made since it started (all status classes)."""
    return sum(
        sample.value
        for family in metrics.attempts.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


@dataclass(frozen=True, slots=True)
class RecentCount:
    """How many happened over how many seconds (`span_s` < 60 while the process is young)."""

    count: int
    span_s: float


@dataclass
class RequestRate:
    """Samples of a monotonically growing counter; the growth over the last minute."""

    samples: deque[tuple[float, float]] = field(
        default_factory=lambda: deque(maxlen=int(WINDOW_S / SAMPLE_EVERY_S) + 2)
    )

    def sample(self, now: float, total: float) -> None:
        self.samples.append((now, total))

    def last_minute(self, now: float, total: float) -> RecentCount:
        """Growth from the newest sample at least a minute old (or the oldest) to `total`."""
        base_at, base = self.samples[0] if self.samples else (now, total)
        for at, value in self.samples:
            if now - at < WINDOW_S:
                break
            base_at, base = at, value
        return RecentCount(int(total - base), max(0.0, now - base_at))


async def sample_forever(
    rate: RequestRate, metrics: Metrics, clock: Callable[[], float], every: float = SAMPLE_EVERY_S
) -> None:
    """Sample the attempts counter until cancelled (a supervised task)."""
    while True:
        rate.sample(clock(), attempts_total(metrics))
        await asyncio.sleep(every)
