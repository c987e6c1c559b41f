"""A fake Voxys Connect lead-status endpoint over real HTTP, with fault injection.

Used as the Voxys server in our tests and by `voxys-bridge sandbox` (bridge/sandbox.py) and
`demo`, so rules can be tried without touching real leads. It speaks
`PATCH /api/v1/accounts/{account_id}/leads/{id}/status`, and
`GET /api/v1/accounts/{account_id}/leads` (what `check --online` asks) and the bulk
status change `POST /api/v1/accounts/{account_id}/leads/bulk`, as the Voxys Connect API
reference (developers.voxys.ai) describes them.

Answers, in the order they are decided (Rails conventions, as the reference implies):

- any path or method other than the two endpoints: 404 / 405, `{"error": ...}`;
- missing, unknown or revoked `api_access_token`: 401 `{"error": "Invalid Access Token"}`;
- a valid token used for an account it has no access to (`refused_accounts`): 403
  `{"error": "You are not authorized to access this account"}`;
- listing the leads of an account that does not exist (when leads were seeded, the
  accounts of the seeded leads exist; otherwise every account does): 404; else 200
  `{"data": [lead, …], "meta": {"current_page", "total_pages", "total_count"}}`, the
  newest first, `page` and `per_page` (default 25) as the reference describes;
- a non-integer id, or an unknown lead when leads were seeded: 404;
- a body that is not JSON: 400; a missing or invalid `status`, or `notes` that is neither
  a string nor null: 422 `{"error": <message>}`;
- bulk: `bulk = False` makes the endpoint absent (404, as a Voxys without it); an
  account that does not exist (as for listing) answers 404 as well; more
  `lead_ids` than `bulk_limit` answer `bulk_limit_status` (413); a body without a list
  of lead ids, an action other than `status_change` or an invalid `params.status`: 422;
  otherwise 200 `{"success": true, "affected_count": n}`, n counting the leads found
  (every lead, unless leads were seeded or named in `unknown_leads`): the status is set
  on those, the others are left out, as the real endpoint's count implies;
- otherwise 200: the lead object at the top level plus `"message": "Status updated."`
  (the reference documents "Status updated." and the lead object; a client must not rely
  on `message`). An absent `notes` keeps the lead's notes; `null` clears them.

Faults run before that: scripted answers (one per request, in order), a sliding-window
rate limit (429 with `Retry-After`, plain text like Rack::Attack), a failure ratio (503),
and `latency` added to every answer. `fail_next(status, count)` makes status changes of
leads that exist answer `status` (`count` times, or always), after authentication, as
Voxys would refuse them: what `sandbox --fail` rehearses dead letters and retries with.
The raw token is never stored, printed or logged.

One concept: the fake Voxys server. Its length is its answers, which follow the
real API's rules one by one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

STATUS_PATH = "/api/v1/accounts/{account_id}/leads/{lead_id}/status"
BULK_PATH = "/api/v1/accounts/{account_id}/leads/bulk"
LEADS_PATH = "/api/v1/accounts/{account_id}/leads"
PER_PAGE = 25  # the reference's default page size
STATUSES = ("open", "won", "lost", "snoozed")
AUTH_HEADER = "api_access_token"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def token_id(token: str) -> str:
    """A short, non-reversible name for a token: what calls record instead of the token."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@dataclass(slots=True)
class Call:
    """One request the fake received, and what it answered.

    `status` is None when the connection was dropped before a status line was sent;
    `dropped` is True for every scripted reset. `token_id` is `token_id(token)` or None
    when the header was absent: the raw token is never kept.
    """

    at: float
    method: str
    path: str
    account_id: int | None
    lead_id: int | None
    token_valid: bool
    token_id: str | None
    body: dict[str, Any] | None = None
    status: int | None = None
    dropped: bool = False


@dataclass(frozen=True, slots=True)
class Answer:
    """A scripted answer, given instead of the normal one to exactly one request.

    `body` may be JSON-able (sent as JSON), `str`/`bytes` (sent as is) or None (a JSON
    `{"error": <reason>}`). `Answer.reset()` drops the connection instead.
    """

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: Any = None
    drop: bool = False
    apply: bool = False  # drop only: apply the change first, so the client never learns
    partial: bool = False  # drop only: send the status line and headers, then close

    @classmethod
    def reset(cls, *, apply: bool = False, partial: bool = False) -> Answer:
        """Close the connection instead of answering (after applying, if `apply`)."""
        return cls(drop=True, apply=apply, partial=partial)


def max_in_window(times: Iterable[float], window: float) -> int:
    """The most of `times` that fall in any half-open interval [t, t + window)."""
    ordered = sorted(times)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window:
            start += 1
        best = max(best, end - start + 1)
    return best


def iso(ts: float) -> str:
    """POSIX seconds as a Rails-style ISO 8601 UTC string (milliseconds, `Z`)."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_lead(account_id: int, lead_id: int, now: float) -> dict[str, Any]:
    """A plausible lead object as the real 200 answer carries it, status `open`."""
    return {
        "id": lead_id,
        "custom_name": f"Sandbox lead {lead_id}",
        "status": "open",
        "lead_value": None,
        "lead_currency": None,
        "position": None,
        "notes": None,
        "assigned_agent": {
            "id": 1,
            "name": "Sandbox Agent",
            "email": "agent@sandbox.invalid",
            "avatar_url": "",
        },
        "company": {"id": account_id, "name": "Sandbox Co", "domain": "sandbox.invalid"},
        "conversation_id": None,
        "custom_attributes": {},
        "created_at": iso(now),
        "updated_at": iso(now),
    }


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _error(status: int, message: str) -> web.Response:
    return _json(status, {"error": message})


class FakeVoxys:
    """The fake server: state, recorded calls and fault knobs are plain attributes."""

    def __init__(
        self,
        *,
        tokens: set[str] | str,
        seed_leads: Iterable[tuple[int, int]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        seed: int = 0,
    ) -> None:
        self._tokens = {tokens} if isinstance(tokens, str) else set(tokens)
        self._revoked: set[str] = set()
        self._seeded = seed_leads is not None
        self._clock = clock
        self._wall_clock = wall_clock
        self._random = random.Random(seed)
        self._script: list[Answer] = []
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.calls: list[Call] = []
        self.leads: dict[tuple[int, int], dict[str, Any]] = {}
        for account_id, lead_id in seed_leads or ():
            self.leads[(account_id, lead_id)] = new_lead(account_id, lead_id, wall_clock())
        # Fault knobs, settable at any time.
        self.latency = 0.0
        self.fail_rate_limit: tuple[int, float] | None = None
        self.fail_ratio = 0.0
        self.fail_status = 503
        self.refused_accounts: set[int] = set()  # the token has no access to these: 403
        self.unknown_leads: set[tuple[int, int]] = set()  # these do not exist: 404
        self.bulk = True  # False: no bulk endpoint (404), as an older Voxys
        self.bulk_limit: int | None = None  # more lead ids than this: bulk_limit_status
        self.bulk_limit_status = 413
        self._failures: list[list[int | None]] = []  # [status, remaining or None]: fail_next
        # Called once per call after it is answered (or dropped); the sandbox prints it.
        self.on_call: Callable[[Call], None] | None = None

    # -- fault control -------------------------------------------------------------------

    def script(self, *answers: Answer) -> None:
        """Queue answers; each request takes the next one instead of its normal answer."""
        self._script.extend(answers)

    @property
    def scripted(self) -> int:
        """How many scripted answers are still queued."""
        return len(self._script)

    def fail_next(self, status: int, count: int | None = None) -> None:
        """Answer `status` to the next `count` status changes (every one when None), after
        any failures queued before; a 429 or 503 says `Retry-After: 1`."""
        self._failures.append([status, count])

    def _take_failure(self) -> int | None:
        if not self._failures:
            return None
        failure = self._failures[0]
        status, remaining = failure
        if remaining is not None:
            failure[1] = remaining - 1
            if remaining <= 1:
                self._failures.pop(0)
        return status

    def revoke(self, token: str) -> None:
        """Refuse `token` (401) until `restore(token)`."""
        self._revoked.add(token)

    def restore(self, token: str) -> None:
        """Accept `token` again after `revoke` (no effect on tokens never accepted)."""
        self._revoked.discard(token)

    def max_in_window(self, window: float) -> int:
        """The most calls whose times fall in any half-open interval [t, t + window)."""
        return max_in_window([call.at for call in self.calls], window)

    # -- HTTP ----------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application: one route, the fault middleware in front of it."""
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("PATCH", STATUS_PATH, self._patch_status)
        app.router.add_post(BULK_PATH, self._bulk_status)
        app.router.add_get(LEADS_PATH, self._list_leads)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on host:port (0 picks a free port); return the base URL."""
        runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.base_url = f"http://{shown}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        """Stop listening; in-flight requests get half a second to finish."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeVoxys:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        token = request.headers.get(AUTH_HEADER)
        call = Call(
            at=self._clock(),
            method=request.method,
            path=request.path,
            account_id=_int_or_none(request.match_info.get("account_id")),
            lead_id=_int_or_none(request.match_info.get("lead_id")),
            token_valid=self._accepts(token),
            token_id=None if token is None else token_id(token),
        )
        self.calls.append(call)
        try:
            return await self._respond(request, handler, call)
        finally:
            if self.on_call is not None:
                self.on_call(call)

    async def _respond(
        self, request: web.Request, handler: Handler, call: Call
    ) -> web.StreamResponse:
        call.body = _json_object(await request.read())
        # Decide at arrival so ordering and the rate window do not depend on latency.
        answer = self._script.pop(0) if self._script else None
        throttled_for = self._throttled_for(call.at)
        if self.latency > 0:
            await asyncio.sleep(self.latency)
        if answer is not None and answer.drop:
            return await self._drop(request, handler, call, answer)
        if answer is not None:
            response: web.StreamResponse = _scripted(answer)
        elif throttled_for is not None:
            response = web.Response(
                status=429, text="Retry later\n", headers={"Retry-After": str(throttled_for)}
            )
        elif self.fail_ratio > 0 and self._random.random() < self.fail_ratio:
            response = _error(self.fail_status, "Service Unavailable")
        else:
            response = await _answer(handler, request)
        call.status = response.status
        return response

    def _accepts(self, token: str | None) -> bool:
        return token is not None and token in self._tokens and token not in self._revoked

    def _throttled_for(self, now: float) -> int | None:
        """Seconds until a slot frees when more than the limit arrived in the window."""
        if self.fail_rate_limit is None:
            return None
        limit, per_seconds = self.fail_rate_limit
        recent = [c.at for c in self.calls if c.at > now - per_seconds]
        if len(recent) <= limit:
            return None
        # Retry-After is delay-seconds, a non-negative integer (RFC 9110 §10.2.3).
        oldest_that_must_leave = sorted(recent)[len(recent) - limit]
        return max(1, math.ceil(oldest_that_must_leave + per_seconds - now))

    async def _drop(
        self, request: web.Request, handler: Handler, call: Call, answer: Answer
    ) -> web.StreamResponse:
        call.dropped = True
        response = await _answer(handler, request) if answer.apply else None
        if answer.partial:
            partial = web.StreamResponse(status=200 if response is None else response.status)
            partial.content_length = 1024
            partial.content_type = "application/json"
            await partial.prepare(request)
            await partial.write(b'{"message": "Status')
            call.status = partial.status
            _close(request)
            return partial
        _close(request)
        return web.Response(status=500)  # never reaches the client: the socket is closed

    async def _patch_status(self, request: web.Request) -> web.StreamResponse:
        if not self._accepts(request.headers.get(AUTH_HEADER)):
            return _error(401, "Invalid Access Token")
        account_id = _int_or_none(request.match_info["account_id"])
        lead_id = _int_or_none(request.match_info["lead_id"])
        if account_id in self.refused_accounts:
            return _error(403, "You are not authorized to access this account")
        if account_id is None or lead_id is None:
            return _error(404, "Resource could not be found")
        key = (account_id, lead_id)
        if not self._exists(key):
            return _error(404, "Resource could not be found")
        failing = self._take_failure()
        if failing is not None:
            headers = {"Retry-After": "1"} if failing in (429, 503) else None
            reason = web.Response(status=failing).reason or "Failed"
            return _json(failing, {"error": f"{reason} (sandbox --fail)"}, headers)
        try:
            body = json.loads(await request.read()) if request.content_type.endswith("json") else {}
        except ValueError:
            return _error(400, "Invalid JSON in request body")
        problem = _invalid(body)
        if problem is not None:
            return _error(422, problem)
        lead = self.leads.get(key) or new_lead(account_id, lead_id, self._wall_clock())
        changes = {"status": body["status"]}
        if "notes" in body:
            changes["notes"] = body["notes"]
        if any(lead[k] != v for k, v in changes.items()):
            lead.update(changes, updated_at=iso(self._wall_clock()))
        self.leads[key] = lead
        return _json(200, {"message": "Status updated.", **lead})

    def _exists(self, key: tuple[int, int]) -> bool:
        return key not in self.unknown_leads and (not self._seeded or key in self.leads)

    def _account_exists(self, account_id: int) -> bool:
        """With seeded leads, an account none of them belongs to does not exist (404)."""
        return not self._seeded or any(a == account_id for a, _ in self.leads)

    async def _bulk_status(self, request: web.Request) -> web.StreamResponse:
        if not self.bulk:
            return _error(404, "Not Found")
        if not self._accepts(request.headers.get(AUTH_HEADER)):
            return _error(401, "Invalid Access Token")
        account_id = _int_or_none(request.match_info["account_id"])
        if account_id in self.refused_accounts:
            return _error(403, "You are not authorized to access this account")
        if account_id is None or not self._account_exists(account_id):
            return _error(404, "Resource could not be found")
        failing = self._take_failure()
        if failing is not None:
            headers = {"Retry-After": "1"} if failing in (429, 503) else None
            reason = web.Response(status=failing).reason or "Failed"
            return _json(failing, {"error": f"{reason} (sandbox --fail)"}, headers)
        body = _json_object(await request.read())
        problem = _invalid_bulk(body)
        if problem is not None or body is None:
            return _error(422, problem or "a JSON object body is required")
        lead_ids = body["lead_ids"]
        if self.bulk_limit is not None and len(lead_ids) > self.bulk_limit:
            return _error(self.bulk_limit_status, f"at most {self.bulk_limit} lead_ids")
        affected = 0
        now = self._wall_clock()
        for lead_id in dict.fromkeys(lead_ids):
            key = (account_id, lead_id)
            if not self._exists(key):
                continue
            affected += 1
            lead = self.leads.get(key) or new_lead(account_id, lead_id, now)
            if lead["status"] != body["params"]["status"]:
                lead.update(status=body["params"]["status"], updated_at=iso(now))
            self.leads[key] = lead
        return _json(200, {"success": True, "affected_count": affected})

    async def _list_leads(self, request: web.Request) -> web.StreamResponse:
        if not self._accepts(request.headers.get(AUTH_HEADER)):
            return _error(401, "Invalid Access Token")
        account_id = _int_or_none(request.match_info["account_id"])
        if account_id is None or not self._account_exists(account_id):
            return _error(404, "Resource could not be found")
        leads = sorted(
            (lead for (a, _), lead in self.leads.items() if a == account_id),
            key=lambda lead: (lead["created_at"], lead["id"]),
            reverse=True,
        )
        per_page = _int_or_none(request.query.get("per_page")) or PER_PAGE
        page = _int_or_none(request.query.get("page")) or 1
        chosen = leads[(page - 1) * per_page : page * per_page]
        meta = {
            "current_page": page,
            "total_pages": max(1, math.ceil(len(leads) / per_page)),
            "total_count": len(leads),
        }
        return _json(200, {"data": chosen, "meta": meta})


def _int_or_none(text: str | None) -> int | None:
    # Rails routes ids as strings and `find` refuses non-numeric ones with a 404.
    if text is None or not text.isascii() or not text.isdigit():
        return None
    return int(text)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _invalid(body: Any) -> str | None:
    if not isinstance(body, dict) or "status" not in body:
        return "status is required (a JSON object body with Content-Type: application/json)"
    if body["status"] not in STATUSES:
        return f"status must be one of {', '.join(STATUSES)}"
    if "notes" in body and body["notes"] is not None and not isinstance(body["notes"], str):
        return "notes must be a string or null"
    return None


def _invalid_bulk(body: dict[str, Any] | None) -> str | None:
    if body is None:
        return None
    ids = body.get("lead_ids")
    if not isinstance(ids, list) or not ids:
        return "lead_ids must be a non-empty list of lead ids"
    if not all(type(i) is int and i > 0 for i in ids):
        return "lead_ids must be positive integers"
    if body.get("action_type") != "status_change":
        return "the sandbox only takes action_type status_change"
    params = body.get("params")
    if not isinstance(params, dict) or params.get("status") not in STATUSES:
        return f"params.status must be one of {', '.join(STATUSES)}"
    return None


def _scripted(answer: Answer) -> web.Response:
    if isinstance(answer.body, bytes | str):
        body = answer.body.encode() if isinstance(answer.body, str) else answer.body
        return web.Response(status=answer.status, body=body, headers=answer.headers)
    payload = answer.body
    if payload is None:
        payload = {"error": web.Response(status=answer.status).reason}
    return _json(answer.status, payload, answer.headers)


async def _answer(handler: Handler, request: web.Request) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:  # the router's 404 / 405, answered as JSON
        return _json(
            exc.status,
            {"error": exc.reason},
            {"Allow": exc.headers.get("Allow", "")} if exc.status == 405 else None,
        )


def _close(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()
