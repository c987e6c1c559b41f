"""Prometheus metrics: counters fed by ingest and delivery, gauges read from the store on scrape.

Labels are bounded on purpose: a rejection is labelled by its kind (from the HTTP status),
never by its free-text reason, and an unknown source is labelled `unknown`, so that a
hostile sender cannot grow the number of series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bridge import __version__
from bridge.models import Evaluation
from bridge.store.base import Stats

REJECTION_KINDS = {
    400: "malformed",
    401: "unauthorized",
    404: "unknown_source",
    413: "too_large",
    415: "unsupported_media_type",
    503: "storage_unavailable",
}


def status_class(status: int | None) -> str:
    """`2xx`, `4xx`, `5xx`… or `error` when no HTTP answer came (timeout, connection)."""
    return f"{status // 100}xx" if status else "error"


class Metrics:
    """Every metric of one bridge process, in its own registry (tests make several)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.webhooks_received = Counter(
            "bridge_webhooks_received", "Webhook requests stored", ["source"], registry=r
        )
        self.webhooks_rejected = Counter(
            "bridge_webhooks_rejected", "Webhook requests refused", ["source", "reason"], registry=r
        )
        self.events = Counter(
            "bridge_events", "Stored events by rule outcome", ["source", "outcome"], registry=r
        )
        self.transitions = Counter(
            "bridge_transitions_settled", "Transitions by final state", ["state"], registry=r
        )
        self.attempts = Counter(
            "bridge_delivery_attempts", "PATCH attempts to Voxys", ["status_class"], registry=r
        )
        self.latency = Histogram(
            "bridge_delivery_latency_seconds",
            "Duration of PATCH attempts to Voxys",
            ["status_class"],
            buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.requests = Counter(
            "bridge_voxys_requests",
            "Requests sent to Voxys by kind: patch (one lead) or bulk (several)",
            ["kind"],
            registry=r,
        )
        self.leads_per_request = Histogram(
            "bridge_voxys_leads_per_request",
            "Leads whose status one request to Voxys changes",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
            registry=r,
        )
        self.limiter_wait = Counter(
            "bridge_rate_limiter_wait_seconds",
            "Time spent waiting on the Voxys rate limit",
            registry=r,
        )
        self.paused_tokens = Gauge(
            "bridge_paused_tokens", "Voxys tokens paused for every account (refused)", registry=r
        )
        self.paused_accounts = Gauge(
            "bridge_paused_accounts", "Accounts for which Voxys refuses the token", registry=r
        )
        self.reloads = Counter(
            "bridge_config_reloads", "Configuration reloads", ["result"], registry=r
        )
        self.queue = Gauge(
            "bridge_transitions", "Transitions in the store by state", ["state"], registry=r
        )
        self.retrying = Gauge(
            "bridge_transitions_retrying", "Pending transitions with a failed attempt", registry=r
        )
        self.oldest_pending = Gauge(
            "bridge_oldest_pending_age_seconds",
            "Age of the oldest transition not yet settled (0 when none)",
            registry=r,
        )
        self.followups = Gauge(
            "bridge_followups", "Follow-ups in the store by state", ["state"], registry=r
        )
        self.followups_overdue = Gauge(
            "bridge_followups_overdue_seconds",
            "How long the earliest scheduled follow-up has been due (0 when none is)",
            registry=r,
        )
        self.deliverer = Gauge(
            "bridge_delivery_leader", "1 when this process is the active deliverer", registry=r
        )
        Gauge("bridge_build_info", "Build information", ["version"], registry=r).labels(
            version=__version__
        ).set(1)
        # The children of the per-webhook counters, by label values: `.labels()` checks
        # and joins its arguments under a lock on every call. Keys are bounded like the
        # labels themselves (configured sources, outcomes, rejection kinds).
        self._received: dict[str, Counter] = {}
        self._events: dict[tuple[str, str], Counter] = {}

    def request(self, source: str, reason: str, status: int) -> None:
        """One webhook request's result."""
        if status < 300:
            child = self._received.get(source)
            if child is None:
                child = self._received[source] = self.webhooks_received.labels(source=source)
            child.inc()
            return
        kind = REJECTION_KINDS.get(status, str(status))
        label = "unknown" if status == 404 else source
        self.webhooks_rejected.labels(source=label, reason=kind).inc()

    def evaluated(self, source: str, evaluation: Evaluation) -> None:
        key = (source, evaluation.outcome)
        child = self._events.get(key)
        if child is None:
            child = self._events[key] = self.events.labels(source=source, outcome=key[1])
        child.inc()

    def attempt(self, http_status: int | None, seconds: float, *, leads: int = 1) -> None:
        """One request sent: a PATCH, or a bulk request for `leads` leads."""
        self.requests.labels(kind="bulk" if leads > 1 else "patch").inc()
        self.leads_per_request.observe(leads)
        cls = status_class(http_status)
        self.attempts.labels(status_class=cls).inc()
        self.latency.labels(status_class=cls).observe(seconds)

    def settled(self, state: str) -> None:
        self.transitions.labels(state=state).inc()

    def update_from(self, stats: Stats, now: float) -> None:
        for state, count in stats.transitions.items():
            self.queue.labels(state=state).set(count)
        self.retrying.set(stats.retrying)
        self.oldest_pending.set(stats.oldest_pending_age_s or 0.0)
        for state, count in stats.followups.items():
            self.followups.labels(state=state).set(count)
        due = stats.next_followup_at
        self.followups_overdue.set(0.0 if due is None else max(0.0, now - due))

    def render(self) -> bytes:
        """Every metric in Prometheus's text format."""
        return generate_latest(self.registry)
