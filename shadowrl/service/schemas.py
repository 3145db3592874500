"""The API's request and response bodies (they make its OpenAPI schema).

Requests forbid unknown fields and bound every number, so a trigger can only pick how many
runs, which seed and when, or which search and how many episodes: never a file, a procedure
or a command.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shadowrl.service.config import MAX_EPISODES, MAX_RUNS


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RehearsalTrigger(Body):
    runs: int | None = Field(default=None, ge=1, le=MAX_RUNS)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    at: Literal["now", "peak"] | None = None


class OptimizationTrigger(Body):
    method: Literal["search", "rl", "all"] | None = None
    episodes: int | None = Field(default=None, ge=1, le=MAX_EPISODES)


class FlaggerPayload(BaseModel):
    """What Flagger posts to a webhook; every field optional, others ignored."""

    model_config = ConfigDict(extra="allow")
    name: str | None = Field(default=None, max_length=253)
    namespace: str | None = Field(default=None, max_length=253)
    phase: str | None = Field(default=None, max_length=64)
    metadata: dict[str, str] | None = None


class Stats(BaseModel):
    mean: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    max: float = 0.0


class Forecast(BaseModel):
    peak_at: str | None
    load: float


class AlertCounts(BaseModel):
    critical: int
    warning: int


class Verdict(BaseModel):
    deployment: str
    healthy: bool
    status: Literal["healthy", "unhealthy"]
    reasons: list[str]
    job: int
    rehearsed_at: str | None
    age_s: float
    backend: str
    at: Literal["now", "peak"]
    forecast: Forecast | None
    runs: int
    recovered: int
    recovered_share: float
    downtime_s: Stats
    budget_burn: Stats
    alerts: AlertCounts


class Progress(BaseModel):
    done: int
    total: int


class Job(BaseModel):
    id: int
    deployment: str
    kind: Literal["rehearse", "optimize"]
    reason: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
    params: dict[str, Any]
    progress: Progress
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    error: str | None
    result: dict[str, Any] | None
    revision: int


class ProcedureInfo(BaseModel):
    source: Literal["configured", "optimized"]
    job: int | None
    published_at: str | None


class Schedule(BaseModel):
    every_s: float | None
    next_at: str | None


class Deployment(BaseModel):
    name: str
    scenario: str
    backend: str
    synced_at: str | None
    drift: int
    verdict: Verdict | None
    procedure: ProcedureInfo
    schedules: dict[str, Schedule]


class ScenarioSummary(BaseModel):
    name: str
    services: list[str]
    incidents: list[str]
    steps: list[str]


class DeploymentDetail(Deployment):
    scenario_summary: ScenarioSummary
    drift_changes: list[dict[str, Any]]
    healthy_when: dict[str, Any]


class TimelineRun(BaseModel):
    run: int
    incident: str
    failed: float


class TimelineSeries(BaseModel):
    t: list[float]
    error_rate: list[float | None]
    latency_p99_ms: list[float | None]
    rps: list[float | None]
    step: list[str | None]
    phase: list[str | None]


class Timeline(BaseModel):
    job: int
    run: int
    incident: str
    runs: list[TimelineRun]
    series: TimelineSeries


class GateRefusal(BaseModel):
    detail: str
    verdict: Verdict | None


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
