"""Fixtures for the Store contract suite: one `store` per backend, plus builders of events.

Every test in test_contract.py runs once per backend in BACKENDS. A backend is a
`Backend`: it opens a Store on its own empty database, and can open another Store on
that same database (to check durability and crash recovery) or a read-only one.

PostgreSQL runs when VOXYS_BRIDGE_TEST_POSTGRES_DSN names a database (skipped, with the
reason, when it is unset): each test gets a fresh schema of its own in that database,
created by the store's first `open` (`?schema=` in the URL) and dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bridge.models import Evaluation, Event, FollowUp, LeadStatus, Outcome, Transition, Unmapped
from bridge.store import open_backend
from bridge.store.base import Lease, Store

POSTGRES_DSN_ENV = "VOXYS_BRIDGE_TEST_POSTGRES_DSN"

BACKENDS = [
    "sqlite",
    pytest.param("postgresql", marks=pytest.mark.postgres),
]

T0 = 1_700_000_000.0  # the tests' clock starts here; every time is passed in explicitly
HOLDER = "contract-tests"  # holds the delivery lease of every test database
EPOCH = 1  # the first acquisition of a fresh database's lease


@dataclass
class Backend:
    """Opens Stores on one test database: `url` read-write, `read_only_url` read-only."""

    name: str
    url: str
    read_only_url: str
    opened: list[Store] = field(default_factory=list)
    leases: list[Lease] = field(default_factory=list)
    teardown: Callable[[], Awaitable[None]] | None = None

    async def open(self, *, read_only: bool = False) -> Store:
        parts = open_backend(self.read_only_url if read_only else self.url)
        await parts.store.open()
        self.opened.append(parts.store)
        self.leases.append(parts.lease)
        return parts.store

    def lease(self) -> Lease:
        """The lease of the store opened last."""
        return self.leases[-1]

    async def take_over(self) -> int:
        """End the tests' lease term and start another, as a new holder would after a
        crash: returns the new epoch, under which earlier claims can be recovered."""
        await self.lease().release(HOLDER, self.epoch)
        grant = await self.lease().acquire(HOLDER, 3600)
        assert grant.epoch is not None
        self.epoch = grant.epoch
        return grant.epoch

    epoch: int = EPOCH

    async def close_all(self) -> None:
        try:
            for lease in self.leases:
                await lease.close()
            for store in reversed(self.opened):
                await store.close()  # closing twice is harmless
        finally:
            if self.teardown is not None:
                await self.teardown()


def _sqlite_backend(tmp_path: Path) -> Backend:
    db = tmp_path / "bridge.db"  # absolute, so the URL has four slashes
    return Backend("sqlite", f"sqlite:///{db}", f"sqlite:///{db}?mode=ro")


def postgres_url(dsn: str, schema: str, *, read_only: bool = False) -> str:
    """`dsn` with the store's `schema` (and read-only mode) options added."""
    joiner = "&" if "?" in dsn else "?"
    return f"{dsn}{joiner}schema={schema}" + ("&mode=ro" if read_only else "")


def fresh_schema() -> str:
    """A schema name no other test uses."""
    return f"t_{uuid.uuid4().hex}"


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg  # only when PostgreSQL is tested

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def _postgres_backend(dsn: str) -> Backend:
    schema = fresh_schema()

    async def teardown() -> None:
        await drop_schema(dsn, schema)

    return Backend(
        "postgresql",
        postgres_url(dsn, schema),
        postgres_url(dsn, schema, read_only=True),
        teardown=teardown,
    )


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    name: str = request.param
    if name == "sqlite":
        made = _sqlite_backend(tmp_path)
    elif name == "postgresql":
        dsn = os.environ.get(POSTGRES_DSN_ENV)
        if not dsn:
            pytest.skip(f"{POSTGRES_DSN_ENV} is unset: no PostgreSQL to test against")
        made = _postgres_backend(dsn)
    else:
        raise AssertionError(f"unknown backend {name!r}")
    try:
        yield made
    finally:
        await made.close_all()


@pytest.fixture
async def store(backend: Backend) -> Store:
    """An open Store on an empty database whose delivery lease the tests hold (epoch
    EPOCH); closed after the test."""
    store = await backend.open()
    grant = await backend.lease().acquire(HOLDER, 3600)
    assert grant.epoch == EPOCH
    return store


# --- builders -------------------------------------------------------------------------


class Events:
    """Builds events with unique ids and matching evaluations."""

    def __init__(self) -> None:
        self._n = 0

    def event(
        self,
        *,
        source: str = "stripe",
        event_id: str | None = None,
        occurred_at: float = T0,
        received_at: float | None = None,
        payload: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Event:
        self._n += 1
        return Event(
            source=source,
            event_id=event_id or f"evt_{self._n}",
            occurred_at=occurred_at,
            received_at=occurred_at if received_at is None else received_at,
            payload={"n": self._n} if payload is None else payload,
            headers={"content-type": "application/json"} if headers is None else headers,
        )

    def matched(
        self,
        *,
        lead_id: int = 1,
        account_id: int = 7,
        status: LeadStatus = LeadStatus.WON,
        occurred_at: float = T0,
        received_at: float | None = None,
        event_id: str | None = None,
        source: str = "stripe",
        rule: str = "paid",
        notes: str | None = None,
        follow_up: FollowUp | None = None,
    ) -> tuple[Event, Evaluation]:
        """An event whose one rule queues one transition for (account_id, lead_id)."""
        event = self.event(
            source=source, event_id=event_id, occurred_at=occurred_at, received_at=received_at
        )
        transition = Transition(rule, account_id, lead_id, status, notes, follow_up)
        return event, Evaluation(Outcome.MATCHED, (transition,), (), (rule,))

    def ignored(self, *, received_at: float = T0) -> tuple[Event, Evaluation]:
        return self.event(received_at=received_at), Evaluation(Outcome.IGNORED)

    def unmapped(self, *, reason: str = "lead_id is not an integer") -> tuple[Event, Evaluation]:
        miss = Unmapped("paid", reason)
        return self.event(), Evaluation(Outcome.UNMAPPED, (), (miss,), ())


@pytest.fixture
def events() -> Events:
    return Events()
