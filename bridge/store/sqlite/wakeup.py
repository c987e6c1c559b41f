"""Wake-ups between processes sharing one SQLite file: a Unix datagram socket beside it.

The deliverer binds `<db>.wake` (in the temp directory when that path is too long for a
socket); every other process sends it one byte after each commit. Sending never
blocks and a lost datagram costs nothing: any one wakes the worker, which then claims
everything due. The path comes from the database file's resolved location, so every
spelling of its path reaches the same socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

MAX_SOCKET_PATH: Final = 100  # bytes; Linux allows 107 in sun_path


class Private:
    """A throwaway store no other process can open: the in-process wake-up is all there is."""

    def publish(self) -> None:
        return None

    async def notify(self) -> None:
        return None

    async def listen(self, callback: Callable[[], None], lost: Callable[[str], None]) -> Private:
        return self

    async def close(self) -> None:
        return None


class UnixDatagram:
    """One byte to `<db>.wake`; the deliverer holds the socket (only the lease holder binds)."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._path: Path | None = None
        self._send: socket.socket | None = None

    @property
    def path(self) -> Path:
        """The socket's path, resolved at first use (the store is open by then, so symlinks
        in the database's path exist and resolve)."""
        if self._path is None:
            self._path = socket_path(self.db)
        return self._path

    def publish(self) -> None:
        if self._send is None:
            self._send = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._send.setblocking(False)
        with contextlib.suppress(OSError):  # no deliverer bound, or its buffer is full
            self._send.sendto(b"!", str(self.path))

    async def notify(self) -> None:
        self.publish()

    async def listen(self, callback: Callable[[], None], lost: Callable[[str], None]) -> Bound:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a dead holder's socket; we hold the lease now
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind(str(self.path))
        except OSError:
            sock.close()
            raise

        def readable() -> None:
            with contextlib.suppress(BlockingIOError):
                while sock.recv(64):
                    pass
            callback()

        asyncio.get_running_loop().add_reader(sock.fileno(), readable)
        return Bound(sock, self.path, _identity(self.path))

    async def close(self) -> None:
        if self._send is not None:
            self._send.close()
            self._send = None


class Bound:
    """The deliverer's bound socket."""

    def __init__(self, sock: socket.socket, path: Path, identity: tuple[int, int] | None) -> None:
        self.sock = sock
        self.path = path
        self.identity = identity  # of the socket file bind() created

    async def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()
        # Only our own socket file: a process that took the lease over while this one
        # was frozen has bound a new one at the same path, and still listens there.
        if _identity(self.path) == self.identity:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)


def _identity(path: Path) -> tuple[int, int] | None:
    """Which file `path` names now (device, inode); None when there is none."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino)


def socket_path(db: Path) -> Path:
    """`<db>.wake` for the resolved `db`, or a name in the temp directory when too long."""
    resolved = Path(os.path.realpath(db))
    beside = resolved.parent / (resolved.name + ".wake")
    if len(os.fsencode(beside)) <= MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(os.fsencode(beside)).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"voxys-bridge-{digest}.wake"
