"""PostgreSQL faults of the test's own making: a proxy to cut, backends to terminate.

- `Proxy`: a TCP forwarder in a thread of its own; `cut()` closes every connection and
  refuses new ones, as a restarting PostgreSQL does, until `restore()`.
- `backends` finds the server processes serving one bridge process's connections (by
  application_name and by the client ports that process holds), so that a test only
  ever terminates backends it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from tests.conftest import free_port


def tcp_ports(pid: int) -> set[int]:
    """The local ports of the TCP sockets process `pid` has open (from /proc)."""
    inodes = set()
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                if cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


async def backends(dsn: str, pid: int, application_name: str) -> list[int]:
    """The PostgreSQL backend pids serving process `pid`'s connections named so."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
            " AND client_port = ANY($2::int[])",
            application_name,
            sorted(tcp_ports(pid)),
        )
    finally:
        await conn.close()
    return [row[0] for row in rows]


async def terminate(dsn: str, pids: Iterable[int]) -> int:
    """pg_terminate_backend each of `pids` (backends of this test's own processes)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        done = 0
        for pid in pids:
            done += bool(await conn.fetchval("SELECT pg_terminate_backend($1)", pid))
        return done
    finally:
        await conn.close()


class Proxy:
    """A TCP forwarder to `target`, run by a thread of its own so that the test's blocking
    calls never stall it. `cut()` closes every connection and stops listening (new ones
    are refused) until `restore()`."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    def start(self) -> Proxy:
        self._thread.start()
        self.restore()
        return self

    def cut(self) -> None:
        self._run(self._cut())

    def restore(self) -> None:
        self._run(self._listen())

    def stop(self) -> None:
        if self._thread.is_alive():
            self._run(self._cut())
            self._run(self._finish())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._accept, "127.0.0.1", self.port, reuse_address=True
            )

    async def _cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._open):
            writer.transport.abort()  # a reset: both ends learn at once
        self._open.clear()

    async def _finish(self) -> None:
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._open.update((writer, up_writer))

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()
            self._open.discard(dst)

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


def proxied(dsn: str, port: int) -> str:
    """`dsn` with its host:port replaced by the proxy's."""
    parts = urlsplit(dsn)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    netloc[-1] = host
    return urlunsplit((parts.scheme, "@".join(netloc), parts.path, parts.query, ""))
