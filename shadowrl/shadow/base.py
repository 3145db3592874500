"""The shadow backend protocol: what the tester, the env and the optimizer drive.

A backend is one shadow of the deployment. The simulator implements it in simulated time with
snapshots; a real backend (containers) works in wall-clock time, may not support snapshots,
and its steps can fail or hang, so every call returns what actually happened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from shadowrl.core.spec import Scenario, Step

StepStatus = Literal["ok", "failed", "skipped"]

# Error sources the profiler and the `new_errors` alert tell apart.
ERROR_SOURCES = ("incident", "compatibility", "dropped", "overload", "write_lock", "command")
NEW_ERROR_SOURCES = ("compatibility", "dropped", "overload", "write_lock")


@dataclass(frozen=True)
class ActiveEffect:
    """One incident effect as injected: already scaled, possibly with a replayed shape."""

    metric: str  # error_rate | latency | cpu | memory
    target: str
    add: float = 0.0
    factor: float = 1.0
    ramp_s: float = 0.0
    shape: tuple[float, ...] | None = None  # multiplier per `shape_step_s`, from history
    shape_step_s: float = 5.0


@dataclass(frozen=True)
class Injection:
    """A drawn deviation: which incident, how strong, when, and under what load."""

    incident: str
    cause_kind: str
    cause_target: str | None
    cause_flag: str | None
    effects: tuple[ActiveEffect, ...]
    onset_s: float
    magnitude: float = 1.0
    load_multiplier: float = 1.0
    start_offset_s: float = 0.0  # time of day (s) at which the shadow starts, for patterns
    seed: int = 0


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


@runtime_checkable
class ShadowBackend(Protocol):
    """One shadow of a deployment. Times are seconds since the shadow launched."""

    name: str
    supports_snapshot: bool
    scenario: Scenario

    def launch(self, seed: int) -> None:
        """Start a healthy shadow of the live deployment."""

    def inject(self, injection: Injection) -> None:
        """Schedule the deviation; it starts at ``injection.onset_s``."""

    def now(self) -> float: ...

    def run_until_breach(self, max_s: float) -> Breach | None:
        """Advance until an SLO rule fires (``for``/``interval`` semantics) or ``max_s``."""

    def run_step(self, step: Step, settings: dict[str, Any]) -> StepResult:
        """Run one procedure step to completion (or failure) and report what it cost."""

    def advance(self, seconds: float) -> Span: ...

    def verify(self, hold_s: float, deadline_s: float) -> VerifyResult:
        """Advance until every rule holds for ``hold_s`` or ``deadline_s`` passes."""

    def metrics(self) -> Metrics: ...

    def snapshot(self) -> Any: ...

    def restore(self, snapshot: Any) -> None: ...
