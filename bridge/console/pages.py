"""The console's pages: overview, dead letters, a lead, events and an event.

Each handler reads through the admin operations (`bridge.admin`) and the runtime, and
renders one template; the two that change anything (retry, replay) are the admin
operations themselves, logged as the JSON API logs them and answered with a redirect.
The guard in `site.py` has checked the session and CSRF token before any of these runs;
the playground's page is `playground_page.py`.
"""

from __future__ import annotations

import time
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode, urlsplit

import structlog
from aiohttp import web
from pydantic import ValidationError

from bridge import admin
from bridge.admin_cli import UsageError, parse_lead
from bridge.console import views
from bridge.console.activity import attempts_total
from bridge.console.site import CONSOLE, PREFIX, render, see_other
from bridge.dryrun import event_report
from bridge.errors import NotFound
from bridge.runtime import RUNTIME, Runtime
from bridge.store.base import StoredEvent

log = structlog.get_logger("bridge.console")

REFRESH_S: Final = 5  # the overview refreshes itself this often (with JavaScript)
MAX_IDS: Final = 1000  # ids one retry takes (what the dead-letter page lists at most)


def _wake(runtime: Runtime, queued: int) -> None:
    # As the admin API does: the deliverer (here or, through its channel, elsewhere)
    # sends what was queued now rather than at its next poll.
    if queued:
        runtime.new_work.stored(queued)


def _pacer_fraction(request: web.Request) -> float | None:
    pace = request.config_dict[RUNTIME].delivery.pace
    return None if pace is None else pace.fraction


async def overview(request: web.Request) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    console = request.config_dict[CONSOLE]
    now = runtime.clock()
    stats = await admin.stats(runtime.store, now)
    voxys = runtime.bundle.config.voxys
    last = runtime.last_reload
    return render(
        request,
        "overview.html",
        stats=stats,
        now=now,
        role=runtime.delivery.role,
        epoch=runtime.delivery.epoch,
        paused=runtime.delivery.paused_json(),
        recent=console.rate.last_minute(time.monotonic(), attempts_total(runtime.metrics)),
        limit_per_minute=views.per_minute(voxys.rate_limit.requests, voxys.rate_limit.per_seconds),
        pace=_pacer_fraction(request),
        last_reload=last,
        reload_lines=views.reload_summary(last.outcome, last.detail) if last else [],
        refresh=REFRESH_S,
    )


# --- dead letters ---------------------------------------------------------------------


async def dead_letters(request: web.Request) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    now = runtime.clock()
    wanted = views.DeadFilter.from_query(request.query)
    problems = wanted.problems()
    entries = await admin.list_dead(runtime.store, MAX_IDS)
    shown = entries if problems else [e for e in entries if wanted.keeps(e, now)]
    queued = request.query.get("queued", "")
    return render(
        request,
        "dead_letters.html",
        entries=shown,
        total=len(entries),
        truncated=len(entries) >= MAX_IDS,
        wanted=wanted,
        problems=problems,
        sources=sorted({e.source for e in entries} | set(runtime.bundle.sources)),
        rules=sorted({e.rule for e in entries} | {r.name for r in runtime.bundle.rules.rules}),
        statuses=sorted({str(e.status) for e in entries}),
        queued=int(queued) if queued.isdigit() else None,
        now=now,
        back=request.path_qs,
    )


def _ids(values: list[Any]) -> list[int]:
    ids = [int(v) for v in values if isinstance(v, str) and v.isdigit()]
    return list(dict.fromkeys(ids))[:MAX_IDS]


async def retry(request: web.Request) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    form = await request.post()
    chosen = form.getall("shown" if form.get("action") == "shown" else "ids", [])
    ids = _ids(chosen)
    count = await admin.retry(runtime.store, ids, runtime.clock()) if ids else 0
    if ids:
        log.info("admin.retry", requested=len(ids), queued=count, via="console")
        _wake(runtime, count)
    return see_other(_back_to_list(form.get("back"), count))


def _back_to_list(back: object, queued: int) -> str:
    """The dead-letter list as it was filtered, saying how many were re-queued."""
    url = urlsplit(back if isinstance(back, str) else "")
    kept = [(k, v) for k, v in parse_qsl(url.query) if k in views.DeadFilter.__slots__]
    if url.path != f"{PREFIX}/dead-letters" or url.netloc:
        kept = []
    return f"{PREFIX}/dead-letters?{urlencode([*kept, ('queued', str(queued))])}"


# --- a lead ---------------------------------------------------------------------------


async def lead(request: web.Request) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    asked = request.query.get("lead", "").strip()[:60]
    entries: list[dict[str, Any]] = []
    problem = found = None
    if asked:
        try:
            account_id, lead_id = parse_lead(asked, runtime.bundle.config.voxys.account_id)
        except UsageError as exc:
            problem = str(exc).replace("--lead", "a lead")
        else:
            found = f"{account_id}/{lead_id}"
            ledger = await admin.explain(runtime.store, account_id, lead_id)
            entries = [admin.ledger_json(e) for e in ledger]
    return render(
        request,
        "lead.html",
        asked=asked,
        found=found,
        problem=problem,
        entries=entries,
        extra=views.extra_fields,
    )


# --- events ---------------------------------------------------------------------------


async def events(request: web.Request) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    fields = {k: v for k in ("outcome", "source", "since", "limit") if (v := request.query.get(k))}
    problem = None
    try:
        query = admin.EventQuery.model_validate(fields)
    except ValidationError as exc:
        problem, query = admin.validation_summary(exc), admin.EventQuery()
    stored = [] if problem else await admin.list_events(runtime.store, query)
    return render(
        request,
        "events.html",
        events=stored,
        fields=fields,
        problem=problem,
        sources=sorted(runtime.bundle.sources),
        outcomes=["matched", "ignored", "unmapped"],
        limit=query.limit,
    )


async def stored_event(runtime: Runtime, text: str) -> StoredEvent:
    if not text.isdigit():
        raise NotFound("no such event")
    found = await runtime.store.events_for_replay(ids=[int(text)], limit=1)
    if not found:
        raise NotFound(f"no stored event {int(text)} (purged after storage.retention?)")
    return found[0]


async def event(request: web.Request) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    stored = await stored_event(runtime, request.match_info["pk"])
    bundle = runtime.bundle
    ev = stored.event
    report = event_report(
        ev,
        bundle.rules.evaluate(ev),
        bundle.config.voxys.base_url,
        len(bundle.rules.for_source(ev.source)),
    )
    return render(
        request,
        "event.html",
        stored=stored,
        headers=views.masked_headers(ev.headers, bundle.secrets()),
        body=views.pretty(ev.payload),
        report=report,
        replayable=str(stored.outcome) in ("ignored", "unmapped"),
        replayed="replayed" in request.query,
    )


async def replay(request: web.Request) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    stored = await stored_event(runtime, request.match_info["pk"])
    selection = admin.ReplayRequest(ids=[stored.pk])
    result = await admin.replay(runtime.store, runtime.bundle.rules, selection, runtime.clock())
    log.info("admin.replay", via="console", **result.as_json())
    _wake(runtime, result.transitions)
    return see_other(f"{PREFIX}/events/{stored.pk}?replayed=1")
