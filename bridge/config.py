"""bridge.yaml and rule files: pydantic models, `${ENV}` interpolation, durations, includes.

Everything is validated when loaded; a mistake is a `ConfigErrors` whose messages name
the file, the rule and the key. Nothing reads `os.environ` after this module returns.

One concept: the shape of the config files. The models are declarations; the
loader that follows includes and lookups belongs with them.
"""

from __future__ import annotations

import csv
import glob
import io
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    SkipValidation,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from bridge import strength, validation
from bridge.errors import ConfigError, ConfigErrors
from bridge.files import FileReads
from bridge.interpolation import interpolate, unset_errors
from bridge.validation import is_placeholder

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
# Source settings that parsing reads (the generic source's templates); the rest verifies.
_PARSING_KEYS = ("preset", "event_id", "occurred_at")


def shown(value: Any, limit: int = 16) -> str:
    """A value quoted in an error message, unless it is long enough to be a secret pasted
    under the wrong key: errors are logged (hot reload), and logs must not carry secrets."""
    text = repr(value)
    return (
        text
        if len(text) <= limit
        else f"(a {type(value).__name__} of {len(str(value))} characters)"
    )


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string with a unit: `200ms`, `10s`, `5m`, `24h`, `30d`."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError(f"invalid duration {shown(value)} (use 10s, 5m, 200ms)")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


def http_url(value: str) -> str:
    """`value` when it is an http(s) URL with a host; ValueError otherwise."""
    if is_placeholder(value):
        raise ValueError("is a placeholder (<…>): set the real value")
    if not value.startswith(("http://", "https://")) or not value.split("://", 1)[1].strip("/"):
        raise ValueError("must be an http:// or https:// URL with a host")
    return value


def _dry_run(info: ValidationInfo) -> bool:
    """Validating for `dry-run`, which uses no token (see `read_config`)."""
    return bool(info.context and info.context.get("dry_run"))


M = TypeVar("M", bound=BaseModel)


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Model):
    host: str = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    public_url: str = "http://localhost:8080"
    max_body_bytes: PositiveInt = 1_048_576
    workers: PositiveInt = 1
    shutdown_timeout: Duration = 10.0

    @field_validator("public_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v)


class StorageConfig(Model):
    url: str = "sqlite:///./data/bridge.db"
    retention: Duration = 30 * 86400.0
    # The delivery lease's time to live: the longest delivery pause after the holder dies
    # (docs/scaling.md). At least a second: the holder renews every third of it.
    lease_ttl: Annotated[float, BeforeValidator(parse_duration), Field(ge=1.0, le=300.0)] = 6.0


class RateLimit(Model):
    requests: PositiveInt = 10
    per_seconds: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 1.0


class Backoff(Model):
    initial: Duration = 1.0
    max: Duration = 600.0


class NotFoundRetry(Model):
    attempts: PositiveInt = 3
    backoff: Duration = 300.0


class AuthProbe(Model):
    initial: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 30.0
    max: Annotated[float, BeforeValidator(parse_duration), Field(gt=0)] = 300.0


class RetryConfig(Model):
    max_attempts: PositiveInt = 15
    max_age: Duration = 86400.0
    backoff: Backoff = Backoff()
    not_found: NotFoundRetry = NotFoundRetry()
    auth_probe: AuthProbe = AuthProbe()


class BulkConfig(Model):
    """`voxys.bulk`: several leads' status changes in one request (bridge/bulk.py).

    Off by default: a bulk status change carries no notes, so it changes what Voxys
    records. `notes: keep` never sends a transition with notes in bulk; `drop` does,
    without its notes, and its ledger entry says so.
    """

    enabled: bool = False
    min_batch: Annotated[int, Field(ge=2)] = 10
    max_batch: Annotated[int, Field(ge=2, le=10_000)] = 100
    notes: Literal["keep", "drop"] = "keep"

    @model_validator(mode="after")
    def _bounds(self) -> BulkConfig:
        if self.min_batch > self.max_batch:
            raise ValueError(
                f"min_batch ({self.min_batch}) cannot be larger than max_batch ({self.max_batch})"
            )
        return self


class VoxysConfig(Model):
    base_url: str = "https://connect.voxys.ai"
    api_token: SecretStr
    account_id: PositiveInt | None = None
    rate_limit: RateLimit = RateLimit()
    timeout: Duration = 10.0
    max_in_flight: PositiveInt = 16
    retry: RetryConfig = RetryConfig()
    coalesce: bool = True
    bulk: BulkConfig = BulkConfig()

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        return http_url(v).rstrip("/")

    @field_validator("api_token")
    @classmethod
    def _usable_token(cls, v: SecretStr, info: ValidationInfo) -> SecretStr:
        if _dry_run(info):
            return v  # dry-run never calls Voxys
        # Voxys does not document its token format: only what is surely wrong is refused.
        problem = strength.guessable(v.get_secret_value())
        if problem is not None:
            raise ValueError(problem)
        return v


class AdminConfig(Model):
    token: SecretStr | None = None

    @field_validator("token", mode="before")
    @classmethod
    def _empty_is_none(cls, v: Any) -> Any:
        return None if v in ("", None) else v

    @field_validator("token")
    @classmethod
    def _strong(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        # The admin API re-queues and replays: its bearer token must not be guessable.
        if v is not None and not _dry_run(info):
            strength.check(v.get_secret_value())
        return v


class LoggingConfig(Model):
    format: Literal["auto", "json", "console"] = "auto"
    level: Literal["debug", "info", "warning", "error"] = "info"


class LookupFile(Model):
    file: str


class FollowUpConfig(Model):
    """A rule's `follow_up`: a transition scheduled for later (bridge/followups.py).

    `after` is a duration counted from the event's occurred_at (`7d`, `36h`, seconds), or
    a template rendering an ISO 8601 time or epoch seconds; `bridge/rules/` compiles it.
    """

    after: str | int | float
    status: str
    notes: str | None = None

    @field_validator("after", mode="before")
    @classmethod
    def _not_a_bool(cls, v: Any) -> Any:
        if isinstance(v, bool):  # YAML's yes/true would otherwise be 1 second
            raise ValueError("a duration is a number of seconds or a string like '7d'")
        return v


class RuleConfig(Model):
    """One rule as written in YAML; `bridge/rules/` compiles it."""

    name: str = Field(min_length=1)
    source: str | list[str]
    when: str | list[str] = []
    account_id: str | int | None = None
    lead_id: str | int
    status: str
    notes: str | None = None
    continue_: bool = Field(False, alias="continue")
    description: str | None = None
    follow_up: FollowUpConfig | None = None
    bulk: bool = True  # false: this rule's transitions always go one PATCH each


class LocatedRule(BaseModel):
    """A validated rule and the file it came from."""

    model_config = ConfigDict(frozen=True)

    rule: RuleConfig
    file: str


class Config(Model):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    voxys: VoxysConfig
    admin: AdminConfig = AdminConfig()
    logging: LoggingConfig = LoggingConfig()
    # `{file: x.csv}` reads a CSV; any other mapping is the table itself.
    lookups: dict[
        str, Annotated[LookupFile | dict[str, Any], Field(union_mode="left_to_right")]
    ] = {}
    sources: dict[str, dict[str, Any]] = {}
    rules: list[dict[str, Any]] = []


class LoadedConfig(BaseModel):
    """The validated top-level config plus everything resolved relative to its file."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    path: str
    config: Config
    rules: list[LocatedRule]
    # Built by `load_config` from checked CSVs; not validated again, because pydantic would
    # walk every row of a large table while holding the GIL (the event loop waits).
    lookups: SkipValidation[dict[str, dict[str, str]]]
    files: FileReads  # every file read, fingerprinted before reading, for hot reload


def read_yaml(path: Path) -> Any:
    """Parse one YAML file, turning every failure into a ConfigError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{problem}{where}", file=str(path)) from exc


def _pydantic_errors(
    exc: ValidationError, data: Any, *, file: str, prefix: str = "", rule: str | None = None
) -> list[ConfigError]:
    out = []
    for loc, message in validation.errors(exc, data):
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc or None)
        out.append(ConfigError(message, file=file, rule=rule, key=key))
    return out


def _collect_rules(
    entries: list[Any], *, file: str, base: Path, errors: list[ConfigError], files: FileReads
) -> list[LocatedRule]:
    rules: list[LocatedRule] = []
    for i, entry in enumerate(entries):
        where = f"rules[{i}]"
        if not isinstance(entry, Mapping):
            errors.append(ConfigError("a rule must be a mapping", file=file, key=where))
            continue
        if "include" in entry:
            if set(entry) != {"include"}:
                errors.append(ConfigError("an include takes no other keys", file=file, key=where))
                continue
            pattern = str(base / str(entry["include"]))
            matches = sorted(glob.glob(pattern))
            if not matches:
                # A pattern matching nothing is a typo or a missing directory, not "no rules".
                errors.append(
                    ConfigError(f"no file matches {pattern}", file=file, key=f"{where}.include")
                )
            for included in matches:
                rules.extend(_load_rule_file(Path(included), errors=errors, files=files))
            continue
        name = entry.get("name") if isinstance(entry.get("name"), str) else None
        try:
            rules.append(LocatedRule(rule=RuleConfig.model_validate(dict(entry)), file=file))
        except ValidationError as exc:
            errors.extend(
                _pydantic_errors(exc, entry, file=file, rule=name, prefix="" if name else where)
            )
    return rules


def _load_rule_file(
    path: Path, *, errors: list[ConfigError], files: FileReads
) -> list[LocatedRule]:
    try:
        raw = files.parse(path, read_yaml)
    except ConfigError as exc:
        errors.append(exc)
        return []
    data, unset = interpolate(raw)
    errors.extend(unset_errors(unset, raw, file=str(path)))
    if data is None:
        return []
    if not isinstance(data, Mapping) or set(data) - {"rules"}:
        errors.append(ConfigError("a rule file holds one key, `rules:`", file=str(path)))
        return []
    entries = data.get("rules") or []
    if not isinstance(entries, list):
        errors.append(ConfigError("must be a list", file=str(path), key="rules"))
        return []
    nested = [e for e in entries if isinstance(e, Mapping) and "include" in e]
    if nested:
        errors.append(ConfigError("includes cannot be nested", file=str(path), key="rules"))
        return []
    return _collect_rules(entries, file=str(path), base=path.parent, errors=errors, files=files)


def read_lookup_csv(path: Path) -> dict[str, str]:
    """A CSV with a `key,value` header (other columns ignored) as a table.

    The file is read whole before parsing: hot reload parses it in a thread, and a thread
    that gives up the GIL for every small read wins it back before the event loop can
    take it (webhook answers stalled for 0.1-0.5 s); pure computation is preempted every
    5 ms instead. A mistake is a `ConfigError` naming the file and line.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=str(path)) from exc
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, [])
        if "key" not in header or "value" not in header:
            raise ConfigError("a lookup CSV needs a header `key,value`", file=str(path))
        key, value = header.index("key"), header.index("value")
        width = max(key, value) + 1
        table: dict[str, str] = {}
        for row in reader:
            if len(row) >= width:
                table[row[key]] = row[value]
            elif row:  # a blank line is no row, as in csv.DictReader
                missing = header[width - 1]
                raise ConfigError(f"line {reader.line_num}: no {missing} column", file=str(path))
    except csv.Error as exc:
        raise ConfigError(f"line {reader.line_num}: {exc}", file=str(path)) from exc
    return table


def _load_lookups(
    lookups: Mapping[str, LookupFile | dict[str, Any]],
    *,
    file: str,
    base: Path,
    errors: list[ConfigError],
    files: FileReads,
) -> dict[str, dict[str, str]]:
    tables: dict[str, dict[str, str]] = {}
    for name, spec in lookups.items():
        if isinstance(spec, LookupFile):
            path = base / spec.file
            try:
                tables[name] = files.parse(path, read_lookup_csv)
            except OSError as exc:
                errors.append(
                    ConfigError(
                        f"cannot read {path}: {exc.strerror}", file=file, key=f"lookups.{name}.file"
                    )
                )
            except ConfigError as exc:
                exc.key = f"lookups.{name}"
                errors.append(exc)
        else:
            tables[name] = {str(k): "" if v is None else str(v) for k, v in spec.items()}
    return tables


class ConfigRead(NamedTuple):
    """What `read_config` found: the config when valid, the raw mapping, every mistake."""

    loaded: LoadedConfig | None
    raw: Mapping[str, Any]  # bridge.yaml after interpolation; {} when unreadable
    errors: list[ConfigError]


def unused_by_dry_run(key: str) -> bool:
    """Keys of bridge.yaml that `dry-run` never reads: the Voxys and admin tokens, the
    store, and every source setting but the ones that name and time an event."""
    if key in ("voxys.api_token", "admin.token") or key.startswith("storage."):
        return True
    parts = key.split(".")
    return parts[0] == "sources" and len(parts) > 2 and parts[2] not in _PARSING_KEYS


def read_config(
    path: str | Path, files: FileReads | None = None, *, for_dry_run: bool = False
) -> ConfigRead:
    """Read, interpolate and validate bridge.yaml with its rule includes and lookup files,
    returning every mistake found rather than raising at the first.

    `loaded` is None when bridge.yaml itself is invalid; its rule files are read anyway,
    so that all their mistakes are reported in the same run. `files` records what was
    read (also when loading fails); pass one made with `FileReads(reuse=...)` to skip
    parsing files that did not change since then. `for_dry_run`: a `${VAR}` under a key
    `unused_by_dry_run` may be unset (it reads as ""), and the Voxys token is not checked.
    """
    files = FileReads() if files is None else files
    try:
        return _read_config(Path(path), files, for_dry_run)
    finally:
        files.done()


def _read_config(path: Path, files: FileReads, for_dry_run: bool) -> ConfigRead:
    file = str(path)
    try:
        data = files.parse(path, read_yaml)
    except ConfigError as exc:
        return ConfigRead(None, {}, [exc])
    raw, unset = interpolate(data, optional=unused_by_dry_run if for_dry_run else lambda _: False)
    errors: list[ConfigError] = [*unset_errors(unset, data, file=file)]
    if not isinstance(raw, Mapping):
        errors.append(ConfigError("the top level must be a mapping", file=file))
        return ConfigRead(None, {}, errors)
    config: Config | None = None
    try:
        config = Config.model_validate(dict(raw), context={"dry_run": for_dry_run})
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, raw, file=file))
    entries = config.rules if config is not None else raw.get("rules")
    rules = _collect_rules(
        entries if isinstance(entries, list) else [],
        file=file,
        base=path.parent,
        errors=errors,
        files=files,
    )
    if config is None:
        return ConfigRead(None, raw, errors)
    lookups = _load_lookups(config.lookups, file=file, base=path.parent, errors=errors, files=files)
    loaded = LoadedConfig(path=file, config=config, rules=rules, lookups=lookups, files=files)
    return ConfigRead(loaded, raw, errors)


def read_section(path: str | Path, name: str, model: type[M]) -> M:
    """One section of bridge.yaml (interpolated and validated), whatever the state of the
    rest of the file: what `healthcheck` (server) and `backup` (storage) need."""
    file = str(path)
    try:
        data = read_yaml(Path(path))
    except ConfigError as exc:
        raise ConfigErrors([exc]) from None
    section = data.get(name, {}) if isinstance(data, Mapping) else {}
    raw, unset = interpolate(section)
    errors: list[ConfigError] = [
        *unset_errors([replace(u, key=f"{name}.{u.key}") for u in unset], data, file=file)
    ]
    try:
        found = model.model_validate(raw)
    except ValidationError as exc:
        errors.extend(_pydantic_errors(exc, raw, file=file, prefix=name))
    if errors:
        raise ConfigErrors(errors)
    return found


def load_config(path: str | Path, files: FileReads | None = None) -> LoadedConfig:
    """`read_config`, raising ConfigErrors listing every mistake when there is one."""
    loaded, _, errors = read_config(path, files)
    if loaded is None or errors:
        raise ConfigErrors(errors)
    return loaded
