"""`${VAR}` and `${VAR:-default}` in config files, read from the environment at load.

Every unset variable of a file is found in one pass and reported together, each at the
key that holds it (inside a rule: the rule's name and its key), so an operator setting
up a new environment fixes them all in one go rather than one per run. `$$` is a `$`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bridge.errors import UnsetVariable

_ENV = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_IN_RULE = re.compile(r"^rules\[(\d+)\](?:\.(.+))?$")


@dataclass(frozen=True, slots=True)
class Unset:
    """A `${VAR}` with neither a value nor a default, and the key that holds it."""

    name: str
    key: str  # e.g. "voxys.api_token", "rules[2].lead_id"


def _never(key: str) -> bool:
    return False


def interpolate(value: Any, *, optional: Callable[[str], bool] = _never) -> tuple[Any, list[Unset]]:
    """`value` with every variable replaced, and the unset ones.

    An unset variable is replaced by "" and listed, unless `optional(key)` says the key
    may go without (dry-run needs no secrets).
    """
    unset: list[Unset] = []
    return _walk(value, "", unset, optional), unset


def _walk(value: Any, key: str, unset: list[Unset], optional: Callable[[str], bool]) -> Any:
    if isinstance(value, str):
        return _substitute(value, key, unset, optional)
    if isinstance(value, Mapping):
        return {
            k: _walk(v, f"{key}.{k}" if key else str(k), unset, optional) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_walk(v, f"{key}[{i}]", unset, optional) for i, v in enumerate(value)]
    return value


def _substitute(text: str, key: str, unset: list[Unset], optional: Callable[[str], bool]) -> str:
    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        if not optional(key):
            unset.append(Unset(name, key))
        return ""

    return _ENV.sub(replace, text)


def unset_errors(unset: list[Unset], data: Any, *, file: str) -> list[UnsetVariable]:
    """One error per key holding unset variables; a key inside a rule names the rule."""
    by_key: dict[str, list[str]] = {}
    for item in unset:
        names = by_key.setdefault(item.key, [])
        if item.name not in names:
            names.append(item.name)
    errors = []
    for key, names in by_key.items():
        plural = len(names) > 1
        message = (
            f"environment variable{'s' if plural else ''} {', '.join(names)} "
            f"{'are' if plural else 'is'} not set"
        )
        rule, where = _rule_of(key, data)
        errors.append(UnsetVariable(message, file=file, rule=rule, key=where))
    return errors


def _rule_of(key: str, data: Any) -> tuple[str | None, str | None]:
    """(rule name, key within the rule) for a key inside a named rule; else (None, key)."""
    m = _IN_RULE.match(key)
    entries = data.get("rules") if isinstance(data, Mapping) else None
    if m is None or not isinstance(entries, list) or int(m.group(1)) >= len(entries):
        return None, key
    entry = entries[int(m.group(1))]
    name = entry.get("name") if isinstance(entry, Mapping) else None
    if not isinstance(name, str) or not name or m.group(2) in (None, "name"):
        return None, key
    return name, m.group(2)
