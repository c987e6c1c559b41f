"""POST /webhooks/{source}: read -> verify -> parse -> rules -> store -> answer 2xx.

The only place a webhook error becomes an HTTP status. Nothing is answered 2xx
before the store has committed the request's events.
"""

from __future__ import annotations

import time

import structlog
from aiohttp import web

from bridge import followups
from bridge.errors import NotFound, PayloadTooLarge, RequestRejected, StorageError
from bridge.models import Outcome
from bridge.runtime import RUNTIME, Runtime
from bridge.sources.base import IngestSummary, Source, WebhookRequest, WebhookResponse, clamped
from bridge.store.base import FollowUpChanges

log = structlog.get_logger("bridge.ingest")


async def read_body(request: web.Request, limit: int) -> bytes:
    """The raw body, refusing with 413 as soon as it passes `limit` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body larger than {limit} bytes")
    if request.content.is_eof():  # the whole body has arrived (most webhooks): no awaiting
        body = request.content.read_nowait()
        if len(body) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _respond(answer: WebhookResponse) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)


def _reject(source: Source | None, error: RequestRejected) -> web.Response:
    if source is not None:
        return _respond(source.reject(error))
    return web.json_response({"ok": False, "error": error.reason}, status=error.status)


async def handle_webhook(request: web.Request) -> web.StreamResponse:
    runtime = request.app[RUNTIME]
    bundle = runtime.bundle  # one bundle for the whole request, even across a reload
    key = request.match_info["source"]
    started = time.perf_counter()
    source = bundle.sources.get(key)
    size = 0
    try:
        if source is None:
            raise NotFound("unknown source")
        body = await read_body(request, bundle.config.server.max_body_bytes)
        size = len(body)
        raw = WebhookRequest(
            method=request.method,
            path=request.rel_url.raw_path,
            query_string=request.rel_url.raw_query_string,
            headers={k.lower(): v for k, v in reversed(list(request.headers.items()))},
            body=body,
            content_type=request.content_type.lower() if body else "",
        )
        now = runtime.clock()
        source.verify(raw, now)
        events = source.parse(raw, now)
        items = [(event, bundle.rules.evaluate(event)) for event in events]
        result = await runtime.store.ingest(items, now)
    except RequestRejected as exc:
        log.warning(
            "webhook.rejected", source=key, reason=exc.reason, status=exc.status, bytes=size
        )
        _count_request(runtime, key, exc.reason, exc.status)
        return _reject(source, exc)
    except StorageError as exc:
        log.error(
            "webhook.rejected", source=key, reason="storage unavailable", status=503, error=str(exc)
        )
        _count_request(runtime, key, "storage unavailable", 503)
        return web.json_response(
            {"ok": False, "error": "storage unavailable, retry later"},
            status=503,
            headers={"Retry-After": "5"},
        )
    assert source is not None
    for event, evaluation in items:
        runtime.metrics.evaluated(key, evaluation)
        if evaluation.outcome is Outcome.IGNORED:
            log.info("event.ignored", source=key, event_id=event.event_id)
        for problem in evaluation.unmapped:
            log.warning(
                "event.unmapped",
                source=key,
                event_id=event.event_id,
                rule=problem.rule,
                reason=problem.reason,
            )
    changes = result.followups
    if changes.scheduled or changes.cancelled:
        for level, name, fields in followups.log_lines(changes, now):
            getattr(log, level)(name, **fields)
    runtime.new_work.stored(result.transitions)
    log.info(
        "webhook.received",
        source=key,
        events=result.stored,
        duplicates=result.duplicates,
        transitions=result.transitions,
        bytes=size,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        **clamped(events),
        **_followups(changes),
    )
    _count_request(runtime, key, "ok", 200)
    return _respond(
        source.acknowledge(IngestSummary(events=result.stored, duplicates=result.duplicates))
    )


def _followups(changes: FollowUpChanges) -> dict[str, int]:
    """The webhook line's follow-up counts, only when there are any."""
    if not (changes.scheduled or changes.cancelled):
        return {}
    counts = {"followups": len(changes.scheduled), "followups_cancelled": len(changes.cancelled)}
    return {k: v for k, v in counts.items() if v}


def _count_request(runtime: Runtime, source: str, reason: str, status: int) -> None:
    runtime.metrics.request(source, reason, status)
