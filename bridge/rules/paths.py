"""Plain field paths in rules, evaluated without Jinja when the payload has the fields.

Most rule values are one field, `{{ event.data.object.metadata.voxys_lead_id }}`, and most
conditions compare one field with a constant, `event.type == 'checkout.session.completed'`.
Rendering those through Jinja builds a context per template; walking the dicts does not.
The walk follows exactly what the sandbox does for a JSON payload (`bridge.rules`:
a dict attribute is the dict's item) and gives up, returning MISSING, at the first step
that is not a key of a dict: the caller then renders with Jinja, which decides what a
missing field, a method or any other object means. Found values render as Jinja renders
them with the rules' `finalize` (None is empty, anything else `str`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from jinja2 import nodes

Path = tuple[str, ...]  # a scope name, then attribute names
Comparison = tuple[Path, bool, Any]  # path, True for == (False for !=), the constant

MISSING: Final = object()


def plain_path(node: nodes.Node) -> Path | None:
    """`name.attr.attr` as (name, attr, attr); None for anything else."""
    attrs: list[str] = []
    while isinstance(node, nodes.Getattr):
        attrs.append(node.attr)
        node = node.node
    if not isinstance(node, nodes.Name) or node.ctx != "load":
        return None
    return (node.name, *reversed(attrs))


def output_path(template: nodes.Template) -> Path | None:
    """The path of a template that is exactly `{{ path }}`, else None."""
    if len(template.body) != 1 or not isinstance(template.body[0], nodes.Output):
        return None
    parts = template.body[0].nodes
    return plain_path(parts[0]) if len(parts) == 1 else None


def comparison(node: nodes.Node) -> Comparison | None:
    """`path == 'constant'` or `path != 'constant'` (either way round), else None."""
    if not isinstance(node, nodes.Compare) or len(node.ops) != 1:
        return None
    operand = node.ops[0]
    if operand.op not in ("eq", "ne"):
        return None
    left, right = node.expr, operand.expr
    if isinstance(left, nodes.Const):
        left, right = right, left
    path = plain_path(left)
    if path is None or not isinstance(right, nodes.Const):
        return None
    return path, operand.op == "eq", right.value


def lookup(ctx: Mapping[str, Any], path: Path) -> Any:
    """The value at `path`, or MISSING as soon as a step is not a key of a dict."""
    value = ctx.get(path[0], MISSING)
    for attr in path[1:]:
        if not isinstance(value, dict) or attr not in value:
            return MISSING
        value = value[attr]
    return value


def rendered(value: Any) -> str:
    """A found value as `{{ }}` renders it (the rules' finalize: None renders empty)."""
    return "" if value is None else str(value)
