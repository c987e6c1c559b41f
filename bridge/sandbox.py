"""`voxys-bridge sandbox`: the fake Voxys API (bridge/fakevoxys.py) served on loopback.

Parses the command's arguments and prints the base URL, then one line per call, so rules
can be tried without touching real leads.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:  # the fake server (and aiohttp) load only when the sandbox runs:
    from bridge.fakevoxys import Call  # every other command starts faster without them


def parse_seed_leads(text: str) -> list[tuple[int, int]]:
    """Parse `1/42,1/43` (account/lead pairs) for `--seed-leads`."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        account, sep, lead = item.partition("/")
        if not sep or not account.isdigit() or not lead.isdigit():
            raise ValueError(f"expected ACCOUNT/LEAD, got {item!r}")
        pairs.append((int(account), int(lead)))
    return pairs


def parse_failure(text: str) -> tuple[int, int | None]:
    """Parse `500:3` (status, how many times) or `422` (always) for `--fail`."""
    status, sep, count = text.partition(":")
    try:
        parsed = (int(status), int(count) if sep else None)
    except ValueError:
        parsed = (0, None)
    if not 400 <= parsed[0] <= 599 or (parsed[1] is not None and parsed[1] < 1):
        raise ValueError(
            f"expected STATUS[:COUNT] with STATUS 400-599 and COUNT >= 1, got {text!r}"
        )
    return parsed


def parse_bulk_limit(text: str) -> tuple[int, int]:
    """Parse `50` or `50:422` (most lead ids, the status beyond) for `--bulk-limit`."""
    limit, sep, status = text.partition(":")
    try:
        parsed = (int(limit), int(status) if sep else 413)
    except ValueError:
        parsed = (0, 0)
    if parsed[0] < 1 or not 400 <= parsed[1] <= 499:
        raise ValueError(f"expected LIMIT[:STATUS] with LIMIT >= 1 and a 4xx STATUS, got {text!r}")
    return parsed


def parse_rate_limit(text: str) -> tuple[int, float]:
    """Parse `10/1` (requests per seconds) for `--rate-limit`."""
    requests, sep, seconds = text.partition("/")
    try:
        limit = (int(requests), float(seconds))
    except ValueError:
        limit = (0, 0.0)
    if not sep or limit[0] < 1 or not limit[1] > 0:
        raise ValueError(f"expected REQUESTS/SECONDS, got {text!r}")
    return limit


async def run_sandbox(
    host: str,
    port: int,
    tokens: set[str] | str,
    seed_leads: Iterable[tuple[int, int]] | None,
    latency: float,
    rate_limit: tuple[int, float] | None,
    stream: TextIO | None = None,
    as_json: bool = False,
    failures: Iterable[tuple[int, int | None]] = (),
    bulk: bool = True,
    bulk_limit: tuple[int, int] | None = None,
) -> None:
    """Serve a fake Voxys until cancelled; print the base URL, then one line per call.

    `as_json`: each call as a JSON object (`at` is this process's monotonic clock when
    the request arrived), for tests that check timing from outside the process.
    """
    from bridge.fakevoxys import FakeVoxys

    out = sys.stdout if stream is None else stream
    fake = FakeVoxys(tokens=tokens, seed_leads=seed_leads)
    fake.latency = latency
    fake.fail_rate_limit = rate_limit
    fake.bulk = bulk
    if bulk_limit is not None:
        fake.bulk_limit, fake.bulk_limit_status = bulk_limit
    for status, count in failures:
        fake.fail_next(status, count)
    render = call_json if as_json else call_line
    fake.on_call = lambda call: print(render(call), file=out, flush=True)
    base_url = await fake.start(host, port)
    print(f"voxys sandbox listening on {base_url}", file=out, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await fake.stop()


def call_json(call: Call) -> str:
    """One call as a JSON line (the token itself is never kept, so never printed)."""
    fields = ("at", "method", "path", "account_id", "lead_id", "status", "body", "dropped")
    return json.dumps({name: getattr(call, name) for name in fields})


def call_line(call: Call) -> str:
    """One line for a call: method, path, answer, and the status and notes it asked for."""
    answered = "dropped" if call.dropped else str(call.status)
    line = f"{call.method} {call.path} -> {answered}"
    if call.body is not None and "lead_ids" in call.body:
        leads = call.body["lead_ids"]
        shown = ",".join(map(str, leads[:5])) + (",…" if len(leads) > 5 else "")
        line += f" status={(call.body.get('params') or {}).get('status')!r}"
        line += f" leads={len(leads)} [{shown}]"
    elif call.body is not None:
        notes = call.body.get("notes")
        line += f" status={call.body.get('status')!r}"
        if notes is not None:
            line += f" notes={str(notes)[:80]!r}"
    return line
