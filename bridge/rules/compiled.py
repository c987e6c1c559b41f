"""What a compiled rule is: its values, conditions and follow-up, ready to render.

The compiler (`compiler.py`) builds these once at load; the evaluator (`evaluator.py`)
runs them on every event. Both check ids and statuses with the helpers below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Template

from bridge.models import LeadStatus
from bridge.rules.paths import MISSING, Path, lookup, rendered

MAX_RENDER = 10_000  # characters any template may render before the rule is unmapped
MAX_ID = 2**63 - 1

# Plain decimal, no sign, point, exponent, space or path characters: an id goes into the
# Voxys URL path, so nothing but digits may reach it.
_ID = re.compile(r"[1-9][0-9]{0,18}")
STATUSES = frozenset(s.value for s in LeadStatus)


class TooLong(Exception):
    """A template rendered more than its limit."""


def parse_id(text: str) -> int | None:
    """`text` as an id: a plain positive decimal up to 2**63 - 1, else None."""
    if _ID.fullmatch(text) is None:
        return None
    number = int(text)
    return number if number <= MAX_ID else None


@dataclass(frozen=True, slots=True)
class Value:
    """A rule value: a constant string or a compiled template (with its path if it is one)."""

    constant: str | None
    template: Template | None
    path: Path | None = None  # the template is exactly `{{ path }}`

    def render(self, ctx: Mapping[str, Any], limit: int, *, truncate: bool = False) -> str:
        """The value's text; TooLong past `limit` characters unless `truncate`."""
        if self.template is None:
            return self.constant or ""
        if self.path is not None and (found := lookup(ctx, self.path)) is not MISSING:
            text = rendered(found)
            if len(text) > limit and not truncate:
                raise TooLong(f"rendered more than {limit} characters")
            return text
        out: list[str] = []
        size = 0
        for chunk in self.template.generate(ctx):
            out.append(chunk)
            size += len(chunk)
            if size > limit:
                if truncate:
                    break
                raise TooLong(f"rendered more than {limit} characters")
        return "".join(out)


@dataclass(frozen=True, slots=True)
class Condition:
    """One `when` entry: an expression, or a `{{ }}` template whose text is its truth."""

    key: str
    evaluate: Callable[[Mapping[str, Any]], bool]


@dataclass(frozen=True, slots=True)
class CompiledFollowUp:
    """A rule's follow-up: `after` is seconds after the event, or a template of a time."""

    after: float | Value
    status: Value
    notes: Value | None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule ready to run against events."""

    name: str
    sources: tuple[str, ...]
    file: str
    continue_: bool
    when: tuple[Condition, ...]
    account_id: Value | None
    lead_id: Value
    status: Value
    notes: Value | None
    description: str | None = None
    follow_up: CompiledFollowUp | None = None
