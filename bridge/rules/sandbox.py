"""The Jinja2 sandbox every template in the bridge renders in: immutable, with `*` and
`**` bounded so that payload data cannot exhaust memory or time.

`BoundedSandbox` is the environment class (rules and generic sources both use it);
`rule_environment` configures one for rules: their globals, filters and tests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from jinja2 import ChainableUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_REPEAT = 100_000  # largest sequence `*` may build, and bits `**` may produce


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with `*` and `**` refused (OverflowError) past MAX_REPEAT."""

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


def rule_environment(lookups: Mapping[str, Mapping[str, str]]) -> BoundedSandbox:
    """The sandbox rules render in: missing fields chain to empty, `lookup(table, key)`
    over `lookups`, and the filters and tests docs/rules.md lists."""
    env = BoundedSandbox(undefined=ChainableUndefined, autoescape=False, finalize=_finalize)

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
