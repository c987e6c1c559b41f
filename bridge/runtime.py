"""The state of one running bridge and the application keys it is found under.

A leaf module: handlers, hooks and commands import app state from here, never from
one another.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from bridge.bundle import Bundle
from bridge.metrics import Metrics
from bridge.store.base import Store
from bridge.supervisor import Supervisor


@dataclass
class Runtime:
    """The mutable state of one running bridge: the current bundle and its resources."""

    bundle: Bundle
    store: Store
    clock: Callable[[], float] = time.time
    metrics: Metrics = field(default_factory=Metrics)
    supervisor: Supervisor = field(default_factory=Supervisor)
    on_stored: list[Callable[[int], None]] = field(default_factory=list)  # wakes delivery
    paused_tokens: Callable[[], int] = lambda: 0  # set by delivery: tokens Voxys refused
    delivery_role: Callable[[], str] = lambda: "standby"  # "deliverer" while holding the lease


RUNTIME = web.AppKey("runtime", Runtime)
