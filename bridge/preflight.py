"""`check --online`: what `check` cannot know from the files alone.

Two questions, each answered in one line: does the store open for writing, and does
Voxys accept the configured token? The token is tried with one harmless read,
`GET /api/v1/accounts/{account_id}/leads?per_page=1`, whose answer tells apart a
token accepted, a token refused, an account not found and a Voxys that cannot be
reached. Nothing is written to Voxys; the store is created and migrated if missing,
as `serve` would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import aiohttp

from bridge.bundle import Bundle
from bridge.errors import ConfigError, StorageError
from bridge.store import open_store

TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Finding:
    """One answer: what was checked, whether it passed, and in words."""

    what: str
    ok: bool
    text: str


def token_verdict(status: int) -> tuple[bool, str]:
    """What an answer to the leads listing says about the token and the account."""
    if 200 <= status < 300:
        return True, "token accepted"
    if status in (401, 403):
        return False, "token refused"
    if status == 404:
        return False, "account not found"
    return False, "unexpected answer"


def account_to_ask(bundle: Bundle) -> int | None:
    """voxys.account_id, or else the first account a rule names as a plain number."""
    if bundle.config.voxys.account_id is not None:
        return bundle.config.voxys.account_id
    for located in bundle.loaded.rules:
        value = located.rule.account_id
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            return int(value)
    return None


async def check_store(url: str) -> Finding:
    """Open the store (creating and migrating it if needed) and check it takes writes."""
    try:
        store = open_store(url)
        await store.open()
        try:
            await store.ping()
        finally:
            await store.close()
    except (StorageError, ConfigError) as exc:
        return Finding("store", False, f"cannot be written: {exc}")
    return Finding("store", True, "opens for writing")


async def check_voxys(bundle: Bundle) -> Finding:
    """One GET of the account's leads with the configured token; never a write."""
    voxys = bundle.config.voxys
    account = account_to_ask(bundle)
    if account is None:
        return Finding(
            "voxys", False, "token not checked: no account to ask about (set voxys.account_id)"
        )
    url = f"{voxys.base_url}/api/v1/accounts/{account}/leads"
    where = f"GET {url}"
    headers = {"api_access_token": voxys.api_token.get_secret_value(), "Accept": "application/json"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TIMEOUT_S)) as session,
            session.get(url, params={"per_page": "1"}, headers=headers) as resp,
        ):
            ok, text = token_verdict(resp.status)
    except aiohttp.ClientConnectorError as exc:
        code = exc.os_error.errno
        reason = os.strerror(code) if code else type(exc.os_error).__name__
        return Finding("voxys", False, f"unreachable: {where}: {reason}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else type(exc).__name__
        return Finding("voxys", False, f"unreachable: {where}: {reason}")
    return Finding("voxys", ok, f"{text} (HTTP {resp.status} from {where})")


async def preflight(bundle: Bundle) -> list[Finding]:
    """Every online check, in the order `check` prints them."""
    return [await check_store(bundle.config.storage.url), await check_voxys(bundle)]
