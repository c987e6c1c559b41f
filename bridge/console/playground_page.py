"""The rule playground's page: the form, and one run of an edited rule, read-only.

`playground.py` is the core (parse, compile, compare); this is its web edge. A run reads
the chosen event and the last N events of its source through the store, then does all
the rule work in a worker thread under `playground.DEADLINE_S`, one run at a time.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import yaml
from aiohttp import web

from bridge import admin, logs
from bridge.console import playground
from bridge.console.pages import stored_event
from bridge.console.site import CONSOLE, render
from bridge.errors import NotFound
from bridge.models import Event
from bridge.runtime import RUNTIME, Runtime
from bridge.store.base import StoredEvent

DEFAULT_LAST: Final = 50
CONTENT_TYPES: Final = (
    "application/json",
    "application/x-www-form-urlencoded",
    "text/xml",
)


def _rule_yaml(runtime: Runtime, name: str | None, source: str | None) -> str:
    """A running rule as YAML to start from (by name, else the first of the source)."""
    rules = runtime.bundle.loaded.rules
    chosen = next((r for r in rules if r.rule.name == name), None)
    if chosen is None and source:
        chosen = next((r for r in rules if source in _sources(r.rule.source)), None)
    if chosen is None:
        return ""
    data = chosen.rule.model_dump(by_alias=True, exclude_defaults=True)
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)
    # A rule may have had a secret interpolated into it; the page must not show one.
    return str(logs.Redactor(runtime.bundle.secrets()).scrub(text))


def _sources(source: str | list[str]) -> list[str]:
    return [source] if isinstance(source, str) else list(source)


def _form(data: Any, key: str, default: str = "") -> str:
    value = data.get(key, default)
    return value if isinstance(value, str) else default


async def playground_form(request: web.Request) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    picked = request.query.get("event", "")
    source = None
    if picked.isdigit():
        source = (await stored_event(runtime, picked)).event.source
    form = {
        "event": picked if picked.isdigit() else "",
        "rule": _rule_yaml(runtime, request.query.get("rule"), source),
        "source": source or "",
        "payload": "",
        "content_type": CONTENT_TYPES[0],
        "last": str(DEFAULT_LAST),
    }
    return _playground_page(request, form, None)


def _playground_page(
    request: web.Request, form: dict[str, str], result: dict[str, Any] | None, status: int = 200
) -> web.Response:
    runtime = request.config_dict[RUNTIME]
    return render(
        request,
        "playground.html",
        status=status,
        form=form,
        result=result,
        sources=sorted(runtime.bundle.sources),
        rules=[r.name for r in runtime.bundle.rules.rules],
        content_types=CONTENT_TYPES,
        max_last=playground.MAX_LAST,
        max_rule=playground.MAX_RULE_CHARS,
    )


async def playground_run(request: web.Request) -> web.StreamResponse:
    runtime = request.config_dict[RUNTIME]
    data = await request.post()
    form = {
        key: _form(data, key)
        for key in ("event", "rule", "source", "payload", "content_type", "last")
    }
    if form["content_type"] not in CONTENT_TYPES:
        form["content_type"] = CONTENT_TYPES[0]
    last = int(form["last"]) if form["last"].isdigit() else DEFAULT_LAST
    last = max(0, min(last, playground.MAX_LAST))
    form["last"] = str(last)
    async with request.config_dict[CONSOLE].playground:
        result = await _try(runtime, form, last)
    return _playground_page(request, form, result, status=400 if result.get("errors") else 200)


async def _try(runtime: Runtime, form: dict[str, str], last: int) -> dict[str, Any]:
    """Parse, compile and run the edited rule; read-only, and bounded in time."""
    bundle = runtime.bundle
    stored: StoredEvent | None = None
    if form["event"].strip():
        try:
            stored = await stored_event(runtime, form["event"].strip())
        except NotFound as exc:
            return {"errors": [exc.reason]}
        form["source"] = stored.event.source
    recent: list[StoredEvent] = []
    if form["source"] in bundle.sources and last:
        query = admin.EventQuery(source=form["source"], limit=last)
        recent = await admin.list_events(runtime.store, query)
    base_url = bundle.config.voxys.base_url

    def work() -> dict[str, Any]:
        edit = playground.candidate(bundle, playground.parse_rule(form["rule"]))
        events: list[Event] = []
        if stored is not None:
            events = [stored.event]
        elif form["payload"].strip():
            body = form["payload"].encode("utf-8", "surrogatepass")
            events = playground.pasted_events(bundle, form["source"], body, form["content_type"])
        trials = [playground.trial(e, bundle.rules, edit, base_url) for e in events]
        pairs = [(s.pk, s.event) for s in recent]
        return {
            "edit": edit,
            "trials": trials,
            "changes": playground.changes(pairs, bundle.rules, edit, base_url),
            "compared": len(recent),
            "errors": [],
        }

    try:
        return await asyncio.to_thread(playground.within, playground.DEADLINE_S, work)
    except playground.PlaygroundError as exc:
        return {"errors": exc.messages}
    except playground.Overtime:
        return {
            "errors": [
                f"stopped after {playground.DEADLINE_S:g} s: the rule takes too long on these"
                " events (a loop inside a loop?)"
            ]
        }
