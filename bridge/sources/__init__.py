"""Provider families. Each module here defines `Source` subclasses; adding one is adding a file.

`build_sources` turns the `sources:` mapping of bridge.yaml into configured `Source`
objects, validating each entry with its class's own pydantic model.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from bridge import validation
from bridge.errors import ConfigError, ConfigErrors
from bridge.sources.base import Source

GENERIC_PRESET = "generic"  # a source with `verify:` and no `preset:`


def presets() -> dict[str, type[Source]]:
    """Every Source subclass in this package, by its `preset` name."""
    for info in pkgutil.iter_modules(__path__):
        if info.name != "base":
            importlib.import_module(f"{__name__}.{info.name}")
    found: dict[str, type[Source]] = {}
    stack: list[type[Source]] = list(Source.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        name = getattr(cls, "preset", None)
        if isinstance(name, str):
            found[name] = cls
    return found


def build_sources(
    raw: Mapping[str, Any], *, public_url: str, file: str, parse_only: bool = False
) -> dict[str, Source]:
    """Validate and build every configured source; all mistakes are reported together.

    `parse_only` builds each with `Source.parse_only` (for `dry-run`): its verification
    settings are neither read nor checked.
    """
    available = presets()
    built: dict[str, Source] = {}
    errors: list[ConfigError] = []
    for key, entry in raw.items():
        where = f"sources.{key}"
        if not isinstance(entry, Mapping):
            errors.append(ConfigError("must be a mapping", file=file, key=where))
            continue
        name = entry.get("preset") or GENERIC_PRESET
        cls = available.get(str(name))
        if cls is None:
            known = ", ".join(sorted(available))
            errors.append(
                ConfigError(
                    f"unknown preset {name!r} (known: {known})", file=file, key=f"{where}.preset"
                )
            )
            continue
        try:
            if parse_only:
                built[key] = cls.parse_only(key, entry, public_url=public_url)
                continue
            settings = cls.settings_model.model_validate(dict(entry))
            built[key] = cls(key, settings, public_url=public_url)
        except ValidationError as exc:
            for loc, message in validation.errors(exc, entry):
                errors.append(
                    ConfigError(message, file=file, key=f"{where}.{loc}" if loc else where)
                )
        except ConfigError as exc:
            exc.file = exc.file or file
            exc.key = f"{where}.{exc.key}" if exc.key else where
            errors.append(exc)
    if errors:
        raise ConfigErrors(errors)
    return built
