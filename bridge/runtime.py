"""The state of one running bridge and the application keys it is found under.

A leaf module: handlers, hooks and commands import app state from here, never from
one another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from bridge.bulk import BulkState
from bridge.bundle import Bundle
from bridge.metrics import Metrics
from bridge.pacing import Pace
from bridge.pauses import AuthPauses
from bridge.store.base import Store
from bridge.supervisor import Supervisor


class NewWork(Protocol):
    """Told when this process stored transitions to deliver (ingest, a replay, a retry),
    so that delivery starts them now rather than at its next poll."""

    def stored(self, transitions: int) -> None: ...


class NoDelivery:
    """The NewWork of a process that does not deliver: nobody to tell."""

    def stored(self, transitions: int) -> None:
        return None


@dataclass
class DeliveryState:
    """What this process's delivery is doing: written by delivery, read by /readyz,
    /admin/stats and metrics."""

    role: str = "standby"  # "deliverer" while this process holds the delivery lease
    epoch: int | None = None  # of the lease term, while delivering
    pauses: AuthPauses = field(default_factory=AuthPauses)  # accounts whose token is refused
    pace: Pace | None = None  # the Voxys client's, while delivery runs in this process
    bulk: BulkState = field(default_factory=BulkState)  # what was learnt of the bulk endpoint

    def paused_json(self) -> dict[str, Any]:
        return {
            "token_wide": self.pauses.token_wide,
            "accounts": [
                {
                    "account_id": p.account_id,
                    "since": p.since,
                    "http_status": p.http_status,
                    "next_probe_at": p.next_probe_at,
                    "probing": p.probing,
                }
                for p in sorted(self.pauses.paused.values(), key=lambda p: p.account_id)
            ],
        }


@dataclass(frozen=True, slots=True)
class ReloadRecord:
    """The latest reload's result as `config.reloaded` and its siblings log it (the console
    shows it; nothing stores it)."""

    at: float  # POSIX seconds, when it finished
    trigger: str  # "sighup" or "file_changed"
    outcome: str  # "applied", "failed" or "restart_required"
    duration_ms: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # changes, keys or errors


@dataclass
class Runtime:
    """The mutable state of one running bridge: the current bundle and its resources."""

    bundle: Bundle
    store: Store
    clock: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=Metrics)
    supervisor: Supervisor = field(default_factory=Supervisor)
    delivery: DeliveryState = field(default_factory=DeliveryState)
    new_work: NewWork = field(default_factory=NoDelivery)  # delivery.Doorbell when serving
    last_reload: ReloadRecord | None = None  # set by bridge.reload


RUNTIME = web.AppKey("runtime", Runtime)
