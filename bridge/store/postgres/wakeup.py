"""Wake-ups between replicas on one PostgreSQL database: NOTIFY after each commit, LISTEN
on a connection of the deliverer's own.

The channel is named after the schema the store's tables resolve to, so bridges in
other schemas of the database do not wake each other, and `?schema=public` and no
schema at all (the same tables) share one channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from collections.abc import Callable
from typing import Any

import asyncpg
import structlog

from bridge.errors import StorageError

log = structlog.get_logger("bridge.wakeup")

CONNECT_TIMEOUT = 5.0
_FAILURES = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, StorageError)


def channel(schema: str) -> str:
    """The NOTIFY channel of the tables in `schema` (an identifier of bounded length)."""
    return f"voxys_bridge_{zlib.crc32(schema.encode()):08x}"


class PostgresNotify:
    """NOTIFY after each commit; LISTEN on a connection of the deliverer's own."""

    def __init__(self, dsn: str, settings: dict[str, str], resolve: Callable[[], str]) -> None:
        self.dsn = dsn
        self._settings = settings
        self._resolve = resolve  # the schema the store resolved at open
        self._notifier: Any = None
        self._pending: asyncio.Task[None] | None = None

    async def _connect(self) -> Any:
        return await asyncpg.connect(
            self.dsn, timeout=CONNECT_TIMEOUT, server_settings=self._settings
        )

    def publish(self) -> None:
        if self._pending is None or self._pending.done():
            self._pending = asyncio.get_running_loop().create_task(self._notify())

    async def notify(self) -> None:
        """Publish once and wait for it; StorageError when PostgreSQL cannot be reached."""
        try:
            await self._send()
        except _FAILURES as exc:
            self._notifier = None
            raise StorageError(f"NOTIFY failed: {type(exc).__name__}") from None

    @property
    def channel(self) -> str:
        """The channel of this store's tables (the store must be open)."""
        return channel(self._resolve())

    async def _send(self) -> None:
        if self._notifier is None or self._notifier.is_closed():
            self._notifier = await self._connect()
        await self._notifier.execute(f"NOTIFY {self.channel}")

    async def _notify(self) -> None:
        try:
            await self._send()
        except _FAILURES as exc:
            # The deliverer's safety-net poll still finds the work.
            log.warning("wakeup.notify_failed", error=type(exc).__name__)
            self._notifier = None

    async def listen(self, callback: Callable[[], None], lost: Callable[[str], None]) -> Listening:
        try:
            conn = await self._connect()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StorageError(f"postgresql listen failed: {type(exc).__name__}") from None
        listening = Listening(conn)

        def terminated(_conn: object) -> None:
            if not listening.closing:
                lost("connection closed")

        conn.add_termination_listener(terminated)
        try:
            await conn.add_listener(self.channel, lambda *_: callback())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await listening.close()
            raise StorageError(f"postgresql listen failed: {type(exc).__name__}") from None
        return listening

    async def close(self) -> None:
        if self._pending is not None and not self._pending.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pending, 2)
        notifier, self._notifier = self._notifier, None
        if notifier is not None:
            with contextlib.suppress(Exception):
                await notifier.close(timeout=2)


class Listening:
    """The deliverer's LISTEN connection; closing it on purpose is not reported as lost."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.closing = False

    async def close(self) -> None:
        self.closing = True
        with contextlib.suppress(Exception):
            await self.conn.close(timeout=2)
