"""`voxys-bridge send`: POST a payload file to a bridge, signed the way its provider signs.

The request is signed by the configured source itself (`Source.sign`, first secret;
a body that carries its sending time gets the current one, `Source.stamp`), so a
running bridge accepts it as a genuine delivery: a way to test a deployment end
to end without the provider. The signed path is always `/webhooks/<source>`, the path
the bridge receives; the default target is `http://127.0.0.1:<server.port>` plus that
path (not `server.public_url`, which may be the external address of a proxy). `--url`
overrides the target; its query string is sent and signed too. A token that a generic
source expects in the query is appended to the request but never printed.

Exit status: 0 on a 2xx answer, 1 on any other answer or when the bridge cannot be
reached, 2 on bad input (configuration, unknown source, unreadable payload file).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bridge.bundle import Bundle
from bridge.sources.base import Source

TIMEOUT_S = 10.0
MAX_SHOWN_BODY = 2000  # characters of the answer printed


class SendError(Exception):
    """A mistake in the command's input: printed as one line, exit status 2."""


def run(
    bundle: Bundle,
    source: str,
    payload: str,
    url: str | None,
    out: TextIO,
    err: TextIO,
    *,
    clock: Callable[[], float] = time.time,
    timeout: float = TIMEOUT_S,
) -> int:
    """Sign `payload` as `source` would and POST it: 0 on 2xx, 1 otherwise, 2 on bad input."""
    path = f"/webhooks/{source}"
    try:
        configured = bundle.sources.get(source)
        if configured is None:
            known = ", ".join(sorted(bundle.sources)) or "none"
            raise SendError(f"unknown source {source!r} (configured sources: {known})")
        now = clock()
        body = configured.stamp(read_payload(payload), now)
        target = url or f"http://127.0.0.1:{bundle.config.server.port}{path}"
        parts = urlsplit(target)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SendError(f"--url {target!r} is not an http(s) URL")
        query = parts.query
        query = configured.signed_query(query)
        headers = sign(configured, body, now=now, path=path, query_string=query)
    except SendError as exc:
        print(f"error: {exc}", file=err)
        return 2
    request_url = urlunsplit(parts._replace(query=query, fragment=""))
    shown = urlunsplit(parts._replace(fragment=""))  # without a query token we added
    try:
        status, answer = asyncio.run(
            post(request_url, body, headers, aiohttp.ClientTimeout(total=timeout))
        )
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"error: POST {shown} failed: {failure_reason(exc)}", file=err)
        return 1
    print(f"POST {shown} -> {status} {answer}", file=out)
    return 0 if 200 <= status < 300 else 1


def read_payload(path: str) -> bytes:
    """The payload file's bytes; `SendError` when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise SendError(f"payload file {path} not found") from exc
    except OSError as exc:
        raise SendError(f"cannot read payload file {path}: {exc.strerror or exc}") from exc


def sign(
    source: Source, body: bytes, *, now: float, path: str, query_string: str
) -> dict[str, str]:
    """The source's signed headers; `SendError` when its preset cannot sign."""
    try:
        return source.sign(body, now=now, path=path, query_string=query_string)
    except NotImplementedError as exc:
        raise SendError(str(exc)) from exc


async def post(
    url: str, body: bytes, headers: dict[str, str], client_timeout: aiohttp.ClientTimeout
) -> tuple[int, str]:
    """POST once, without redirects; the status and the answer's text (shortened)."""
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as session,
        session.post(url, data=body, headers=headers, allow_redirects=False) as resp,
    ):
        text = (await resp.read()).decode("utf-8", errors="replace").strip()
    if len(text) > MAX_SHOWN_BODY:
        text = text[:MAX_SHOWN_BODY] + "..."
    return resp.status, text


def failure_reason(exc: BaseException) -> str:
    """A short reason for a failed request that cannot echo the URL (and a query token)."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        return f"cannot connect to {exc.host}:{exc.port} ({reason})"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return type(exc).__name__
