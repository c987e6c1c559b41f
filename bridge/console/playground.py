"""The rule playground: one edited rule tried on events, nothing stored, nothing sent.

The rule text is untrusted input compiled by the same path as config rules
(`RuleConfig`, then `bridge.rules.compile_rules` in the Jinja2 sandbox), so what the
playground accepts, `check` accepts, and it evaluates the same way. Bounds on top:
the text is at most `MAX_RULE_CHARS` and may hold no YAML aliases (an alias bomb
expands to gigabytes) and no `${VAR}` (config files read the environment; a page must
not); the evaluation runs under a deadline (`within`), so `{% for %}` inside
`{% for %}` cannot hold a core. Every mistake is a `PlaygroundError` with messages that
name the key, never a traceback.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any, Final, TypeVar, cast

import yaml
from pydantic import ValidationError

from bridge import validation
from bridge.bundle import Bundle
from bridge.config import LocatedRule, RuleConfig
from bridge.dryrun import DryRunError, build_request, event_report
from bridge.errors import ConfigErrors, RequestRejected
from bridge.models import Evaluation, Event
from bridge.rules import CompiledRule, RuleSet, compile_rules

MAX_RULE_CHARS: Final = 16_000
MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_LAST: Final = 200  # events "run on the last N" takes at most
DEADLINE_S: Final = 3.0  # of one playground run, parsing to the last comparison
PLAYGROUND_FILE: Final = "(playground)"

T = TypeVar("T")


class PlaygroundError(Exception):
    """What is wrong with the playground's input, as lines to show."""

    def __init__(self, messages: Sequence[str]) -> None:
        self.messages = list(messages)
        super().__init__("; ".join(self.messages))


class Overtime(BaseException):
    """The deadline passed. A BaseException, so that no `except Exception` on the way
    (the rule evaluator turns those into "unmapped") can swallow it."""


def within(seconds: float, work: Callable[[], T]) -> T:
    """`work()` in this thread, raising `Overtime` once it has run for `seconds`.

    A trace function checks the time at every line and call of Python code run by
    `work`, which is what compiled templates are. Only this thread is traced (and it
    should be a worker thread, so that the event loop is not held meanwhile). Time spent
    inside one C call (a regular expression backtracking) is not interrupted: the same
    holds for config rules, and the playground is behind the admin token.
    """
    deadline = time.monotonic() + seconds

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if time.monotonic() > deadline:
            raise Overtime
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        return work()
    finally:
        sys.settrace(previous)


class _NoAliases(yaml.SafeLoader):
    """SafeLoader that refuses anchors' aliases (each may repeat a whole subtree)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = cast(Any, self).peek_event().start_mark  # untyped in the stubs
            raise yaml.MarkedYAMLError(
                problem="aliases (*name) are not accepted here", problem_mark=mark
            )
        return super().compose_node(parent, index)


def parse_rule(text: str) -> RuleConfig:
    """One rule written as in a rule file (a mapping; a one-item list is accepted too)."""
    if len(text) > MAX_RULE_CHARS:
        raise PlaygroundError([f"the rule is longer than {MAX_RULE_CHARS} characters"])
    if "${" in text:
        raise PlaygroundError(
            ["${VAR} is not read from the environment here: write the value itself"]
        )
    try:
        data = yaml.load(text, Loader=_NoAliases)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise PlaygroundError([f"YAML: {problem}{where}"]) from None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        raise PlaygroundError(["write one rule: a mapping with name, source, when, lead_id…"])
    try:
        return RuleConfig.model_validate(data)
    except ValidationError as exc:
        raise PlaygroundError(
            [f"{loc or 'rule'}: {message}" for loc, message in validation.errors(exc, data)]
        ) from None


@dataclass(frozen=True, slots=True)
class Candidate:
    """The current rules with the edited rule in place, and the edited rule alone."""

    rules: RuleSet
    rule: CompiledRule
    replaces: bool  # True: it took the place of the running rule of that name


def candidate(bundle: Bundle, rule: RuleConfig) -> Candidate:
    """Compile the current rules with `rule` in place of the one of its name (or last)."""
    located = list(bundle.loaded.rules)
    edited = LocatedRule(rule=rule, file=PLAYGROUND_FILE)
    names = [r.rule.name for r in located]
    replaces = rule.name in names
    if replaces:
        located[names.index(rule.name)] = edited
    else:
        located.append(edited)
    loaded = bundle.loaded
    try:
        rules = compile_rules(
            located,
            lookups=loaded.lookups,
            sources=bundle.sources.keys(),
            default_account_id=loaded.config.voxys.account_id,
        )
    except ConfigErrors as exc:
        raise PlaygroundError([_message(e.key, e.message) for e in exc.errors]) from None
    compiled = next(r for r in rules.rules if r.name == rule.name)
    return Candidate(rules, compiled, replaces)


def _message(key: str | None, message: str) -> str:
    return f"{key}: {message}" if key else message


def pasted_events(bundle: Bundle, source_key: str, body: bytes, content_type: str) -> list[Event]:
    """The events a source makes of a pasted payload, as `dry-run` does (unverified)."""
    source = bundle.sources.get(source_key)
    if source is None:
        raise PlaygroundError([f"unknown source {source_key!r}"])
    if not body.strip():
        raise PlaygroundError(["paste a payload, or pick a stored event"])
    if len(body) > MAX_PAYLOAD_BYTES:
        raise PlaygroundError([f"the payload is larger than {MAX_PAYLOAD_BYTES} bytes"])
    try:
        request = build_request(source_key, body, {"content-type": content_type})
        events = source.parse(request, time.time())
    except DryRunError as exc:
        raise PlaygroundError([str(exc)]) from None
    except RequestRejected as exc:
        raise PlaygroundError(
            [f"source {source_key!r} would answer HTTP {exc.status}: {exc.reason}"]
        ) from None
    if not events:
        raise PlaygroundError(["the payload holds no events"])
    return events


@dataclass(frozen=True, slots=True)
class Trial:
    """What the edited rule, and the rules with it, make of one event."""

    event: Event
    alone: dict[str, Any]  # dry-run's report for the edited rule by itself
    now: dict[str, Any]  # ... for the running rules
    edited: dict[str, Any]  # ... for the running rules with the edit
    changed: bool


def verdict(evaluation: Evaluation) -> tuple[Any, ...]:
    """What counts as the outcome of an event: outcome and every request, exactly."""
    requests = tuple(
        (t.account_id, t.lead_id, str(t.status), t.notes) for t in evaluation.transitions
    )
    return (str(evaluation.outcome), requests)


def trial(event: Event, current: RuleSet, edit: Candidate, base_url: str) -> Trial:
    alone_rules = RuleSet([edit.rule], current.default_account_id)
    now, edited = current.evaluate(event), edit.rules.evaluate(event)
    tried = len(edit.rules.for_source(event.source))
    return Trial(
        event=event,
        alone=event_report(event, alone_rules.evaluate(event), base_url, 1),
        now=event_report(event, now, base_url, len(current.for_source(event.source))),
        edited=event_report(event, edited, base_url, tried),
        changed=verdict(now) != verdict(edited),
    )


@dataclass(frozen=True, slots=True)
class Change:
    """One stored event whose outcome the edit would change."""

    pk: int
    event: Event
    before: dict[str, Any]
    after: dict[str, Any]

    @property
    def leads(self) -> list[str]:
        """`account/lead` of every request before or after, in order, once each."""
        found = [
            f"{r['account_id']}/{r['lead_id']}"
            for r in (*self.before["requests"], *self.after["requests"])
        ]
        return list(dict.fromkeys(found))


def changes(
    stored: Iterable[tuple[int, Event]], current: RuleSet, edit: Candidate, base_url: str
) -> list[Change]:
    """The events whose outcome or requests differ between the running and edited rules."""
    out = []
    for pk, event in stored:
        now, edited = current.evaluate(event), edit.rules.evaluate(event)
        if verdict(now) != verdict(edited):
            before = event_report(event, now, base_url, len(current.for_source(event.source)))
            after = event_report(event, edited, base_url, len(edit.rules.for_source(event.source)))
            out.append(Change(pk, event, before, after))
    return out
