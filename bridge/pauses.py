"""Auth pauses: Voxys refuses the token for one account, or for all of them. Pure.

A 401/403 pauses the account it came from: its transitions are left out of claims and
the token's other accounts keep flowing. Each paused account is probed on its own - one
request after `probe_initial` seconds, the interval doubling up to `probe_max` while it
is refused - and an accepted request lifts its account's pause.

When every account the token was used for within the last `window` seconds is paused
(with one account in use, at its first refusal), the pause is token-wide: the token
itself seems refused (revoked, expired). Then an accepted probe of any paused account
lifts every pause at once, since the token works again. An account never refused is
never held back: a new account costs at most one refused request before it is paused
too, and if it is accepted instead, the pause was not token-wide after all.

Times are passed in; nothing here reads a clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

PROBE_INITIAL_S: Final = 30.0
PROBE_MAX_S: Final = 300.0


@dataclass(slots=True)
class Pause:
    """One paused account."""

    account_id: int
    since: float
    http_status: int | None  # of the refusal that started or last extended it
    interval: float
    next_probe_at: float
    probing: bool = False  # a probe request is out now


@dataclass(frozen=True, slots=True)
class Refusal:
    """What one refused request changed."""

    started: bool  # this account's pause began now (log it once)
    token_wide: bool  # the token as a whole is paused
    token_wide_started: bool  # ... and that began now


@dataclass(frozen=True, slots=True)
class Recovery:
    """What one accepted request changed."""

    account: bool  # this account's pause ended
    token_wide: bool  # a token-wide pause ended


@dataclass
class AuthPauses:
    """The paused accounts of one token."""

    probe_initial: float = PROBE_INITIAL_S
    probe_max: float = PROBE_MAX_S
    window: float = PROBE_INITIAL_S  # how recently an account counts as "in use"
    paused: dict[int, Pause] = field(default_factory=dict)
    token_wide: bool = False
    _seen: dict[int, float] = field(default_factory=dict)  # account -> last answer at

    def answered(self, account_id: int, now: float) -> None:
        """Voxys answered a request for `account_id` (any answer): the account is in use."""
        self._seen[account_id] = now

    def refuse(self, account_id: int, now: float, http_status: int | None) -> Refusal:
        """Record a 401/403 for `account_id`."""
        pause = self.paused.get(account_id)
        started = pause is None
        if pause is None:
            pause = self.paused[account_id] = Pause(
                account_id, now, http_status, self.probe_initial, now + self.probe_initial
            )
        elif pause.probing:  # the probe was refused: back off
            pause.interval = min(self.probe_max, pause.interval * 2)
            pause.next_probe_at = now + pause.interval
            pause.probing = False
            pause.http_status = http_status
        # else: a request already in flight when the pause began; nothing changes.
        self._seen[account_id] = now
        in_use = {a for a, at in self._seen.items() if now - at <= self.window}
        wide = in_use <= self.paused.keys()
        wide_started = wide and not self.token_wide
        self.token_wide = wide
        return Refusal(started, wide, wide_started)

    def accepted(self, account_id: int) -> Recovery:
        """Voxys accepted the token for `account_id` (it answered other than 401/403)."""
        was_paused = self.paused.pop(account_id, None) is not None
        if not self.token_wide:
            return Recovery(account=was_paused, token_wide=False)
        self.token_wide = False
        if was_paused:  # a refused account works again: the token was restored
            self.paused.clear()
        # else: an account never refused works, so the token is not refused as a whole;
        # the paused accounts keep the pauses their own refusals earned.
        return Recovery(account=was_paused, token_wide=True)

    def inconclusive(self, account_id: int, now: float) -> None:
        """A probe got no verdict on the token (5xx, 429, timeout): probe again later."""
        pause = self.paused.get(account_id)
        if pause is not None and pause.probing:
            pause.probing = False
            pause.next_probe_at = now + pause.interval

    def nothing_to_probe(self, account_id: int) -> None:
        """Nothing due waits on the account's token any more: its pause ends. A request
        for it that is refused later pauses it anew."""
        self.paused.pop(account_id, None)
        if not self.paused:
            self.token_wide = False

    def probe_started(self, account_id: int) -> None:
        self.paused[account_id].probing = True

    def probe_ended(self, account_id: int) -> None:
        """Whatever became of a probe (also: it was never sent), it is no longer out."""
        pause = self.paused.get(account_id)
        if pause is not None:
            pause.probing = False

    def probes_due(self, now: float) -> list[int]:
        """Paused accounts whose next probe may go now."""
        return [a for a, p in self.paused.items() if not p.probing and now >= p.next_probe_at]

    def next_probe_at(self) -> float | None:
        """When the next probe is due (None when nothing waits for one)."""
        times = [p.next_probe_at for p in self.paused.values() if not p.probing]
        return min(times) if times else None

    def skipped(self) -> frozenset[int]:
        """Accounts ordinary claims leave out (every paused one)."""
        return frozenset(self.paused)
