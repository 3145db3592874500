"""What a shadow reports: spans of time, step results, breaches, verification and metrics.

These are plain dataclasses shared by every backend, the tester, the analysis and the RL
environment; a backend fills them from what it simulated or measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# timed_out: stopped at its timeout; cancelled: stopped on request. Both, like failed, leave
# the shadow part-done and end the procedure.
StepStatus = Literal["ok", "failed", "skipped", "timed_out", "cancelled"]
STOPPED_STATUSES = ("failed", "timed_out", "cancelled")

# Error sources the profiler and the `new_errors` alert tell apart.
ERROR_SOURCES = ("incident", "compatibility", "dropped", "overload", "write_lock", "command")
NEW_ERROR_SOURCES = ("compatibility", "dropped", "overload", "write_lock")
# an edge error rate at or above this is a full outage (Span.outage_s counts its seconds)
FULL_OUTAGE_ERROR = 0.99


@dataclass
class Span:
    """What happened in the shadow over a span of time (integrated, not sampled)."""

    start_s: float
    end_s: float
    downtime_s: float = 0.0
    failed_requests: float = 0.0
    requests: float = 0.0
    errors_by_source: dict[str, float] = field(default_factory=dict)
    # failed requests plus served ones slower than the SLO's latency threshold: what an
    # error budget counts
    bad_requests: float = 0.0
    # seconds in which the edge error rate was >= FULL_OUTAGE_ERROR (everyone failing)
    outage_s: float = 0.0
    # the highest edge error rate seen in the span
    peak_error: float = 0.0
    # the end of the span's last stretch with an SLO rule condition violated (with downtime);
    # None: no violation, or the backend does not say (see violation_end)
    violated_until_s: float | None = None

    def add(self, other: Span) -> None:
        ends = [sp.violation_end() for sp in (self, other) if sp.downtime_s > 0]
        violated_until = max(ends) if ends else None
        self.end_s = max(self.end_s, other.end_s)
        self.downtime_s += other.downtime_s
        self.failed_requests += other.failed_requests
        self.requests += other.requests
        self.bad_requests += other.bad_requests
        self.outage_s += other.outage_s
        self.peak_error = max(self.peak_error, other.peak_error)
        self.violated_until_s = violated_until
        for key, value in other.errors_by_source.items():
            self.errors_by_source[key] = self.errors_by_source.get(key, 0.0) + value

    def violation_end(self) -> float:
        """When the span was last in violation of an SLO rule condition: its start without
        downtime, else as reported, else (a backend that does not say) its end."""
        if self.downtime_s <= 0:
            return self.start_s
        return self.violated_until_s if self.violated_until_s is not None else self.end_s

    @property
    def bad(self) -> float:
        """Bad requests as an error budget counts them: failed or slow. A backend that does
        not count slow requests reports at least the failed ones."""
        return max(self.bad_requests, self.failed_requests)


@dataclass
class StepResult:
    name: str
    action: str
    status: StepStatus
    settings: dict[str, Any]
    span: Span
    message: str = ""

    @property
    def stopped(self) -> bool:
        """The step did not complete (failed, timed out or cancelled): the procedure ends."""
        return self.status in STOPPED_STATUSES

    @property
    def start_s(self) -> float:
        return self.span.start_s

    @property
    def end_s(self) -> float:
        return self.span.end_s


@dataclass
class Breach:
    at_s: float
    rules: tuple[str, ...]  # the rules firing at the breach
    before: Span | None = None  # launch to breach: which error sources already existed


@dataclass
class VerifyResult:
    healthy: bool
    end_s: float
    span: Span


@dataclass
class ComponentMetrics:
    rps: float
    error_rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    cpu: float
    memory: float

    def get(self, metric: str) -> float:
        return float(getattr(self, metric))


@dataclass
class Metrics:
    """Per-component metrics plus the edge view, at one instant."""

    at_s: float
    edge: ComponentMetrics
    components: dict[str, ComponentMetrics]
    failing_rules: tuple[str, ...]
