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


@dataclass
class Span:
    """What happened in the shadow over a span of time (integrated, not sampled)."""

    start_s: float
    end_s: float
    downtime_s: float = 0.0
    failed_requests: float = 0.0
    requests: float = 0.0
    errors_by_source: dict[str, float] = field(default_factory=dict)

    def add(self, other: Span) -> None:
        self.end_s = max(self.end_s, other.end_s)
        self.downtime_s += other.downtime_s
        self.failed_requests += other.failed_requests
        self.requests += other.requests
        for key, value in other.errors_by_source.items():
            self.errors_by_source[key] = self.errors_by_source.get(key, 0.0) + value


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
