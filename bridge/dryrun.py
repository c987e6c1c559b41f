"""`voxys-bridge dry-run`: run the rules on a payload file and show what would be sent.

The payload is parsed by the configured source exactly as a received request would be,
except that `verify` is skipped (a file has no valid signature), so no secret, token or
store setting is read: a `${VAR}` under one of them may be unset. Nothing is stored and
Voxys is never called: the output is the request each transition would become, and the
follow-up each would schedule with its due time.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from bridge import followups
from bridge.bundle import Bundle
from bridge.errors import RequestRejected
from bridge.models import Evaluation, Event, FollowUp, Transition
from bridge.sources.base import WebhookRequest

# What a provider sends for a JSON payload file, unless a --header says otherwise.
DEFAULT_CONTENT_TYPE = "application/json"


class DryRunError(Exception):
    """A mistake in the command's input: printed as one line, exit status 2."""


def run(
    bundle: Bundle,
    source_key: str,
    payload_path: str,
    header_args: Sequence[str],
    as_json: bool,
    out: TextIO,
    *,
    err: TextIO | None = None,
    clock: Callable[[], float] = time.time,
) -> int:
    """Print what the rules make of one payload file; 0 when it ran, 2 on bad input.

    `bundle` is loaded for a dry run (`load_bundle(..., for_dry_run=True)`)."""
    err = sys.stderr if err is None else err
    try:
        source = bundle.sources.get(source_key)
        if source is None:
            known = ", ".join(sorted(bundle.sources)) or "none"
            raise DryRunError(f"unknown source {source_key!r} (configured sources: {known})")
        request = build_request(source_key, read_payload(payload_path), parse_headers(header_args))
        try:
            events = source.parse(request, clock())
        except RequestRejected as exc:
            raise DryRunError(
                f"source {source_key!r} would reject {payload_path} "
                f"with HTTP {exc.status}: {exc.reason}"
            ) from exc
    except DryRunError as exc:
        print(f"error: {exc}", file=err)
        return 2
    base_url = bundle.config.voxys.base_url
    tried = sum(1 for rule in bundle.rules.rules if source_key in rule.sources)
    now = clock()
    reports = [
        event_report(event, bundle.rules.evaluate(event), base_url, tried, now) for event in events
    ]
    if as_json:
        json.dump(reports, out, indent=2)
        out.write("\n")
    else:
        write_text(reports, out)
    return 0


def parse_headers(header_args: Sequence[str]) -> dict[str, str]:
    """`K: V` arguments as a header mapping with lower-cased names (the first value wins)."""
    headers: dict[str, str] = {}
    for arg in header_args:
        name, colon, value = arg.partition(":")
        if not colon or not name.strip() or any(c.isspace() for c in name.strip()):
            raise DryRunError(f"--header {arg!r} is not of the form 'Name: value'")
        headers.setdefault(name.strip().lower(), value.strip())
    return headers


def read_payload(path: str) -> bytes:
    """The payload file's bytes; a clear error when it cannot be read."""
    try:
        body = Path(path).read_bytes()
    except OSError as exc:
        raise DryRunError(f"cannot read payload file {path}: {exc.strerror}") from exc
    if not body.strip():
        raise DryRunError(f"payload file {path} is empty")
    return body


def build_request(source_key: str, body: bytes, headers: dict[str, str]) -> WebhookRequest:
    """The request the source would receive at POST /webhooks/<key> with this body."""
    headers = dict(headers)
    headers.setdefault("content-type", DEFAULT_CONTENT_TYPE)
    content_type = headers["content-type"].split(";", 1)[0].strip().lower()
    if content_type == DEFAULT_CONTENT_TYPE or content_type.endswith("+json"):
        _check_json(body)
    return WebhookRequest(
        method="POST",
        path=f"/webhooks/{source_key}",
        query_string="",
        headers=headers,
        body=body,
        content_type=content_type if body else "",
    )


def _check_json(body: bytes) -> None:
    # The source would only say "malformed JSON"; the author needs the line and column.
    try:
        json.loads(body)
    except UnicodeDecodeError as exc:
        raise DryRunError(f"payload is not UTF-8 text: {exc.reason}") from exc
    except json.JSONDecodeError as exc:
        raise DryRunError(
            f"payload is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from exc


def voxys_request(
    transition: Transition, base_url: str, occurred_at: float = 0.0, now: float = 0.0
) -> dict[str, Any]:
    """The PATCH a transition becomes: method, path, URL and JSON body; and the follow-up
    it would schedule (`occurred_at`: its event's, `now`: the time of the dry run)."""
    path = f"/api/v1/accounts/{transition.account_id}/leads/{transition.lead_id}/status"
    body: dict[str, Any] = {"status": str(transition.status)}
    if transition.notes:
        body["notes"] = transition.notes
    follow_up = transition.follow_up
    return {
        "rule": transition.rule,
        "account_id": transition.account_id,
        "lead_id": transition.lead_id,
        "status": str(transition.status),
        "method": "PATCH",
        "path": path,
        "url": base_url + path,
        "body": body,
        "follow_up": None if follow_up is None else _follow_up(follow_up, occurred_at, now),
    }


def _follow_up(follow_up: FollowUp, occurred_at: float, now: float) -> dict[str, Any]:
    body: dict[str, Any] = {"status": str(follow_up.status)}
    if follow_up.notes:
        body["notes"] = follow_up.notes
    return {
        "status": str(follow_up.status),
        "body": body,
        "due_at": follow_up.due_at,
        "due_iso": followups.iso(follow_up.due_at),
        "after_event_s": follow_up.due_at - occurred_at,
        "due_in_s": max(0.0, follow_up.due_at - now),
        "fires_at_once": follow_up.due_at <= now,  # the due time has passed already
    }


def event_report(
    event: Event, evaluation: Evaluation, base_url: str, tried: int, now: float = 0.0
) -> dict[str, Any]:
    """One event's verdict as plain data: the JSON output, and what the text output shows."""
    why: str | None = None
    if not evaluation.transitions:
        if evaluation.unmapped:
            first = evaluation.unmapped[0]
            why = f"rule {first.rule!r} matched but {first.reason}"
        else:
            why = f"no rule matched ({tried} rule(s) for source {event.source!r})"
    return {
        "source": event.source,
        "event_id": event.event_id,
        "outcome": str(evaluation.outcome),
        "rule": evaluation.rule,
        "matched_rules": list(evaluation.matched_rules),
        "requests": [
            voxys_request(t, base_url, event.occurred_at, now) for t in evaluation.transitions
        ],
        "unmapped": [{"rule": u.rule, "reason": u.reason} for u in evaluation.unmapped],
        "why_nothing": why,
    }


def write_text(reports: list[dict[str, Any]], out: TextIO) -> None:
    """The human-readable form: one block per event."""
    if not reports:
        print("the payload holds no events", file=out)
    for index, report in enumerate(reports, 1):
        if index > 1:
            print(file=out)
        print(f"event {index}/{len(reports)}", file=out)
        print(f"  source    {report['source']}", file=out)
        print(f"  event_id  {report['event_id']}", file=out)
        print(f"  outcome   {report['outcome']}", file=out)
        print(f"  rule      {report['rule'] or '-'}", file=out)
        for request in report["requests"]:
            print(f"  request   {request['method']} {request['path']}", file=out)
            print(f"            {json.dumps(request['body'], ensure_ascii=False)}", file=out)
            if request["follow_up"]:
                _write_follow_up(request, out)
        for problem in report["unmapped"]:
            if report["requests"]:  # a later rule failed while an earlier one matched
                print(f"  unmapped  rule {problem['rule']!r}: {problem['reason']}", file=out)
        if report["why_nothing"]:
            print(f"  no request: {report['why_nothing']}", file=out)


def _write_follow_up(request: dict[str, Any], out: TextIO) -> None:
    follow_up = request["follow_up"]
    after = followups.span(follow_up["after_event_s"])
    when = (
        "past: fires at once"
        if follow_up["fires_at_once"]
        else f"in {followups.span(follow_up['due_in_s'])} from now"
    )
    print(f"  follow-up {request['method']} {request['path']}", file=out)
    print(f"            {json.dumps(follow_up['body'], ensure_ascii=False)}", file=out)
    print(f"            at {follow_up['due_iso']}, {after} after the event ({when}),", file=out)
    lead = f"{request['account_id']}/{request['lead_id']}"
    print(f"            unless a newer event for lead {lead} is stored first", file=out)
