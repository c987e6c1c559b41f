"""structlog set-up: JSON lines off a TTY, a console renderer on one, secrets redacted."""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterable, MutableMapping
from typing import Any, BinaryIO, TextIO

import orjson
import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


_CONTAINERS = (dict, list, tuple)


class Redactor:
    """Replaces every known secret inside logged string values with `***`.

    The last line of defence: code never logs secrets on purpose, but an exception
    message from a library might carry one (a URL with credentials, a header echo).
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets: tuple[str, ...] = ()
        self.update(secrets)

    def update(self, secrets: Iterable[str]) -> None:
        # Longest first, so that a secret containing another is masked whole.
        found = {s for s in secrets if s and len(s) >= 4}
        self.secrets = tuple(sorted(found, key=len, reverse=True))

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self.secrets:
                if secret in value:
                    value = value.replace(secret, "***")
            return value
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.scrub(v) for v in value]
        return value

    def __call__(
        self, _: Any, __: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if not self.secrets:
            return event_dict
        for key, value in event_dict.items():
            if isinstance(value, str):  # most values: checked here, without a call
                for secret in self.secrets:
                    if secret in value:
                        event_dict[key] = self.scrub(value)
                        break
            elif isinstance(value, _CONTAINERS):  # numbers and None cannot hold a secret
                event_dict[key] = self.scrub(value)
        return event_dict


REDACTOR = Redactor()


def _dumps(value: Any, **kwargs: Any) -> bytes:
    """One log line as JSON bytes: orjson, or the standard library for what orjson refuses.

    orjson refuses a lone surrogate (which a hostile payload can put into an error
    message) and integers beyond 64 bits; `json` escapes the one and writes the other.
    A log call must never fail because of what it logs.
    """
    try:
        return orjson.dumps(value, default=kwargs.get("default"))
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, **kwargs).encode()


class _UtcTimestamp:
    """`timestamp`: ISO 8601 UTC with microseconds, `2024-08-23T13:20:00.123456Z`.

    The date and time of day are formatted once per second; per line only the
    microseconds are (structlog's TimeStamper builds a datetime for every line).
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(
        self, _: Any, __: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        event_dict["timestamp"] = f"{self._prefix}.{int((now - second) * 1e6):06d}Z"
        return event_dict


class LineWriter:
    """A structlog logger writing each rendered line with one `write` to `binary`.

    When the reader of the output has gone (`serve | head -1`), the line goes to the
    text stream `out` instead, whose wrapper (`bridge.output.ReaderAware`) sees the
    broken pipe, discards output from then on and stops the command.
    """

    def __init__(self, out: TextIO, binary: BinaryIO) -> None:
        self._out = out
        self._binary = binary
        self._lock = threading.Lock()  # the SQLite writer thread logs too

    def msg(self, message: bytes) -> None:
        with self._lock:
            try:
                self._binary.write(message + b"\n")
                self._binary.flush()
            except BrokenPipeError:
                self._out.write(message.decode() + "\n")
                self._out.flush()

    log = debug = info = warn = warning = error = critical = exception = msg


def configure(
    *,
    level: str = "info",
    fmt: str = "auto",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure structlog once for the process (`REDACTOR.update` changes the secrets later).

    JSON lines are rendered to bytes by orjson and written with one `write` each,
    straight to the stream's binary buffer, so that a line is in the kernel's hands
    before the answer it describes is sent and survives the process being killed.
    Loggers are cached on first use: configure before logging.
    """
    out = stream or sys.stdout
    REDACTOR.update(secrets)
    as_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    binary: BinaryIO | None = getattr(out, "buffer", None)
    renderer: Any
    factory: Any
    if as_json and binary is not None:
        out.flush()  # whatever went through the text layer before goes first
        renderer = structlog.processors.JSONRenderer(serializer=_dumps)
        writer = LineWriter(out, binary)
        factory = lambda *_: writer  # noqa: E731
    elif as_json:  # a text-only stream (a test's StringIO)
        renderer = structlog.processors.JSONRenderer(
            serializer=lambda value, **kw: _dumps(value, **kw).decode()
        )
        factory = structlog.PrintLoggerFactory(out)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
        factory = structlog.PrintLoggerFactory(out)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _UtcTimestamp(),
            structlog.processors.format_exc_info,
            REDACTOR,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        # The module-level loggers (`log = structlog.get_logger(...)`) would otherwise
        # rebuild their bound logger on every call.
        cache_logger_on_first_use=True,
    )
