"""Rules: compile YAML rules once in a Jinja2 sandbox, then turn events into transitions.

Semantics follow issue 3. `compile_rules` checks everything it can at load and reports
every mistake at once; `RuleSet.evaluate` never raises: a rule that fails on an event
makes it unmapped with a short reason, so the event stays stored and replayable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from bridge import followups
from bridge.config import FollowUpConfig, LoadedConfig, RuleConfig, parse_duration
from bridge.errors import ConfigError, ConfigErrors
from bridge.models import (
    Evaluation,
    Event,
    FollowUp,
    LeadStatus,
    Outcome,
    Transition,
    Unmapped,
)
from bridge.rule_paths import (
    MISSING,
    Path,
    comparison,
    lookup,
    output_path,
    plain_path,
    rendered,
)

MAX_RENDER = 10_000  # characters any template may render before the rule is unmapped
MAX_NOTES = 2_000  # notes are truncated to this many characters
MAX_REASON_VALUE = 40  # characters of a rendered value quoted in an unmapped reason
MAX_ID = 2**63 - 1
MAX_REPEAT = 100_000  # largest sequence `*` may build, and bits `**` may produce

# Plain decimal, no sign, point, exponent, space or path characters (issue 3).
_ID = re.compile(r"[1-9][0-9]{0,18}")
_STATUSES = frozenset(s.value for s in LeadStatus)
_FALSE_TEXT = frozenset({"", "false", "0", "none", "no"})
_SCOPE = frozenset(
    {"event", "headers", "source", "received_at", "occurred_at", "event_id", "lookup"}
)
_GLOBALS = frozenset({"range", "dict", "true", "false", "none", "True", "False", "None"})


class _TooLong(Exception):
    pass


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with `*` and `**` bounded so payload data cannot exhaust memory."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(n, int)
                if sized and len(seq) * n > MAX_REPEAT:
                    raise OverflowError("repetition too large")
            return left * right
        ints = isinstance(left, int) and isinstance(right, int) and right > 0
        if ints and max(left.bit_length(), 1) * right > MAX_REPEAT:
            raise OverflowError("power too large")
        return left**right

    def getattr(self, obj: Any, attribute: str) -> Any:
        # JSON fields win over dict methods, so `event.data.object.items` is the field.
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def _regex_replace(value: Any, pattern: str, repl: str, count: int = 0) -> str:
    """`re.sub(pattern, repl, value)`; `value` is converted to a string."""
    return re.sub(pattern, repl, str(value), count=count)


def _match(value: Any, pattern: str) -> bool:
    """True when `pattern` is found anywhere in `value` (re.search); anchor with ^ and $."""
    return re.search(pattern, str(value)) is not None


def _fromtimestamp(value: Any) -> datetime:
    """POSIX seconds (number or numeric string) to an aware UTC datetime."""
    return datetime.fromtimestamp(float(value), tz=UTC)


def _date(value: Any, fmt: str = "%Y-%m-%d %H:%M:%S UTC") -> str:
    """Format a datetime, or POSIX seconds taken as UTC, with strftime."""
    moment = value if isinstance(value, datetime) else _fromtimestamp(value)
    return moment.strftime(fmt)


def _finalize(value: Any) -> Any:
    # JSON null renders empty, like a missing field, not as "None".
    return "" if value is None else value


def _environment(lookups: Mapping[str, Mapping[str, str]]) -> _Environment:
    env = _Environment(undefined=ChainableUndefined, autoescape=False, finalize=_finalize)

    def lookup(table: Any, key: Any, default: Any = None) -> Any:
        """`lookups[table][key]`, keys compared as strings; `default` when absent."""
        if str(table) not in lookups:
            raise LookupError(f"unknown lookup table {str(table)!r}")
        return lookups[str(table)].get(str(key), default)

    # Only what rules need: no cycler, joiner, namespace or lipsum.
    env.globals = {"range": env.globals["range"], "dict": dict, "lookup": lookup}
    env.filters.update(
        regex_replace=_regex_replace, fromtimestamp=_fromtimestamp, strftime=_date, date=_date
    )
    env.tests["match"] = _match
    return env


@dataclass(frozen=True, slots=True)
class _Value:
    """A rule value: a constant string or a compiled template (with its path if it is one)."""

    constant: str | None
    template: Template | None
    path: Path | None = None  # the template is exactly `{{ path }}`

    def render(self, ctx: Mapping[str, Any], limit: int, *, truncate: bool = False) -> str:
        if self.template is None:
            return self.constant or ""
        if self.path is not None and (found := lookup(ctx, self.path)) is not MISSING:
            text = rendered(found)
            if len(text) > limit and not truncate:
                raise _TooLong(f"rendered more than {limit} characters")
            return text
        out: list[str] = []
        size = 0
        for chunk in self.template.generate(ctx):
            out.append(chunk)
            size += len(chunk)
            if size > limit:
                if truncate:
                    break
                raise _TooLong(f"rendered more than {limit} characters")
        return "".join(out)


@dataclass(frozen=True, slots=True)
class _Condition:
    """One `when` entry: an expression, or a `{{ }}` template whose text is its truth."""

    key: str
    evaluate: Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class CompiledFollowUp:
    """A rule's follow-up: `after` is seconds after the event, or a template of a time."""

    after: float | _Value
    status: _Value
    notes: _Value | None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to run against events."""

    name: str
    sources: tuple[str, ...]
    file: str
    continue_: bool
    when: tuple[_Condition, ...]
    account_id: _Value | None
    lead_id: _Value
    status: _Value
    notes: _Value | None
    description: str | None = None
    follow_up: CompiledFollowUp | None = None


def _shortcut(
    node: nodes.Node, slow: Callable[[Mapping[str, Any]], bool]
) -> Callable[[Mapping[str, Any]], bool]:
    """`slow`, or a test that walks the payload for `path == constant`, `path != constant`
    and `path`, falling back to `slow` when the path is not all dict keys (rule_paths)."""
    test = comparison(node)
    if test is not None:
        path, equal, constant = test

        def compare(ctx: Mapping[str, Any]) -> bool:
            value = lookup(ctx, path)
            if value is MISSING:
                return slow(ctx)
            return bool(value == constant) if equal else bool(value != constant)

        return compare
    truth_of = plain_path(node)
    if truth_of is not None:

        def truth(ctx: Mapping[str, Any]) -> bool:
            value = lookup(ctx, truth_of)
            return slow(ctx) if value is MISSING else bool(value)

        return truth
    return slow


def _fast(template: Template) -> Template:
    # Jinja keeps template globals in a ChainMap that every render copies; a plain
    # dict copy is several times cheaper. The sandbox globals never change after load.
    template.globals = dict(template.globals)
    return template


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _quote(value: str) -> str:
    if len(value) > MAX_REASON_VALUE:
        value = value[:MAX_REASON_VALUE] + "..."
    return repr(value)


def _parse_id(text: str) -> int | None:
    if _ID.fullmatch(text) is None:
        return None
    number = int(text)
    return number if number <= MAX_ID else None


def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


class _Compiler:
    """Compiles one rule set, collecting every mistake instead of stopping at the first."""

    def __init__(self, loaded: LoadedConfig, source_keys: Iterable[str]) -> None:
        self.loaded = loaded
        self.source_keys = set(source_keys)
        self.env = _environment(loaded.lookups)
        self.errors: list[ConfigError] = []
        self.file = ""
        self.rule = ""

    def error(self, message: str, key: str | None) -> None:
        self.errors.append(ConfigError(message, file=self.file, rule=self.rule, key=key))

    def _check_ast(self, node: nodes.Node, undeclared: Iterable[str], key: str) -> None:
        # `self` is the template's own reference, which find_undeclared_variables omits.
        selfs = {n.name for n in node.find_all(nodes.Name) if n.name == "self"}
        for name in sorted((set(undeclared) | selfs) - _SCOPE - _GLOBALS):
            self.error(f"unknown name {name!r}", key)
        # The sandbox refuses these at render too; refusing them here says so at `check`.
        private = [n.attr for n in node.find_all(nodes.Getattr) if n.attr.startswith("_")]
        private += [
            str(n.arg.value)
            for n in node.find_all(nodes.Getitem)
            if isinstance(n.arg, nodes.Const) and str(n.arg.value).startswith("_")
        ]
        for attr in sorted(set(private)):
            self.error(f"attributes starting with '_' are not allowed ({attr!r})", key)
        if any(True for _ in node.find_all((nodes.Import, nodes.FromImport, nodes.Include))):
            self.error("templates cannot import or include other templates", key)
        if any(True for _ in node.find_all(nodes.Extends)):
            self.error("templates cannot extend other templates", key)
        calls = [node] if isinstance(node, nodes.Call) else []
        for call in [*calls, *node.find_all(nodes.Call)]:
            if not (isinstance(call, nodes.Call) and isinstance(call.node, nodes.Name)):
                continue
            if call.node.name != "lookup":
                continue
            table: nodes.Expr | None = call.args[0] if call.args else None
            table = next((k.value for k in call.kwargs if k.key == "table"), table)
            if isinstance(table, nodes.Const) and table.value not in self.loaded.lookups:
                self.error(f"unknown lookup table {table.value!r}", key)

    def expression(self, source: str, key: str) -> _Condition | None:
        try:
            parser = Parser(self.env, source, state="variable")
            node = parser.parse_expression()
            if not parser.stream.eos:
                raise TemplateSyntaxError("unexpected text after the expression", 1)
            # `{% if expr %}1{% endif %}`, built from the parsed node rather than by
            # pasting text, so Jinja tests the truth and rendering stays public API.
            body = [nodes.Output([nodes.TemplateData("1", lineno=1)], lineno=1)]
            test = nodes.If(node, body, [], [], lineno=1)
            ast = nodes.Template([test], lineno=1)
            ast.set_environment(self.env)
            compiled = _fast(self.env.from_string(ast))
        except TemplateSyntaxError as exc:
            self.error(f"syntax error: {exc.message}", key)
            return None
        loads = {n.name for n in node.find_all(nodes.Name) if n.ctx == "load"}
        if isinstance(node, nodes.Name):
            loads.add(node.name)
        self._check_ast(node, loads, key)

        def slow(ctx: Mapping[str, Any]) -> bool:
            return compiled.render(ctx) == "1"

        return _Condition(key, _shortcut(node, slow))

    def template(self, source: str, key: str) -> _Value | None:
        try:
            ast = self.env.parse(source)
            compiled = _fast(self.env.from_string(source))
        except TemplateSyntaxError as exc:
            self.error(f"syntax error: {exc.message} (line {exc.lineno})", key)
            return None
        self._check_ast(ast, meta.find_undeclared_variables(ast), key)
        return _Value(None, compiled, output_path(ast))

    def condition(self, source: str, key: str) -> _Condition | None:
        if not _is_template(source):
            return self.expression(source, key)
        value = self.template(source, key)
        if value is None:
            return None
        return _Condition(
            key, lambda ctx: value.render(ctx, MAX_RENDER).strip().lower() not in _FALSE_TEXT
        )

    def value(self, raw: str | int, key: str) -> _Value | None:
        if isinstance(raw, str) and _is_template(raw):
            return self.template(raw, key)
        text = str(raw)
        if key in ("lead_id", "account_id") and _parse_id(text) is None:
            self.error(f"{text!r} is not a positive integer", key)
        if key.rpartition(".")[2] == "status" and text not in _STATUSES:
            self.error(f"{text!r} is not one of {', '.join(sorted(_STATUSES))}", key)
        return _Value(text, None)

    def rule_(self, rule: RuleConfig, file: str) -> CompiledRule | None:
        self.file, self.rule = file, rule.name
        before = len(self.errors)
        sources = (rule.source,) if isinstance(rule.source, str) else tuple(rule.source)
        if not sources:
            self.error("names no source", "source")
        for i, src in enumerate(sources):
            if src not in self.source_keys:
                key = "source" if isinstance(rule.source, str) else f"source[{i}]"
                known = ", ".join(sorted(self.source_keys)) or "none configured"
                self.error(f"unknown source {src!r} (sources: {known})", key)
        whens = [rule.when] if isinstance(rule.when, str) else list(rule.when)
        conditions = [
            self.condition(w, "when" if isinstance(rule.when, str) else f"when[{i}]")
            for i, w in enumerate(whens)
        ]
        account = None if rule.account_id is None else self.value(rule.account_id, "account_id")
        lead = self.value(rule.lead_id, "lead_id")
        status = self.value(rule.status, "status")
        notes = None if rule.notes is None else self.value(rule.notes, "notes")
        follow_up = None if rule.follow_up is None else self.follow_up(rule.follow_up)
        if len(self.errors) > before or lead is None or status is None:
            return None
        return CompiledRule(
            name=rule.name,
            sources=sources,
            file=file,
            continue_=rule.continue_,
            when=tuple(c for c in conditions if c is not None),
            account_id=account,
            lead_id=lead,
            status=status,
            notes=notes,
            description=rule.description,
            follow_up=follow_up,
        )

    def follow_up(self, config: FollowUpConfig) -> CompiledFollowUp | None:
        after: float | _Value | None = None
        raw = config.after
        if isinstance(raw, str) and _is_template(raw):
            after = self.template(raw, "follow_up.after")
        else:
            try:
                after = parse_duration(raw)
            except ValueError as exc:
                self.error(f"{exc}, or a template rendering a time", "follow_up.after")
        status = self.value(config.status, "follow_up.status")
        notes = None if config.notes is None else self.value(config.notes, "follow_up.notes")
        if after is None or status is None:
            return None
        return CompiledFollowUp(after, status, notes)


def compile_rules(loaded: LoadedConfig, source_keys: Iterable[str]) -> RuleSet:
    """Compile every rule; raise ConfigErrors listing every mistake found."""
    compiler = _Compiler(loaded, source_keys)
    seen: dict[str, str] = {}
    compiled: list[CompiledRule] = []
    for located in loaded.rules:
        name = located.rule.name
        if name in seen:
            compiler.file, compiler.rule = located.file, name
            compiler.error(f"duplicate rule name (first defined in {seen[name]})", "name")
        else:
            seen[name] = located.file
        rule = compiler.rule_(located.rule, located.file)
        if rule is not None:
            compiled.append(rule)
    if compiler.errors:
        raise ConfigErrors(compiler.errors)
    return RuleSet(compiled, loaded.config.voxys.account_id)


class _Unmappable(Exception):
    """A matched rule cannot produce a valid transition; the message is the reason."""


@dataclass(frozen=True)
class RuleSet:
    """Compiled rules in evaluation order, with the default account."""

    rules: list[CompiledRule]
    default_account_id: int | None = None

    def __post_init__(self) -> None:
        by_source: dict[str, list[CompiledRule]] = {}
        for rule in self.rules:
            for src in dict.fromkeys(rule.sources):
                by_source.setdefault(src, []).append(rule)
        object.__setattr__(self, "_by_source", {k: tuple(v) for k, v in by_source.items()})

    def for_source(self, source: str) -> tuple[CompiledRule, ...]:
        """The rules an event from `source` is tried against, in order."""
        by_source: dict[str, tuple[CompiledRule, ...]] = self.__dict__["_by_source"]
        return by_source.get(source, ())

    def evaluate(self, event: Event) -> Evaluation:
        """Run the rules on one event; never raises."""
        ctx = {
            "event": event.payload,
            "headers": dict(event.headers),
            "source": event.source,
            "received_at": event.received_at,
            "occurred_at": event.occurred_at,
            "event_id": event.event_id,
        }
        transitions: list[Transition] = []
        unmapped: list[Unmapped] = []
        matched: list[str] = []
        for rule in self.for_source(event.source):
            try:
                if not _holds(rule, ctx):
                    continue
                transition = self._transition(rule, ctx)
                if rule.follow_up is not None:
                    # A follow-up that cannot be made is unmapped on its own: the rule's
                    # transition still goes.
                    try:
                        follow_up = _follow_up(rule.follow_up, ctx, event.occurred_at)
                        transition = replace(transition, follow_up=follow_up)
                    except _Unmappable as exc:
                        unmapped.append(Unmapped(rule.name, str(exc)))
                transitions.append(transition)
                matched.append(rule.name)
            except _Unmappable as exc:
                unmapped.append(Unmapped(rule.name, str(exc)))
            # A rule that fails on one event must not lose it: the event is stored as
            # unmapped with the reason and can be replayed once the rule is fixed.
            except Exception as exc:
                unmapped.append(Unmapped(rule.name, _short(exc)))
            if not rule.continue_:
                break
        if transitions:
            outcome = Outcome.MATCHED
        elif unmapped:
            outcome = Outcome.UNMAPPED
        else:
            outcome = Outcome.IGNORED
        return Evaluation(outcome, tuple(transitions), tuple(unmapped), tuple(matched))

    def _transition(self, rule: CompiledRule, ctx: Mapping[str, Any]) -> Transition:
        if rule.account_id is None:
            if self.default_account_id is None:
                raise _Unmappable("no account_id: the rule sets none and voxys.account_id is unset")
            account_id = self.default_account_id
        else:
            account_id = _render_id(rule.account_id, ctx, "account_id")
        lead_id = _render_id(rule.lead_id, ctx, "lead_id")
        status = _render(rule.status, ctx, "status").strip()
        if status not in _STATUSES:
            raise _Unmappable(
                f"status rendered {_quote(status)}, not one of open, won, lost, snoozed"
            )
        notes = None
        if rule.notes is not None:
            notes = _render(rule.notes, ctx, "notes", MAX_NOTES, truncate=True)
            notes = notes.strip()[:MAX_NOTES] or None
        return Transition(rule.name, account_id, lead_id, LeadStatus(status), notes)


def _follow_up(config: CompiledFollowUp, ctx: Mapping[str, Any], occurred_at: float) -> FollowUp:
    if isinstance(config.after, float):
        due_at = followups.due_after(occurred_at, config.after)
    else:
        text = _render(config.after, ctx, "follow_up.after")
        try:
            due_at = followups.due_at(occurred_at, followups.parse_time(text))
        except (ValueError, OverflowError, OSError) as exc:
            raise _Unmappable(f"follow_up.after rendered {_quote(text.strip())}: {exc}") from exc
    status = _render(config.status, ctx, "follow_up.status").strip()
    if status not in _STATUSES:
        raise _Unmappable(
            f"follow_up.status rendered {_quote(status)}, not one of open, won, lost, snoozed"
        )
    notes = None
    if config.notes is not None:
        notes = _render(config.notes, ctx, "follow_up.notes", MAX_NOTES, truncate=True)
        notes = notes.strip()[:MAX_NOTES] or None
    return FollowUp(LeadStatus(status), notes, due_at)


def _holds(rule: CompiledRule, ctx: Mapping[str, Any]) -> bool:
    for condition in rule.when:
        try:
            if not condition.evaluate(ctx):
                return False
        except _TooLong as exc:
            raise _Unmappable(f"{condition.key} {exc}") from exc
        except Exception as exc:  # reported as unmapped, see evaluate
            raise _Unmappable(f"{condition.key} failed: {_short(exc)}") from exc
    return True


def _render(
    value: _Value,
    ctx: Mapping[str, Any],
    key: str,
    limit: int = MAX_RENDER,
    *,
    truncate: bool = False,
) -> str:
    try:
        return value.render(ctx, limit, truncate=truncate)
    except _TooLong as exc:
        raise _Unmappable(f"{key} {exc}") from exc
    except Exception as exc:  # reported as unmapped, see evaluate
        raise _Unmappable(f"{key} failed: {_short(exc)}") from exc


def _render_id(value: _Value, ctx: Mapping[str, Any], key: str) -> int:
    text = _render(value, ctx, key)
    number = _parse_id(text)
    if number is None:
        raise _Unmappable(f"{key} rendered {_quote(text)}, not a positive integer")
    return number
