"""One error tree. Errors carry the data a boundary needs to answer or log them."""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge raises on purpose."""


class ConfigError(BridgeError):
    """A configuration mistake, naming the file, the rule and the key where known."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        rule: str | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.file = file
        self.rule = rule
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.rule:
            where.append(f"rule {self.rule!r}")
        if self.key:
            where.append(f"key {self.key!r}")
        return f"{': '.join(where)}: {self.message}" if where else self.message


class UnsetVariable(ConfigError):
    """A `${VAR}` with no value: any other error at its key only repeats it."""

    def covers(self, error: ConfigError) -> bool:
        """True when `error` is at this key (or under it) of the same file and rule."""
        if error is self or (error.file, error.rule) != (self.file, self.rule):
            return False
        if self.key is None or error.key is None:
            return self.key == error.key
        return error.key == self.key or error.key.startswith((f"{self.key}.", f"{self.key}["))


class ConfigErrors(BridgeError):
    """Several configuration mistakes found in one pass, reported together."""

    def __init__(self, errors: list[ConfigError]) -> None:
        # An unset variable leaves "" behind, which the key's own check refuses again.
        unset = [e for e in errors if isinstance(e, UnsetVariable)]
        self.errors = [e for e in errors if not any(u.covers(e) for u in unset)]
        super().__init__("\n".join(str(e) for e in self.errors))


class RequestRejected(BridgeError):
    """A webhook request answered with a 4xx; `reason` is short and safe to log."""

    status = 400

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BadRequest(RequestRejected):
    status = 400


class Unauthorized(RequestRejected):
    """The request failed verification (signature, timestamp, credentials)."""

    status = 401


class NotFound(RequestRejected):
    status = 404


class PayloadTooLarge(RequestRejected):
    status = 413


class UnsupportedMediaType(RequestRejected):
    status = 415


class StartupError(BridgeError):
    """The server cannot start (its port is taken, its store cannot be opened): the
    message names what and why, and is printed as one line."""


class StorageError(BridgeError):
    """The store could not durably write or read; webhooks are answered 503."""


class LeaseLost(BridgeError):
    """The store refused a delivery operation: the lease epoch it carried is not current.

    Not a StorageError: retrying cannot help. Another process holds the delivery lease
    now (or this one's term ended); the caller stops delivering and the new holder
    recovers whatever this term had claimed.
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        super().__init__(f"delivery lease epoch {epoch} is no longer current")
