"""Plain paths in rules (bridge/rules/paths.py): wherever the walk finds a value, it gives
exactly what the rules' Jinja sandbox gives; everywhere else it steps aside."""

from __future__ import annotations

from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from jinja2 import nodes

from bridge.rules.paths import MISSING, comparison, lookup, output_path, plain_path, rendered
from bridge.rules.sandbox import rule_environment

ENV = rule_environment({})
# Field names a path can spell (no Jinja keywords); `items` and `keys` are dict methods too.
NAMES = ["type", "data", "object", "id", "items", "keys", "status", "a", "b"]

json_leaf = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(NAMES), inner),
    max_leaves=12,
)
paths = st.lists(st.sampled_from(NAMES), min_size=0, max_size=4)
scopes = st.sampled_from(["event", "headers", "source", "lookup", "range"])


def context(payload: Any) -> dict[str, Any]:
    return {"event": payload, "headers": {"type": "h"}, "source": "stripe", "event_id": "e1"}


@settings(max_examples=400)
@given(payload=json_value, scope=scopes, attrs=paths)
def test_a_found_path_renders_what_jinja_renders(
    payload: Any, scope: str, attrs: list[str]
) -> None:
    source = "{{ " + ".".join([scope, *attrs]) + " }}"
    ast = ENV.parse(source)
    path = output_path(ast)
    assert path == (scope, *attrs)
    found = lookup(context(payload), path)
    if found is not MISSING:
        assert rendered(found) == ENV.from_string(source).render(context(payload))


@settings(max_examples=400)
@given(payload=json_value, attrs=paths, constant=json_leaf, equal=st.booleans())
def test_a_found_comparison_decides_as_jinja_does(
    payload: Any, attrs: list[str], constant: Any, equal: bool
) -> None:
    expression = f"{'.'.join(['event', *attrs])} {'==' if equal else '!='} {constant!r}"
    node = ENV.parse("{{ " + expression + " }}").body[0].nodes[0]  # type: ignore[attr-defined]
    test = comparison(node)
    assume(test is not None)  # `-1` parses as a negation, not a constant: Jinja decides those
    assert test is not None
    path, is_equal, value = test
    assert (path, is_equal) == (("event", *attrs), equal)
    found = lookup(context(payload), path)
    if found is not MISSING:
        ours = bool(found == value) if is_equal else bool(found != value)
        jinja = ENV.from_string("{% if " + expression + " %}1{% endif %}").render(context(payload))
        assert ours == (jinja == "1")


def test_a_step_that_is_not_a_dict_key_steps_aside() -> None:
    ctx = context({"data": {"list": [1, 2]}, "text": "abc"})
    assert lookup(ctx, ("event", "data", "missing")) is MISSING
    assert lookup(ctx, ("event", "text", "upper")) is MISSING  # a str method: Jinja decides
    assert lookup(ctx, ("lookup",)) is MISSING  # a global, not a field
    assert lookup(ctx, ("event", "data", "list")) == [1, 2]


def test_only_a_lone_field_output_or_a_field_compared_with_a_constant_is_a_path() -> None:
    assert output_path(ENV.parse("{{ event.a | upper }}")) is None
    assert output_path(ENV.parse("lead {{ event.a }}")) is None
    assert output_path(ENV.parse("{{ event['a'] }}")) is None
    expr = ENV.parse("{{ event.a == event.b }}").body[0].nodes[0]  # type: ignore[attr-defined]
    assert comparison(expr) is None
    expr = ENV.parse("{{ 'x' != event.a }}").body[0].nodes[0]  # type: ignore[attr-defined]
    assert comparison(expr) == (("event", "a"), False, "x")
    assert plain_path(nodes.Const(1)) is None
