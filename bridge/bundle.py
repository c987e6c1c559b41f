"""Everything a running bridge derives from one config file, built and validated together.

A `Bundle` is immutable: hot reload builds a new one and swaps it in whole, so a
request sees either the old sources and rules or the new ones, never a mix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from bridge.config import Config, LoadedConfig, ServerConfig, read_config
from bridge.errors import ConfigError, ConfigErrors
from bridge.files import FileReads
from bridge.rules import RuleSet, compile_rules
from bridge.sources import build_sources
from bridge.sources.base import Source
from bridge.store import open_store


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


def load_bundle(
    path: str | Path, files: FileReads | None = None, *, for_dry_run: bool = False
) -> Bundle:
    """Load config, build sources and compile rules; every mistake in one ConfigErrors.

    `files` is passed to `read_config`: what was read, and what need not be read again.
    `for_dry_run` loads what `dry-run` uses and nothing else: no secret, token or store
    setting is needed or checked, and the sources can parse but not verify (such a
    bundle is never served).
    """
    loaded, raw, errors = read_config(path, files, for_dry_run=for_dry_run)
    sources: dict[str, Source] = {}
    server = raw.get("server")
    public_url = loaded.config.server.public_url if loaded else ServerConfig().public_url
    if loaded is None and isinstance(server, Mapping) and isinstance(server.get("public_url"), str):
        public_url = server["public_url"]
    raw_sources = raw.get("sources")
    try:
        sources = build_sources(
            raw_sources if isinstance(raw_sources, Mapping) else {},
            public_url=public_url,
            file=str(path),
            parse_only=for_dry_run,
        )
    except ConfigErrors as exc:
        errors.extend(exc.errors)
    if loaded is None:
        raise ConfigErrors(errors)
    if not for_dry_run:
        try:
            open_store(loaded.config.storage.url)  # reads the URL; opens nothing
        except ConfigError as exc:
            exc.file = loaded.path
            errors.append(exc)
    try:
        rules = compile_rules(
            loaded.rules,
            lookups=loaded.lookups,
            sources=loaded.config.sources.keys(),
            default_account_id=loaded.config.voxys.account_id,
        )
    except ConfigErrors as exc:
        errors.extend(exc.errors)
    if errors:
        raise ConfigErrors(errors)
    return Bundle(loaded=loaded, sources=sources, rules=rules)
