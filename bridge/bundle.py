"""Everything a running bridge derives from one config file, built and validated together.

A `Bundle` is immutable: hot reload builds a new one and swaps it in whole, so a
request sees either the old sources and rules or the new ones, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from bridge.config import Config, LoadedConfig, load_config
from bridge.errors import ConfigError, ConfigErrors
from bridge.files import FileReads
from bridge.rules import RuleSet, compile_rules
from bridge.sources import build_sources
from bridge.sources.base import Source


@dataclass(frozen=True, slots=True)
class Bundle:
    loaded: LoadedConfig
    sources: dict[str, Source]
    rules: RuleSet

    @property
    def config(self) -> Config:
        return self.loaded.config

    def secrets(self) -> list[str]:
        """Every secret value in the configuration, for log redaction."""
        found: list[str] = []
        _collect_secrets(self.config, found)
        for source in self.sources.values():
            _collect_secrets(source.settings, found)
        return found


def _collect_secrets(value: Any, found: list[str]) -> None:
    if isinstance(value, SecretStr):
        found.append(value.get_secret_value())
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _collect_secrets(getattr(value, name), found)
    elif isinstance(value, dict):
        for v in value.values():
            _collect_secrets(v, found)
    elif isinstance(value, list | tuple):
        for v in value:
            _collect_secrets(v, found)


def load_bundle(path: str | Path, files: FileReads | None = None) -> Bundle:
    """Load config, build sources and compile rules; every mistake in one ConfigErrors.

    `files` is passed to `load_config`: what was read, and what need not be read again.
    """
    try:
        loaded = load_config(path, files)
    except ConfigError as exc:
        raise ConfigErrors([exc]) from exc
    errors: list[ConfigError] = []
    sources: dict[str, Source] = {}
    try:
        sources = build_sources(
            loaded.config.sources, public_url=loaded.config.server.public_url, file=loaded.path
        )
    except ConfigErrors as exc:
        errors.extend(exc.errors)
    try:
        rules = compile_rules(loaded, loaded.config.sources.keys())
    except ConfigErrors as exc:
        errors.extend(exc.errors)
    if errors:
        raise ConfigErrors(errors)
    return Bundle(loaded=loaded, sources=sources, rules=rules)
