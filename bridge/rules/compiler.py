"""Compiling rules: every template parsed once in the sandbox, every mistake found at load.

`compile_rules` checks names, lookups, ids, statuses and sources, and reports every
mistake at once with the file, rule and key, so `voxys-bridge check` names them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from jinja2 import Template, TemplateSyntaxError, meta, nodes
from jinja2.parser import Parser

from bridge.config import FollowUpConfig, LocatedRule, RuleConfig, parse_duration
from bridge.errors import ConfigError, ConfigErrors
from bridge.rules.compiled import (
    MAX_RENDER,
    STATUSES,
    CompiledFollowUp,
    CompiledRule,
    Condition,
    Value,
    parse_id,
)
from bridge.rules.evaluator import RuleSet
from bridge.rules.paths import MISSING, comparison, lookup, output_path, plain_path
from bridge.rules.sandbox import rule_environment

_FALSE_TEXT = frozenset({"", "false", "0", "none", "no"})
_SCOPE = frozenset(
    {"event", "headers", "source", "received_at", "occurred_at", "event_id", "lookup"}
)
_GLOBALS = frozenset({"range", "dict", "true", "false", "none", "True", "False", "None"})


def _shortcut(
    node: nodes.Node, slow: Callable[[Mapping[str, Any]], bool]
) -> Callable[[Mapping[str, Any]], bool]:
    """`slow`, or a test that walks the payload for `path == constant`, `path != constant`
    and `path`, falling back to `slow` when the path is not all dict keys (paths.py)."""
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


def _is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


class _Compiler:
    """Compiles one rule set, collecting every mistake instead of stopping at the first."""

    def __init__(self, lookups: Mapping[str, Mapping[str, str]], sources: Iterable[str]) -> None:
        self.lookups = lookups
        self.source_keys = set(sources)
        self.env = rule_environment(lookups)
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
            if isinstance(table, nodes.Const) and table.value not in self.lookups:
                self.error(f"unknown lookup table {table.value!r}", key)

    def expression(self, source: str, key: str) -> Condition | None:
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

        return Condition(key, _shortcut(node, slow))

    def template(self, source: str, key: str) -> Value | None:
        try:
            ast = self.env.parse(source)
            compiled = _fast(self.env.from_string(source))
        except TemplateSyntaxError as exc:
            self.error(f"syntax error: {exc.message} (line {exc.lineno})", key)
            return None
        self._check_ast(ast, meta.find_undeclared_variables(ast), key)
        return Value(None, compiled, output_path(ast))

    def condition(self, source: str, key: str) -> Condition | None:
        if not _is_template(source):
            return self.expression(source, key)
        value = self.template(source, key)
        if value is None:
            return None
        return Condition(
            key, lambda ctx: value.render(ctx, MAX_RENDER).strip().lower() not in _FALSE_TEXT
        )

    def value(self, raw: str | int, key: str) -> Value | None:
        if isinstance(raw, str) and _is_template(raw):
            return self.template(raw, key)
        text = str(raw)
        if key in ("lead_id", "account_id") and parse_id(text) is None:
            self.error(f"{text!r} is not a positive integer", key)
        if key.rpartition(".")[2] == "status" and text not in STATUSES:
            self.error(f"{text!r} is not one of {', '.join(sorted(STATUSES))}", key)
        return Value(text, None)

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
        after: float | Value | None = None
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


def compile_rules(
    rules: Iterable[LocatedRule],
    *,
    lookups: Mapping[str, Mapping[str, str]],
    sources: Iterable[str],
    default_account_id: int | None,
) -> RuleSet:
    """Compile every rule in order; raise ConfigErrors listing every mistake found.

    `sources` are the configured source keys a rule may name; `lookups` the tables
    `lookup()` reads; `default_account_id` the account of a rule that names none.
    """
    compiler = _Compiler(lookups, sources)
    seen: dict[str, str] = {}
    compiled: list[CompiledRule] = []
    for located in rules:
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
    return RuleSet(compiled, default_account_id)
