"""pydantic's validation errors in our own words, located by the keys of the input.

pydantic words its errors for programmers ("Extra inputs are not permitted") and puts
union branch names into locations (`verify.hmac.header`). An operator reading `check`
needs the key they wrote and what to do about it: `unknown key`, `not an integer`,
`must be one of json, console, auto`. Input values are never quoted back here: a value
under the wrong key may be a secret, and these messages reach the reload log.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

_PLACEHOLDER = re.compile(r"^\s*<[^<>]*>\s*$")

# Fixed wording per pydantic error type; the ones that need the error's context follow.
_PLAIN = {
    "missing": "required",
    "extra_forbidden": "unknown key",
    "int_type": "not an integer",
    "int_parsing": "not an integer",
    "int_from_float": "not a whole number",
    "float_type": "not a number",
    "float_parsing": "not a number",
    "finite_number": "not a finite number",
    "bool_type": "not true or false",
    "bool_parsing": "not true or false",
    "string_type": "not a string",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "datetime_type": "not a date and time",
    "datetime_parsing": "not an ISO 8601 date and time, e.g. 2026-11-01T00:00:00Z",
    "datetime_from_date_parsing": "not an ISO 8601 date and time, e.g. 2026-11-01T00:00:00Z",
    "union_tag_not_found": "needs a `type`",
}

_BOUNDS = {
    "greater_than": "must be greater than {gt}",
    "greater_than_equal": "must be at least {ge}",
    "less_than": "must be less than {lt}",
    "less_than_equal": "must be at most {le}",
}


def is_placeholder(value: Any) -> bool:
    """True for a value that is a `<…>` placeholder, as `.env.example` holds them."""
    return isinstance(value, str) and _PLACEHOLDER.match(value) is not None


def message(error: ErrorDetails) -> str:
    """One pydantic error in our words."""
    kind = error["type"]
    ctx: Mapping[str, Any] = error.get("ctx") or {}
    if kind != "missing" and is_placeholder(error.get("input")):
        return "is a placeholder (<…>): set the real value"
    if kind in _PLAIN:
        return _PLAIN[kind]
    if kind in _BOUNDS:
        return _BOUNDS[kind].format(**ctx)
    if kind == "literal_error":
        return f"must be one of {_unquoted(ctx.get('expected', ''))}"
    if kind == "union_tag_invalid":
        tag = str(ctx.get("tag", ""))
        return (
            f"unknown {_unquoted(ctx.get('discriminator', 'type'))} {tag[:32]!r} "
            f"(known: {_unquoted(ctx.get('expected_tags', ''))})"
        )
    if kind in ("string_too_short", "too_short"):
        least = ctx.get("min_length", 1)
        if least == 1:
            return "cannot be empty"
        return f"needs at least {least} {'characters' if kind == 'string_too_short' else 'items'}"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "json_invalid":
        return f"not valid JSON ({ctx.get('error', 'unreadable')})"
    return str(error["msg"])


def _unquoted(text: str) -> str:
    return text.replace("'", "").replace('"', "")


def location(loc: Sequence[int | str], data: Any, *, missing: bool = False) -> str:
    """The dotted key path of `loc` in `data`, without pydantic's union branch names.

    A part of `loc` is kept when it is a key (or an index) of the input at that point,
    and so is the last part of a `missing` error (the key absent from the input).
    """
    parts: list[str] = []
    node = data
    for index, part in enumerate(loc):
        found, child = _child(node, part)
        if found:
            node = child
        elif not (missing and index == len(loc) - 1):
            continue  # a union branch (`hmac`, `LookupFile`, `dict[str,any]`), not a key
        parts.append(f"[{part}]" if isinstance(part, int) else str(part))
    return ".".join(parts).replace(".[", "[")


def _child(node: Any, part: int | str) -> tuple[bool, Any]:
    if isinstance(node, Mapping):
        return (True, node[part]) if part in node else (False, None)
    if isinstance(node, list | tuple) and isinstance(part, int) and 0 <= part < len(node):
        return True, node[part]
    return False, None


def errors(exc: ValidationError, data: Any) -> Iterator[tuple[str, str]]:
    """(key path, message) for each error, one per key: a union reports its first branch."""
    seen: set[str] = set()
    for error in exc.errors(include_url=False):
        where = location(error["loc"], data, missing=error["type"] == "missing")
        if where in seen:
            continue
        seen.add(where)
        yield where, message(error)
